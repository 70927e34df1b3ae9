import pytest
import torch

# 2 shared cores: one intra-op thread keeps small ops fast and timings stable
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def head():
    from facelab.morphface.procedural import procedural_3dmm

    return procedural_3dmm()
