import sys
from pathlib import Path

import torch

# 2 shared cores: one intra-op thread keeps small ops fast and timings stable
torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))
