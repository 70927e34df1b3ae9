"""Where does the toy generator's style control fail? Train a variant of the toy preset and
measure it (the README's "Style path diagnostics" table).

    OMP_NUM_THREADS=1 uv run python packages/morphface/scripts/style_path_probe.py OUT_DIR \
        [--style-only] [--id-drop P] [--pixel-input] [--steps N]

The variants:

* ``--style-only``: the ID vector is dropped in (almost) every training step (the denoiser's
  ``unconditioned_probability`` 0.999), so the 3DMM renderings are the only condition: can the
  style path learn pose at all?
* ``--id-drop P``: the ID vector is dropped with probability P instead of the preset's 0.15.
* ``--pixel-input``: the renderings are *also* added at the denoiser's input, pixel-aligned (a
  zero-initialized 3x3 conv from the 9 map channels to the first feature map, summed with the
  image's own input conv; resized to the latent size), the way DiffusionRig-style generators
  condition on physical buffers. Dropped with the style (zero maps). In the guided sampler the
  renderings reach every branch of a step (also the null-style branch), so the style-guidance
  term acts through the tokens only; the "null style" column samples without renderings.

These variants live in this script only (they patch the package's classes in this process);
none of them is a recipe option. It trains (``--steps``, default the preset's 1,500), then
prints ``bench.condition_sensitivity`` (not for ``--pixel-input``: its null / swapped variants
would still see the image's own renderings) and ``bench.style_control`` (swapped styles), and
writes both with the CPU seconds to ``OUT_DIR/probe.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

COLUMNS = ("yaw", "pitch", "smile", "mouth_open", "brow_raise")


class _PixelInput(nn.Module):
    """The UNet's input conv plus a zero-initialized conv of the current style maps."""

    maps: torch.Tensor | None = None  # set by the patched encoder / sampler, per process

    def __init__(self, conv: nn.Conv2d, map_channels: int) -> None:
        super().__init__()
        self.conv = conv
        self.extra = nn.Conv2d(map_channels, conv.out_channels, 3, padding=1)
        nn.init.zeros_(self.extra.weight)
        nn.init.zeros_(self.extra.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        m = _PixelInput.maps
        if m is None:
            return h
        if m.shape[-1] != x.shape[-1]:
            m = F.interpolate(m, size=x.shape[-2:], mode="bilinear", antialias=True)
        m = m.repeat(x.shape[0] // m.shape[0], 1, 1, 1)  # every guidance branch
        return h + self.extra(m.to(h.dtype))


def _patch_pixel_input() -> None:
    import facelab.morphface.encoder as enc
    import facelab.morphface.sample as smp
    from facelab.core.diffusion.unet import ConditionalUNet
    from facelab.morphface.render import MAP_CHANNELS

    init = ConditionalUNet.__init__

    @functools.wraps(init)  # keeps the signature diffusers reads the config from
    def patched_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.image_proj = _PixelInput(self.image_proj, MAP_CHANNELS)

    ConditionalUNet.__init__ = patched_init
    forward = enc.StyleEncoder.forward

    def encoder_forward(self, maps, keep=None):
        b = maps.shape[0]
        if keep is None and self.training and self.style_dropout_probability > 0:
            keep = torch.rand(b, device=maps.device) >= self.style_dropout_probability
        _PixelInput.maps = maps if keep is None else maps * keep.view(b, 1, 1, 1).to(maps.dtype)
        return forward(self, maps, keep)

    enc.StyleEncoder.forward = encoder_forward
    style_tokens = smp.MorphFaceSampler.style_tokens

    def sampler_style_tokens(self, styles, batch):
        if styles is None:
            _PixelInput.maps = None
        return style_tokens(self, styles, batch)

    smp.MorphFaceSampler.style_tokens = sampler_style_tokens


def _row(part: dict[str, float]) -> str:
    return " / ".join(f"{part[f'{c}_corr']:.2f}" for c in COLUMNS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: preset's)")
    p.add_argument("--style-only", action="store_true")
    p.add_argument("--id-drop", type=float, default=None)
    p.add_argument("--pixel-input", action="store_true")
    p.add_argument("--measure-only", action="store_true", help="measure OUT_DIR's generator")
    a = p.parse_args()
    if a.style_only and a.id_drop is not None:
        p.error("--style-only and --id-drop both set the ID drop probability; give one")
    torch.set_num_threads(1)
    if a.pixel_input:
        _patch_pixel_input()
    from facelab.morphface.bench import condition_sensitivity, style_control, toy_train_config
    from facelab.morphface.train import train

    out = Path(a.out)
    cfg = toy_train_config(out, steps=a.steps, progress=False)
    drop = 0.999 if a.style_only else a.id_drop
    if drop is not None:
        cfg = replace(cfg, unet=replace(cfg.unet, unconditioned_probability=drop))
    t0 = time.process_time()
    if not a.measure_only:
        train(cfg)
    train_s = time.process_time() - t0
    generator = str(out / "generator")
    result: dict = {"args": vars(a), "train_cpu_s": train_s}
    if not a.pixel_input:
        sens = condition_sensitivity(generator)
        result["sensitivity"] = sens
        rel = {t: {k: f"{v / r['style'] - 1:+.1%}" for k, v in r.items()} for t, r in sens.items()}
        print("loss change vs own style + ID:", json.dumps(rel))
    sc = style_control(generator)
    result["style_control"] = sc
    result["measure_cpu_s"] = time.process_time() - t0 - train_s
    (out / "probe.json").write_text(json.dumps(result, indent=1))
    ident = sc["identity"]
    print("with style :", _row(sc["generated"]))
    print("null style :", _row(sc["no_style"]))
    print("own style  :", _row(sc["generated_own"]))
    print("real       :", _row(sc["real"]))
    print(
        "identification with / null style:",
        f"{ident['generated']['identification_accuracy']:.3f} /",
        f"{ident['no_style']['identification_accuracy']:.3f}",
    )


if __name__ == "__main__":
    main()
