"""MorphFace's training recipe on the base's training loop: the base denoiser + the style encoder.

Each step (epsilon-prediction DDPM, the base's schedule): the batch's 3DMM parameters are
rendered (normals, albedo, Lambertian rendering; the vectorized rasterizer, in the loss function
on the training device), flipped with their images, encoded into style tokens (null tokens with
probability ``encoder.style_dropout_probability``), and the denoiser predicts the noise from the
noisy latents, the ID vector (dropped with the denoiser's own ``unconditioned_probability`` and
element-wise context dropout) and the style tokens appended to its ID tokens. EMA (diffusers
``EMAModel``, the base's schedule) covers the denoiser and the encoder.

The loop is the base's ``train_diffusion`` with its per-image extra-conditioning hook: the
dataset (:class:`StyledImages`, the base's ``SynthImages``) yields each image's style vector and
flip flag, and :class:`StyleConditioner` (an ``ExtraConditioner``: render, mirror, encode) turns
them into the style tokens; the base trains it jointly with the denoiser, EMA-averages and
checkpoints it, and saves it as ``generator/extra_conditioner.safetensors``.

``use_style=False`` trains the ID-only base generator with the same loop, data and recipe (the
baseline of the claims).

Data: ``data.source="toyfaces"`` -> :class:`~facelab.morphface.toy.StyledToyFaces` with the exact
procedural-3DMM parameters of every image; otherwise the base's sources (identity folders or an
image list) plus ``style.params``, a per-image parameter file (rows in the image order) written
by any 3DMM fitter (format: :mod:`facelab.morphface.params`), and ``style.model`` a 3DMM file.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from facelab.core.diffusion.hooks import ExtraConditioner, ExtraOutput
from facelab.core.diffusion.train import (
    TOY_UNET,
    AutoencoderConfig,
    DiffusersUNetConfig,
    EMAConfig,
    ReferenceUNetConfig,
    SynthDataConfig,
    SynthImages,
)
from facelab.core.errors import FormatError, RangeError, ShapeError
from facelab.core.train import TrainConfig
from facelab.morphface.toy import EXPRESSIVE_STYLE, ToyStyleConfig

GENERATOR_FILE = "morphface.json"
GENERATOR_FORMAT = "facelab-morphface-generator"


@dataclass
class StyleDataConfig:
    """Where the style parameters come from. ``model``: "procedural" (the built-in head) or a
    3DMM file (``MorphableModel.load``); ``params``: the per-image parameter file (real data;
    ignored for toyfaces); ``toy``: the per-identity style distribution of the toy data."""

    model: str = "procedural"
    params: str = ""
    toy: ToyStyleConfig = field(default_factory=ToyStyleConfig)


@dataclass
class EncoderConfig:
    """The style encoder (``StyleEncoder``); ``map_size``: side of the rendered style maps;
    ``pixel_input`` (ours, not the paper's): also add the renderings pixel-aligned at the
    denoiser's input (the base denoisers' ``extra_input_channels``, a zero-initialized conv;
    resized to the latent size; zero maps where the style is dropped)."""

    map_size: int = 64
    widths: tuple[int, ...] = (32, 64, 128, 256)
    style_dropout_probability: float = 0.1
    #: also add the renderings pixel-aligned at the denoiser's input (ours; sets the
    #: denoiser's extra_input_channels)
    pixel_input: bool = False


@dataclass
class RendererConfig:
    """``perspective_distance`` None = DECA's weak perspective; ``supersample`` anti-aliasing;
    ``expression_offsets`` (ours, not the paper's): 0 = off, else the gain of three more map
    channels with the displacement the expression adds to the surface (``StyleRenderer``; the
    renderings alone barely show a within-subject expression change at 32 px)."""

    perspective_distance: float | None = None
    supersample: int = 1
    expression_offsets: float = 0.0


@dataclass
class GuidanceConfig:
    """Sampling defaults stored with the generator (see ``guidance``)."""

    id_scale: float = 1.0
    style_scale: float = 1.0
    blend: float = 0.5
    num_steps: int = 50


def _base_train(preset: str, output_dir: str) -> TrainConfig:
    """The base's training settings of ``preset`` (MorphFace trains on the same schedule)."""
    from facelab.core.diffusion.train import synth_presets

    return replace(synth_presets()[preset].train, output_dir=output_dir)


def _paper_train() -> TrainConfig:
    return _base_train("paper", "runs/morphface")


def _morphface_unet(**overrides: Any) -> ReferenceUNetConfig:
    # MorphFace drops each condition on its own: no "sample 0 always unconditional" (ours)
    base = {"first_sample_unconditional": False} | overrides
    return ReferenceUNetConfig(**base)


@dataclass
class MorphFaceConfig:
    """The recipe (``facelab morphface train``)."""

    data: SynthDataConfig = field(default_factory=SynthDataConfig)
    style: StyleDataConfig = field(default_factory=StyleDataConfig)
    use_style: bool = True
    denoiser: Literal["reference", "diffusers"] = "reference"
    unet: ReferenceUNetConfig = field(default_factory=_morphface_unet)
    diffusers_unet: DiffusersUNetConfig = field(default_factory=DiffusersUNetConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    renderer: RendererConfig = field(default_factory=RendererConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    ema: EMAConfig = field(default_factory=EMAConfig)
    train: TrainConfig = field(default_factory=_paper_train)
    resume: str | None = "latest"
    #: Min-SNR-gamma loss weighting (the base's ``snr_gamma``; 0 = plain MSE)
    snr_gamma: float = 0.0


#: the toy preset's denoiser: the base toy UNet, each condition dropped on its own; the ID
#: vector in half of the steps (with 0.15 the toy denoiser learned identity and ignored the
#: renderings; README "Style path diagnostics")
TOY_MORPHFACE_UNET = TOY_UNET | {
    "first_sample_unconditional": False,
    "unconditioned_probability": 0.5,
}
#: training steps of the toy preset: four times the base toy's 1,500 (style control needs them)
TOY_MORPHFACE_STEPS = 6000


def morphface_presets() -> dict[str, MorphFaceConfig]:
    """``paper``: the base's reference recipe (VQ-f4 latents of 128 px CASIA-WebFace with flips,
    UNet 96 x [1, 2, 2, 2], Adam 1e-4, cosine warm restarts, fp16, EMA) plus the style encoder
    on 64 px renderings of a user 3DMM and per-image DECA-style parameters; ``toy``: 32 px
    styled toyfaces with the procedural 3DMM in pixel space, minutes-to-an-hour on a CPU;
    ``toy-expression``: ``toy`` on styled toyfaces whose expression varies mostly within a
    subject, mouth opening and brow raise about three times wider (``toy.EXPRESSIVE_STYLE``)."""
    paper = MorphFaceConfig(
        data=SynthDataConfig(source="", image_size=128, contexts="file"),
        style=StyleDataConfig(model="", params=""),
        autoencoder=AutoencoderConfig(kind="vq-f4"),
    )
    toy = MorphFaceConfig(
        data=SynthDataConfig(
            source="toyfaces",
            image_size=32,
            contexts="identity",
            toy_identities=24,
            toy_images_per_identity=40,
            toy_difficulty="easy",
        ),
        unet=ReferenceUNetConfig(**TOY_MORPHFACE_UNET),
        encoder=EncoderConfig(
            map_size=32, widths=(32, 64, 64), style_dropout_probability=0.15, pixel_input=True
        ),
        guidance=GuidanceConfig(num_steps=25),
        ema=EMAConfig(max_decay=0.999),
        train=replace(_base_train("toy", "runs/morphface-toy"), max_steps=TOY_MORPHFACE_STEPS),
    )
    # the toy preset on styled toyfaces with a wider, mostly within-subject expression
    # (toy.EXPRESSIVE_STYLE): the data the expression-control claim is shown on
    toy_expression = replace(toy, style=replace(toy.style, toy=EXPRESSIVE_STYLE))
    return {"paper": paper, "toy": toy, "toy-expression": toy_expression}


# --------------------------------------------------------------------------------------------
# data


def load_3dmm(spec: str):
    """``"procedural"`` -> the built-in head; otherwise a 3DMM file path."""
    from facelab.morphface.morphable import MorphableModel
    from facelab.morphface.procedural import procedural_3dmm

    if spec in ("", "procedural"):
        if spec == "":
            raise FormatError("style.model: give a 3DMM file (or 'procedural')")
        return procedural_3dmm()
    return MorphableModel.load(spec)


class StyledImages(SynthImages):
    """The base's training images with per-image style vectors as extra conditioning: items
    ``(image, ID payload, style vector, flipped)`` (``(image, ID payload)`` when
    ``use_style=False``); ``styles`` (N, D) and ``layout`` as attributes."""

    def __init__(self, cfg: MorphFaceConfig, model3dmm) -> None:
        from facelab.morphface.params import StyleLayout, load_params

        d = cfg.data
        params = None
        if d.source == "toyfaces":
            from facelab.morphface.toy import StyledToyFaces

            toy = StyledToyFaces(
                d.toy_identities,
                d.toy_images_per_identity,
                size=max(d.image_size, 32),
                seed=d.toy_seed,
                difficulty=d.toy_difficulty,
                style=cfg.style.toy,
            )
            u8 = toy.materialize(torch.uint8)
            if u8.shape[-1] != d.image_size:
                u8 = _resize_u8(u8, d.image_size)
            super().__init__(d, images=(u8, toy.labels))
            params = toy.style_params()
        else:
            super().__init__(d)
            if not cfg.style.params and cfg.use_style:
                raise FormatError(
                    "style.params: real data needs a per-image 3DMM parameter file (see the README)"
                )
            if cfg.use_style:
                params, _, info = load_params(cfg.style.params)
                names = info.get("images")
                if names is not None:
                    # rows named by image path (relative to the data source): reorder them
                    rel = self.relative_paths or []
                    params = params.index(_match_rows(names, rel, cfg.style.params))
                if len(params) != len(self.labels):
                    raise ShapeError(
                        f"style.params: expected one parameter row per training image "
                        f"({len(self.labels)}), got {len(params)}"
                    )
        self.layout = StyleLayout(
            model3dmm.num_shape, model3dmm.num_expression, model3dmm.num_albedo
        )
        if params is not None:
            if params.layout != self.layout:
                raise ShapeError(
                    f"style parameters have layout {params.layout.sizes}, the 3DMM needs "
                    f"{self.layout.sizes}"
                )
            self.styles = params.to_vector()
        else:
            self.styles = torch.zeros(len(self.labels), self.layout.dim)
        if cfg.use_style:
            self.set_extra(self.styles)


def _match_rows(names: list[str], rel_paths: list[str], source: str) -> torch.Tensor:
    """Row of the parameter file for each training image (by relative path)."""
    index = {n.replace("\\", "/").removeprefix("./"): i for i, n in enumerate(names)}
    rows, missing = [], []
    for rp in rel_paths:
        i = index.get(rp.replace("\\", "/").removeprefix("./"))
        if i is None:
            missing.append(rp)
        else:
            rows.append(i)
    if missing:
        raise FormatError(
            f"style.params {source}: no parameter row for {len(missing)} training image(s), "
            f"e.g. {missing[:3]} (its 'images' list names the rows by relative path)"
        )
    return torch.tensor(rows, dtype=torch.long)


def _resize_u8(u8: torch.Tensor, size: int) -> torch.Tensor:
    x = F.interpolate(u8.float(), size=(size, size), mode="bilinear", antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


def flip_maps(maps: torch.Tensor) -> torch.Tensor:
    """Mirror style maps left-right: flip the image and negate the x components of the normals
    and (12-channel maps) of the expression offsets."""
    from facelab.morphface.render import MAP_CHANNELS

    out = maps.flip(-1).clone()
    out[:, 0] = -out[:, 0]
    if out.shape[1] > MAP_CHANNELS:
        out[:, MAP_CHANNELS] = -out[:, MAP_CHANNELS]
    return out


class StyleConditioner(ExtraConditioner):
    """The base's per-image extra-conditioning hook for MorphFace: a batch of style vectors
    -> renderings (no gradient; mirrored where the image was flipped) -> style tokens of the
    ``encoder`` (its only parameters; null tokens with its style-dropout probability in
    training). ``pixel_input``: also return the renderings as pixel-aligned maps
    (``ExtraOutput.maps``; zeros where the style is dropped, the same draw as the tokens').
    The renderer is not a submodule (its 3DMM is saved on its own); it follows the inputs'
    device."""

    def __init__(self, encoder: nn.Module, renderer, layout, *, pixel_input: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.pixel_input = bool(pixel_input)
        self._render = (renderer, layout)
        self._device: torch.device | None = None

    def forward(self, extra: torch.Tensor, flipped: torch.Tensor):
        renderer, layout = self._render
        with torch.no_grad():
            if self._device != extra.device:
                renderer.to(extra.device)
                self._device = extra.device
            maps = renderer.maps(layout.split(extra.float()))
            maps = torch.where(flipped.view(-1, 1, 1, 1), flip_maps(maps), maps)
        if not self.pixel_input:
            return self.encoder(maps)
        b, p = maps.shape[0], self.encoder.style_dropout_probability
        keep = torch.ones(b, dtype=torch.bool, device=maps.device)
        if self.training and p > 0:
            keep = torch.rand(b, device=maps.device) >= p
        tokens = self.encoder(maps, keep=keep)
        return ExtraOutput(tokens, maps * keep.view(b, 1, 1, 1).to(maps.dtype))


# --------------------------------------------------------------------------------------------
# training


@dataclass
class MorphFaceTrainResult:
    denoiser: nn.Module
    encoder: nn.Module | None
    output_dir: Path
    train: Any
    wall_time: float


def _map_channels(cfg: MorphFaceConfig) -> int:
    from facelab.morphface.render import map_channels

    return map_channels(cfg.renderer.expression_offsets)


def build_encoder(cfg: MorphFaceConfig, context_channels: int):
    from facelab.morphface.encoder import StyleEncoder

    e = cfg.encoder
    return StyleEncoder(
        in_channels=_map_channels(cfg),
        map_size=e.map_size,
        widths=tuple(e.widths),
        context_channels=context_channels,
        style_dropout_probability=e.style_dropout_probability,
    )


def _context_channels(cfg: MorphFaceConfig) -> int:
    if cfg.denoiser == "reference":
        return int(cfg.unet.context_channels)
    return int(cfg.diffusers_unet.cross_attention_dim)


def _pixel_input(cfg: MorphFaceConfig) -> bool:
    return bool(cfg.use_style and cfg.encoder.pixel_input)


def _as_synth(cfg: MorphFaceConfig):
    """The base's config view of this recipe (for ``build_denoiser``); the denoiser's
    ``extra_input_channels`` follow ``encoder.pixel_input`` (the renderings' channels, else 0)."""
    from facelab.core.diffusion.train import SynthTrainConfig

    channels = _map_channels(cfg) if _pixel_input(cfg) else 0
    for name, value in (
        ("unet", cfg.unet.extra_input_channels),
        ("diffusers_unet", cfg.diffusers_unet.extra_input_channels),
    ):
        if value not in (0, channels):
            raise FormatError(
                f"{name}.extra_input_channels: MorphFace sets it from encoder.pixel_input "
                f"({channels} here); leave it at 0, got {value}"
            )
    return SynthTrainConfig(
        data=cfg.data,
        denoiser=cfg.denoiser,
        unet=replace(cfg.unet, extra_input_channels=channels),
        diffusers_unet=replace(cfg.diffusers_unet, extra_input_channels=channels),
        autoencoder=cfg.autoencoder,
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        ema=cfg.ema,
        train=cfg.train,
        resume=cfg.resume,
        snr_gamma=cfg.snr_gamma,
    )


def train(cfg: MorphFaceConfig) -> MorphFaceTrainResult:
    """Train the generator with the base's loop (``train_diffusion`` + the style conditioner);
    write ``output_dir/generator`` (EMA weights; ``load_morphface``) and ``metrics.json``."""
    from facelab.core.diffusion.train import build_denoiser, train_diffusion
    from facelab.morphface.render import StyleRenderer

    t0 = time.perf_counter()
    model3dmm = (
        load_3dmm(cfg.style.model) if cfg.use_style or cfg.data.source == "toyfaces" else None
    )
    if model3dmm is None:
        from facelab.morphface.procedural import procedural_3dmm

        model3dmm = procedural_3dmm()
    data = StyledImages(cfg, model3dmm)
    synth = _as_synth(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        denoiser = build_denoiser(synth)
        encoder = build_encoder(cfg, _context_channels(cfg)) if cfg.use_style else None
    conditioner = None
    if encoder is not None:
        renderer = StyleRenderer(
            model3dmm,
            cfg.encoder.map_size,
            perspective_distance=cfg.renderer.perspective_distance,
            supersample=cfg.renderer.supersample,
            expression_offsets=cfg.renderer.expression_offsets,
        )
        conditioner = StyleConditioner(
            encoder, renderer, data.layout, pixel_input=_pixel_input(cfg)
        )
    res = train_diffusion(synth, denoiser=denoiser, dataset=data, extra_conditioner=conditioner)
    final_e = res.extra_conditioner.encoder.eval() if res.extra_conditioner is not None else None
    if _is_main_process():
        _write_morphface_files(res.output_dir / "generator", model3dmm, cfg, final_e)
    return MorphFaceTrainResult(
        res.denoiser, final_e, res.output_dir, res.train, time.perf_counter() - t0
    )


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


# --------------------------------------------------------------------------------------------
# generator folders


def save_morphface(
    directory: str | os.PathLike,
    denoiser: nn.Module,
    encoder: nn.Module | None,
    model3dmm,
    cfg: MorphFaceConfig,
) -> Path:
    """The base's generator folder (``denoiser/``, ``generator.json``, the style encoder in
    ``extra_conditioner.safetensors``) plus ``3dmm.safetensors`` and ``morphface.json`` (image
    size, schedule, autoencoder, encoder, renderer, guidance defaults). ``train`` writes the
    same through the base's loop."""
    from facelab.core.diffusion.train import save_generator

    conditioner = None
    if encoder is not None:
        conditioner = StyleConditioner(encoder, None, None)
    out = save_generator(directory, denoiser, _as_synth(cfg), extra_conditioner=conditioner)
    _write_morphface_files(out, model3dmm, cfg, encoder)
    return out


def _write_morphface_files(out: Path, model3dmm, cfg: MorphFaceConfig, encoder) -> None:
    out = Path(out)
    model3dmm.save(out / "3dmm.safetensors")
    doc = {
        "format": GENERATOR_FORMAT,
        "version": 2,
        "use_style": encoder is not None,
        "encoder": dict(encoder.config) if encoder is not None else None,
        "pixel_input": encoder is not None and _pixel_input(cfg),
        "renderer": asdict(cfg.renderer),
        "guidance": asdict(cfg.guidance),
    }
    if cfg.data.source == "toyfaces":
        doc["toy_style"] = asdict(cfg.style.toy)  # what style_control measures against
    tmp = out / f".{GENERATOR_FILE}.tmp"
    tmp.write_text(json.dumps(doc, indent=2, default=list))
    os.replace(tmp, out / GENERATOR_FILE)


def load_morphface(directory: str | os.PathLike, **kwargs: Any):
    """A :class:`~facelab.morphface.sample.MorphFaceSampler` for a folder written by
    :func:`save_morphface` (offline). ``kwargs`` override sampler settings."""
    from facelab.core.diffusion.train import (
        generator_document,
        load_extra_conditioner,
        load_generator,
    )
    from facelab.morphface.encoder import StyleEncoder
    from facelab.morphface.morphable import MorphableModel
    from facelab.morphface.render import StyleRenderer
    from facelab.morphface.sample import MorphFaceSampler

    root, doc = generator_document(directory, GENERATOR_FILE, GENERATOR_FORMAT)
    path = root / GENERATOR_FILE
    if doc.get("version") != 2:
        raise FormatError(
            f"{path}: expected version 2 (the base's generator folder + morphface.json), got "
            f"{doc.get('version')!r}; retrain with this version"
        )
    base = load_generator(root)  # the denoiser and first stage (the base's generator.json)
    _, gen = generator_document(root)
    denoiser, auto = base.denoiser, base.autoencoder
    encoder = None
    if doc.get("use_style", True):
        encoder = StyleEncoder(**_encoder_kwargs(doc.get("encoder"), path))
        load_extra_conditioner(root, StyleConditioner(encoder, None, None))
        encoder = encoder.eval()
    model3dmm = MorphableModel.load(root / "3dmm.safetensors")
    rcfg = doc.get("renderer", {})
    renderer = None
    if encoder is not None:
        renderer = StyleRenderer(
            model3dmm,
            encoder.map_size,
            perspective_distance=rcfg.get("perspective_distance"),
            supersample=int(rcfg.get("supersample", 1)),
            expression_offsets=float(rcfg.get("expression_offsets", 0.0)),
        )
        if renderer.channels != encoder.in_channels:
            raise FormatError(
                f"{path}: the style encoder takes {encoder.in_channels} map channels, the "
                f"renderer settings give {renderer.channels} (renderer.expression_offsets)"
            )
    g = doc.get("guidance", {})
    settings = {
        "image_size": base.image_size,
        "num_steps": int(g.get("num_steps", 50)),
        "id_scale": float(g.get("id_scale", 1.0)),
        "style_scale": float(g.get("style_scale", 1.0)),
        "blend": float(g.get("blend", 0.0)),
        **{k: gen[k] for k in ("num_train_timesteps", "beta_start", "beta_end")},
    } | kwargs
    return MorphFaceSampler(denoiser, encoder, renderer, auto, model3dmm=model3dmm, **settings)


def _encoder_kwargs(config: Any, path: Path) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise FormatError(f"{path}: expected the style encoder's settings under 'encoder'")
    keys = ("in_channels", "map_size", "widths", "context_channels", "style_dropout_probability")
    missing = [k for k in keys if k not in config]
    if missing:
        raise FormatError(f"{path}: the 'encoder' settings lack {missing}")
    kwargs = {k: config[k] for k in keys}
    kwargs["widths"] = tuple(kwargs["widths"])
    return kwargs


def check_steps(n: int) -> int:
    if n < 1:
        raise RangeError(f"steps: expected a positive int, got {n}")
    return n


__all__ = [
    "EncoderConfig",
    "GuidanceConfig",
    "MorphFaceConfig",
    "MorphFaceTrainResult",
    "RendererConfig",
    "StyleConditioner",
    "StyleDataConfig",
    "StyledImages",
    "flip_maps",
    "load_3dmm",
    "load_morphface",
    "morphface_presets",
    "save_morphface",
    "train",
]
