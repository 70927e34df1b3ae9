"""First stages: where the denoiser works (pixels or a frozen autoencoder's latents).

* ``PixelAutoencoder``: the identity (toy runs, tests);
* ``VQAutoencoder.from_ldm_f4(encoder_path, decoder_path)``: the LDM VQ-f4 first stage as the
  UIFace / IDiff-Face authors release it (separate encoder and decoder state dicts; 128x128 images
  -> 3x32x32 latents), loaded into diffusers' ``VQModel``; the LDM key names are converted to
  diffusers' (``down.{i}.block.{j}`` -> ``down_blocks.{i}.resnets.{j}``, ``nin_shortcut`` ->
  ``conv_shortcut``, 1x1-conv attention -> linear ``to_q/to_k/to_v/to_out.0``, decoder levels
  reversed) and loaded strictly;
* ``DiffusersAutoencoder.from_folder(path)``: any diffusers ``AutoencoderKL`` or ``VQModel``
  folder (``config.json`` + weights), offline.

All map images in [-1, 1] to latents and back. As in the reference, VQ latents are the encoder's
pre-quantization output, and decoding quantizes first.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from facelab.core.errors import FormatError, ShapeError, UnknownNameError

#: the reference's ``first_stage_config.yaml`` (LDM vq-f4: ch 128, ch_mult 1/2/4, 2 res blocks,
#: 3 latent channels, 8192 codes) in diffusers ``VQModel`` terms
VQ_F4_CONFIG: dict[str, object] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [128, 256, 512],
    "layers_per_block": 2,
    "latent_channels": 3,
    "num_vq_embeddings": 8192,
    "vq_embed_dim": 3,
    "norm_num_groups": 32,
    "sample_size": 256,
}


class Autoencoder(nn.Module):
    """Frozen first stage: ``encode`` images (B, 3, H, W) in [-1, 1] -> latents,
    ``decode`` latents -> images; ``latent_shape(size)`` is (C, h, w) for ``size`` x ``size``."""

    factor: int = 1
    latent_channels: int = 3

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        if image_size % self.factor:
            raise ShapeError(
                f"image_size: expected a multiple of the autoencoder factor {self.factor}, "
                f"got {image_size}"
            )
        side = image_size // self.factor
        return (self.latent_channels, side, side)

    def describe(self) -> dict[str, object]:
        return {"kind": type(self).__name__, "factor": self.factor}


class PixelAutoencoder(Autoencoder):
    """The identity: the denoiser works on pixels."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.latent_channels = channels

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents


class VQAutoencoder(Autoencoder):
    """A diffusers ``VQModel`` (encode = pre-quantization latents, decode quantizes)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        cfg = model.config
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.latent_channels = int(cfg.vq_embed_dim or cfg.latent_channels)

    @classmethod
    def from_ldm_f4(
        cls,
        encoder_path: str | os.PathLike,
        decoder_path: str | os.PathLike,
        config: Mapping[str, object] | None = None,
    ) -> VQAutoencoder:
        """The released VQ-f4 encoder and decoder state dicts (``.pt`` read with
        ``weights_only=True``, or ``.safetensors``) in a diffusers ``VQModel``."""
        from diffusers import VQModel

        model = VQModel(**dict(config or VQ_F4_CONFIG))
        enc = _read_tensors(encoder_path)
        dec = _read_tensors(decoder_path)
        state = ldm_vq_to_diffusers({**enc, **dec})
        from facelab.core.diffusion.unet import load_strict

        load_strict(model, state, f"{encoder_path} + {decoder_path}")
        return cls(model)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode(images).latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latents).sample

    def describe(self) -> dict[str, object]:
        return {"kind": "vq", "factor": self.factor, "config": dict(self.model.config)}


class DiffusersAutoencoder(Autoencoder):
    """Any diffusers ``AutoencoderKL`` (latents = posterior mode x scaling factor) or
    ``VQModel`` folder."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        cfg = model.config
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.is_kl = type(model).__name__ == "AutoencoderKL"
        self.latent_channels = int(cfg.latent_channels)
        self.scaling = float(getattr(cfg, "scaling_factor", 1.0) or 1.0) if self.is_kl else 1.0

    @classmethod
    def from_folder(cls, path: str | os.PathLike) -> DiffusersAutoencoder:
        from diffusers import AutoencoderKL, VQModel

        folder = Path(path)
        cfg_file = folder / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"autoencoder: no config.json in {folder}")
        try:
            name = json.loads(cfg_file.read_text()).get("_class_name")
        except json.JSONDecodeError as exc:
            raise FormatError(f"{cfg_file}: not valid JSON ({exc})") from None
        classes = {"AutoencoderKL": AutoencoderKL, "VQModel": VQModel}
        if name not in classes:
            raise UnknownNameError(
                f"autoencoder folder {folder}: expected an AutoencoderKL or VQModel, got {name!r}"
            )
        return cls(classes[name].from_pretrained(str(folder), local_files_only=True))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.is_kl:
            return self.model.encode(images).latent_dist.mode() * self.scaling
        return self.model.encode(images).latents

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latents / self.scaling).sample

    def describe(self) -> dict[str, object]:
        return {"kind": type(self.model).__name__, "factor": self.factor}


