import pytest
import torch

# 2 shared cores: more intra-op threads only spin against the other processes
torch.set_num_threads(1)


def tiny_config(**overrides):
    from facelab.glotok.model import GloTokConfig

    base = dict(
        image_size=16,
        base_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        z_channels=8,
        code_dim=4,
        semantic_codes=16,
        visual_codes=32,
        residual_width=16,
        residual_heads=2,
        residual_mlp_ratio=2.0,
    )
    return GloTokConfig(**(base | overrides))


@pytest.fixture
def make_tokenizer():
    from facelab.glotok.model import GloTok

    def make(seed: int = 0, **overrides):
        torch.manual_seed(seed)
        return GloTok(tiny_config(**overrides))

    return make


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    return torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
