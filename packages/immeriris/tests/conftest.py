import torch

# 2 shared cores: small element-wise ops are much faster on one intra-op thread
torch.set_num_threads(1)
