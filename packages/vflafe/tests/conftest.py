import torch

# 2 shared cores: one intra-op thread keeps these tiny models fast and their timings stable
torch.set_num_threads(1)
