import torch

# 2 shared cores: one intra-op thread keeps small ops fast and timings stable
torch.set_num_threads(1)
