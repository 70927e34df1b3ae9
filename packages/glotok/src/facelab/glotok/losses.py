"""Training losses besides L_Q / L_res / L_hist: PatchGAN hinge discriminator and the offline
perceptual loss.

* ``PatchDiscriminator``: pix2pix's N-layer PatchGAN as taming/LlamaGen use it (4x4 convs,
  LeakyReLU 0.2, BatchNorm, ``ndf=64``, 3 layers), hinge loss, weight 0.5 from a start step.
* ``PerceptualLoss``: LPIPS-style distance (channel-normalized features, squared difference,
  spatial mean, summed over layers) under a *local* network, never a download:

  - ``"vgg16"``: torchvision's VGG-16 built without weights and loaded from a local state-dict
    file (e.g. torchvision's ``vgg16-397923af.pth``), tapped after relu1_2, relu2_2, relu3_3,
    relu4_3, relu5_3 as LPIPS does; with ``lpips_heads`` (the ``lpips`` package's
    ``weights/v0.1/vgg.pth``, loaded with ``weights_only``) the per-channel linear weights
    make it LPIPS proper, otherwise all channels weigh 1;
  - ``"recognizer"``: the stage maps of a facelab backbone saved with ``save_pretrained``
    (e.g. the toy ArcFace recognizer) — ours, for toy runs, labelled as such;
  - ``"none"``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from facelab.core.errors import FormatError, UnknownNameError

# ---------------------------------------------------------------------------------------------
# discriminator


class PatchDiscriminator(nn.Module):
    """PatchGAN: ``(B, C, H, W)`` -> patch logits ``(B, 1, h, w)``."""

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers):
            prev, mult = mult, min(2**n, 8)
            seq += [
                nn.Conv2d(channels * prev, channels * mult, 4, 2, 1, bias=False),
                nn.BatchNorm2d(channels * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**layers, 8)
        seq += [
            nn.Conv2d(channels * prev, channels * mult, 4, 1, 1, bias=False),
            nn.BatchNorm2d(channels * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(channels * mult, 1, 4, 1, 1),
        ]
        self.net = nn.Sequential(*seq)
        for m in self.modules():  # taming's weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``(mean relu(1 - D(x)) + mean relu(1 + D(G(z)))) / 2``."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """``-mean D(G(z))``."""
    return -fake_logits.mean()


# ---------------------------------------------------------------------------------------------
# perceptual loss

PERCEPTUAL_KINDS = ("none", "vgg16", "recognizer")
_VGG_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in vgg16.features
# ImageNet statistics as LPIPS's ScalingLayer, for inputs in [-1, 1]
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


def _unit_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (x.square().sum(dim=1, keepdim=True).sqrt() + eps)


class PerceptualLoss(nn.Module):
    """Mean over the batch of ``sum_l mean_hw ||w_l * (f_l(x)/|f_l(x)| - f_l(y)/|f_l(y)|)||^2``.

    ``features(x) -> list of (B, C_l, H_l, W_l)``; ``weights``: optional per-layer channel
    weights ``(C_l,)`` (LPIPS's linear heads). The network is frozen."""

    def __init__(
        self,
        network: nn.Module,
        features: Callable[[nn.Module, torch.Tensor], Sequence[torch.Tensor]],
        weights: Sequence[torch.Tensor] | None = None,
        name: str = "",
    ) -> None:
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self._features = features
        self.name = name
        if weights is not None:
            for i, w in enumerate(weights):
                self.register_buffer(f"head{i}", w.detach().float().view(1, -1, 1, 1))
        self.num_heads = 0 if weights is None else len(weights)

    def train(self, mode: bool = True) -> PerceptualLoss:  # the network stays in eval mode
        super().train(mode)
        self.network.eval()
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = self._features(self.network, x)
        with torch.no_grad():
            fy = self._features(self.network, y)
        total = x.new_zeros(())
        for i, (a, b) in enumerate(zip(fx, fy)):
            diff = (_unit_channels(a) - _unit_channels(b)).square()
            if self.num_heads:
                diff = diff * getattr(self, f"head{i}")
            total = total + diff.sum(dim=1).mean()
        return total


def _vgg_features(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    shift = x.new_tensor(_LPIPS_SHIFT).view(1, 3, 1, 1)
    scale = x.new_tensor(_LPIPS_SCALE).view(1, 3, 1, 1)
    h = (x - shift) / scale
    out = []
    for i, layer in enumerate(net):
        h = layer(h)
        if i in _VGG_TAPS:
            out.append(h)
            if len(out) == len(_VGG_TAPS):
                break
    return out


def _recognizer_features(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return list(net.forward_features(x))


def vgg16_perceptual(weights: str | Path, lpips_heads: str | Path | None = None) -> PerceptualLoss:
    """LPIPS-style loss under torchvision's VGG-16 loaded from a local file (see module doc)."""
    from torchvision.models import vgg16

    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"perceptual: VGG-16 weights file {path} not found")
    net = vgg16(weights=None)
    state = _load_state(path)
    feats = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    try:
        net.features.load_state_dict(feats, strict=True)
    except RuntimeError as exc:
        raise FormatError(f"{path}: not a torchvision VGG-16 state dict ({exc})") from None
    heads = None
    if lpips_heads is not None:
        hs = _load_state(Path(lpips_heads))
        keys = [f"lin{i}.model.1.weight" for i in range(5)]
        if not all(k in hs for k in keys):
            raise FormatError(
                f"{lpips_heads}: expected LPIPS linear heads {keys}, got {sorted(hs)[:8]}"
            )
        heads = [hs[k].flatten() for k in keys]
    return PerceptualLoss(
        net.features, _vgg_features, heads, name="vgg16-lpips" if heads else "vgg16"
    )


def recognizer_perceptual(model_dir: str | Path) -> PerceptualLoss:
    """Feature loss on the stage maps of a facelab backbone saved with ``save_pretrained``."""
    from facelab.core.hub import from_pretrained

    net = from_pretrained(model_dir)
    if not hasattr(net, "forward_features"):
        raise FormatError(
            f"{model_dir}: expected a facelab backbone with stage maps, got {type(net).__name__}"
        )
    return PerceptualLoss(net, _recognizer_features, name="recognizer")


def build_perceptual(
    kind: str, path: str | None = None, lpips_heads: str | None = None
) -> PerceptualLoss | None:
    if kind not in PERCEPTUAL_KINDS:
        raise UnknownNameError(
            f"perceptual: expected one of {list(PERCEPTUAL_KINDS)}, got {kind!r}"
        )
    if kind == "none":
        return None
    if path is None:
        raise FileNotFoundError(
            f"perceptual={kind!r} needs a local weights path (--loss.perceptual-path); "
            "nothing is downloaded. Use --loss.perceptual none to train without it."
        )
    return vgg16_perceptual(path, lpips_heads) if kind == "vgg16" else recognizer_perceptual(path)


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FormatError(
            f"{path}: not a readable state dict ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(state, dict):
        raise FormatError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state
