import pytest
import torch

# 2 shared cores: torch's intra-op threads spin against the other processes and make small ops
# many times slower; one thread keeps the tests fast and their timings stable
torch.set_num_threads(1)


@pytest.fixture
def faces():
    """A few toyfaces crops (32 px, RGB in [-1, 1]) of 4 identities."""
    from facelab.core.data.toyfaces import ToyFaces

    return ToyFaces(4, 2, size=32, seed=3).render(slice(None))


@pytest.fixture
def tiny_generator():
    from facelab.minusface import MinusFaceGenerator

    torch.manual_seed(0)
    return MinusFaceGenerator("freq", 32, (4, 8, 16), input_scale=1 / 64).eval()