def _read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"autoencoder weights: {p} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(p))
        else:
            raw = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FormatError(f"{p}: cannot be read with safe loading ({type(exc).__name__})") from None
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise FormatError(f"{p}: expected a mapping of parameter names to tensors")
    return dict(raw)


_RES = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "nin_shortcut": "conv_shortcut",
}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def ldm_vq_to_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LDM ``VQModel`` key names (``encoder.*``, ``quant_conv``, ``quantize.embedding``,
    ``post_quant_conv``, ``decoder.*``) -> diffusers ``VQModel`` names; unknown keys are kept
    as they are (and then fail the strict load, named)."""
    dec_levels = 1 + max(
        (int(m.group(1)) for k in state if (m := re.match(r"decoder\.up\.(\d+)\.", k))), default=-1
    )
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new, v = _convert_key(key, dec_levels), value
        if re.search(r"attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$", new) and v.dim() == 4:
            v = v[:, :, 0, 0]  # 1x1 conv -> linear
        out[new] = v
    return out


def _convert_key(key: str, dec_levels: int) -> str:
    part, _, rest = key.partition(".")
    if part not in ("encoder", "decoder"):
        return key
    if m := re.fullmatch(r"(down|up)\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)", rest):
        kind, level, j, leaf, wb = m.groups()
        i = int(level) if kind == "down" else dec_levels - 1 - int(level)
        blocks = "down_blocks" if kind == "down" else "up_blocks"
        return f"{part}.{blocks}.{i}.resnets.{j}.{_RES.get(leaf, leaf)}.{wb}"
    if m := re.fullmatch(r"down\.(\d+)\.downsample\.conv\.(weight|bias)", rest):
        return f"{part}.down_blocks.{m.group(1)}.downsamplers.0.conv.{m.group(2)}"
    if m := re.fullmatch(r"up\.(\d+)\.upsample\.conv\.(weight|bias)", rest):
        return f"{part}.up_blocks.{dec_levels - 1 - int(m.group(1))}.upsamplers.0.conv.{m.group(2)}"
    if m := re.fullmatch(r"mid\.block_(\d)\.(\w+)\.(weight|bias)", rest):
        return f"{part}.mid_block.resnets.{int(m.group(1)) - 1}.{_RES.get(m.group(2), m.group(2))}.{m.group(3)}"
    if m := re.fullmatch(r"mid\.attn_1\.(\w+)\.(weight|bias)", rest):
        return f"{part}.mid_block.attentions.0.{_ATTN.get(m.group(1), m.group(1))}.{m.group(2)}"
    if m := re.fullmatch(r"norm_out\.(weight|bias)", rest):
        return f"{part}.conv_norm_out.{m.group(1)}"
    return key
