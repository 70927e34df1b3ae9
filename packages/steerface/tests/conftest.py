import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # 2 shared cores: one intra-op thread keeps the small ops fast and the timings stable
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
