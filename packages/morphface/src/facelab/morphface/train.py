"""MorphFace's training recipe on the core ``Trainer``: the base denoiser + the style encoder.

Each step (epsilon-prediction DDPM, the base's schedule): the batch's 3DMM parameters are
rendered (normals, albedo, Lambertian rendering; the vectorized rasterizer, in the loss function
on the training device), flipped with their images, encoded into style tokens (null tokens with
probability ``encoder.style_dropout_probability``), and the denoiser predicts the noise from the
noisy latents, the ID vector (dropped with the denoiser's own ``unconditioned_probability`` and
element-wise context dropout) and the style tokens appended to its ID tokens. EMA (diffusers
``EMAModel``, the base's schedule) covers the denoiser and the encoder.

Why a loop of our own and not the base's ``train_diffusion``: its data path carries an image and
an ID vector per sample; MorphFace needs a third per-sample input (the style parameters) and a
trainable module outside the ID-vector hook. This recipe reuses the base's pieces
(``build_denoiser``, ``build_autoencoder``, ``load_embeddings``, ``EMAModel`` settings, the
generator folder layout) and the core trainer.

``use_style=False`` trains the ID-only base generator with the same loop, data and recipe (the
baseline of the claims).

Data: ``data.source="toyfaces"`` -> :class:`~facelab.morphface.toy.StyledToyFaces` with the exact
procedural-3DMM parameters of every image; otherwise the base's sources (identity folders or an
image list) plus ``style.params``, a per-image parameter file (rows in the image order) written
by any 3DMM fitter (format: :mod:`facelab.morphface.params`), and ``style.model`` a 3DMM file.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from facelab.core.diffusion.train import (
    TOY_UNET,
    AutoencoderConfig,
    DiffusersUNetConfig,
    EMAConfig,
    ReferenceUNetConfig,
    SynthDataConfig,
)
from facelab.core.errors import FormatError, RangeError, ShapeError
from facelab.core.train import TrainConfig
from facelab.morphface.toy import ToyStyleConfig

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
    """The style encoder (``StyleEncoder``); ``map_size``: side of the rendered style maps."""

    map_size: int = 64
    widths: tuple[int, ...] = (32, 64, 128, 256)
    style_dropout_probability: float = 0.1


@dataclass
class RendererConfig:
    """``perspective_distance`` None = DECA's weak perspective; ``supersample`` anti-aliasing."""

    perspective_distance: float | None = None
    supersample: int = 1


@dataclass
class GuidanceConfig:
    """Sampling defaults stored with the generator (see ``guidance``)."""

    id_scale: float = 1.0
    style_scale: float = 1.0
    blend: float = 0.5
    num_steps: int = 50


def _paper_train() -> TrainConfig:
    return TrainConfig(
        output_dir="runs/morphface",
        max_steps=900_000,
        batch_size=64,
        optimizer="adamw",
        lr=1e-4,
        weight_decay=0.0,
        scheduler="cosine_restarts",
        restart_period=10_000,
        restart_mult=2,
        mixed_precision="fp16",
        seed=0,
        num_workers=8,
        checkpoint_every=10_000,
        log_every=500,
    )


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


#: the toy preset's denoiser: the base toy UNet, each condition dropped on its own
TOY_MORPHFACE_UNET = TOY_UNET | {
    "first_sample_unconditional": False,
    "unconditioned_probability": 0.15,
}
TOY_STEPS = 1500


def morphface_presets() -> dict[str, MorphFaceConfig]:
    """``paper``: the base's reference recipe (VQ-f4 latents of 128 px CASIA-WebFace with flips,
    UNet 96 x [1, 2, 2, 2], Adam 1e-4, cosine warm restarts, fp16, EMA) plus the style encoder
    on 64 px renderings of a user 3DMM and per-image DECA-style parameters; ``toy``: 32 px
    styled toyfaces with the procedural 3DMM in pixel space, minutes-to-an-hour on a CPU."""
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
        encoder=EncoderConfig(map_size=32, widths=(32, 64, 64), style_dropout_probability=0.15),
        guidance=GuidanceConfig(num_steps=25),
        ema=EMAConfig(max_decay=0.999),
        train=TrainConfig(
            output_dir="runs/morphface-toy",
            max_steps=TOY_STEPS,
            batch_size=16,
            optimizer="adamw",
            lr=1e-3,
            weight_decay=0.0,
            scheduler="cosine",
            warmup=100,
            warmup_unit="step",
            min_lr=1e-5,
            seed=0,
            checkpoint_every=500,
            log_every=50,
        ),
    )
    return {"paper": paper, "toy": toy}


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


class StyledImages(Dataset):
    """(image, ID payload, style vector, flipped) per sample."""

    def __init__(self, cfg: MorphFaceConfig, model3dmm) -> None:
        from facelab.morphface.params import StyleLayout, load_params

        d = cfg.data
        self.cfg = d
        self.u8: torch.Tensor | None = None
        self.paths: list[Path] = []
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
            self.u8 = u8
            self.labels = toy.labels.clone()
            params = toy.style_params()
        else:
            from facelab.core.data.folders import IdentityFolderDataset

            src = Path(d.source)
            if src.is_dir():
                ds = IdentityFolderDataset(src)
                self.paths = [p for p, _ in ds.samples]
                self.labels = ds.labels.clone()
                rel_paths = list(ds.relative_paths)
            elif src.is_file():
                lines = [ln.strip() for ln in src.read_text().splitlines() if ln.strip()]
                if not lines:
                    raise FormatError(f"{src}: empty image list")
                self.paths = [src.parent / ln for ln in lines]
                self.labels = torch.zeros(len(lines), dtype=torch.long)
                rel_paths = lines
            else:
                raise FileNotFoundError(
                    f"data.source: expected 'toyfaces', an identity-folder root or an image-list "
                    f"file, got {d.source!r}"
                )
            if not cfg.style.params and cfg.use_style:
                raise FormatError(
                    "style.params: real data needs a per-image 3DMM parameter file (see the README)"
                )
            if cfg.use_style:
                params, _, info = load_params(cfg.style.params)
                names = info.get("images")
                if names is not None:
                    # rows named by image path (relative to the data source): reorder them
                    params = params.index(_match_rows(names, rel_paths, cfg.style.params))
                if len(params) != len(self.labels):
                    raise ShapeError(
                        f"style.params: expected one parameter row per training image "
                        f"({len(self.labels)}), got {len(params)}"
                    )
            else:
                params = None
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
        n = len(self.labels)
        self.vectors: torch.Tensor | None = None
        if d.contexts == "file":
            from facelab.core.diffusion.train import load_embeddings

            self.vectors = load_embeddings(d.embeddings, n, d.context_dim)
        elif d.contexts == "identity":
            from facelab.core.diffusion.identities import random_identities

            table = random_identities(int(self.labels.max()) + 1, d.context_dim, d.context_seed)
            self.vectors = table[self.labels]

    def __len__(self) -> int:
        return int(self.labels.numel())

    def _image(self, i: int) -> torch.Tensor:
        if self.u8 is not None:
            return self.u8[i].float() / 127.5 - 1.0
        from facelab.core.data.folders import load_image

        img = load_image(self.paths[i])
        if img.shape[-1] != self.cfg.image_size or img.shape[-2] != self.cfg.image_size:
            img = F.interpolate(
                img[None], size=(self.cfg.image_size,) * 2, mode="bilinear", antialias=True
            )[0]
        return img

    def __getitem__(self, i: int):
        i = int(i)
        img = self._image(i)
        flip = bool(self.cfg.flip and torch.rand(()) < 0.5)
        if flip:
            img = img.flip(-1)
        payload = self.vectors[i] if self.vectors is not None else self.labels[i]
        return img, payload, self.styles[i], torch.tensor(flip)


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
    """Mirror style maps left-right: flip the image and negate the normals' x component."""
    out = maps.flip(-1).clone()
    out[:, 0] = -out[:, 0]
    return out


# --------------------------------------------------------------------------------------------
# training


@dataclass
class MorphFaceTrainResult:
    denoiser: nn.Module
    encoder: nn.Module | None
    output_dir: Path
    train: Any
    wall_time: float


def build_encoder(cfg: MorphFaceConfig, context_channels: int):
    from facelab.morphface.encoder import StyleEncoder

    e = cfg.encoder
    return StyleEncoder(
        map_size=e.map_size,
        widths=tuple(e.widths),
        context_channels=context_channels,
        style_dropout_probability=e.style_dropout_probability,
    )


def _context_channels(cfg: MorphFaceConfig) -> int:
    if cfg.denoiser == "reference":
        return int(cfg.unet.context_channels)
    return int(cfg.diffusers_unet.cross_attention_dim)


def _as_synth(cfg: MorphFaceConfig):
    """The base's config view of this recipe (for ``build_denoiser``)."""
    from facelab.core.diffusion.train import SynthTrainConfig

    return SynthTrainConfig(
        data=cfg.data,
        denoiser=cfg.denoiser,
        unet=cfg.unet,
        diffusers_unet=cfg.diffusers_unet,
        autoencoder=cfg.autoencoder,
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        ema=cfg.ema,
        train=cfg.train,
        resume=cfg.resume,
    )


def train(cfg: MorphFaceConfig) -> MorphFaceTrainResult:
    """Train the generator; write ``output_dir/generator`` (EMA weights; ``load_morphface``)
    and ``metrics.json``."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    from facelab.core.diffusion.train import build_autoencoder, build_denoiser
    from facelab.core.train import Trainer
    from facelab.morphface.render import StyleRenderer

    t0 = time.perf_counter()
    model3dmm = (
        load_3dmm(cfg.style.model) if cfg.use_style or cfg.data.source == "toyfaces" else None
    )
    if model3dmm is None:
        from facelab.morphface.procedural import procedural_3dmm

        model3dmm = procedural_3dmm()
    data = StyledImages(cfg, model3dmm)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        denoiser = build_denoiser(_as_synth(cfg))
        encoder = build_encoder(cfg, _context_channels(cfg)) if cfg.use_style else None
    autoencoder = build_autoencoder(cfg.autoencoder)
    noise = DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule="linear",
    )
    modules: dict[str, nn.Module] = {"denoiser": denoiser, "autoencoder": autoencoder}
    frozen = ["autoencoder"]
    if encoder is not None:
        modules["style_encoder"] = encoder
    if cfg.data.contexts == "recognizer":
        from facelab.core.hub import from_pretrained

        if not cfg.data.recognizer:
            raise FormatError(
                "data.recognizer: contexts='recognizer' needs a save_pretrained directory"
            )
        modules["recognizer"] = from_pretrained(cfg.data.recognizer)
        frozen.append("recognizer")
    renderer = StyleRenderer(
        model3dmm,
        cfg.encoder.map_size,
        perspective_distance=cfg.renderer.perspective_distance,
        supersample=cfg.renderer.supersample,
    )
    alphas = noise.alphas_cumprod
    layout = data.layout
    moved: dict[str, Any] = {}

    def loss_fn(batch, mods, ctx):
        images, payload, style_vec, flipped = batch
        with torch.no_grad():
            z = mods["autoencoder"].encode(images)
            if cfg.data.contexts == "recognizer":
                x = F.interpolate(
                    images, size=(cfg.data.recognizer_size,) * 2, mode="bilinear", antialias=True
                )
                c = F.normalize(mods["recognizer"](x).float(), dim=1)
            else:
                c = payload.float()
            tokens = None
            if "style_encoder" in mods:
                if moved.get("device") != z.device:
                    renderer.to(z.device)
                    moved["device"] = z.device
                maps = renderer.maps(layout.split(style_vec.float()))
                maps = torch.where(flipped.view(-1, 1, 1, 1), flip_maps(maps), maps)
        if "style_encoder" in mods:
            tokens = mods["style_encoder"](maps.to(z.dtype))
        b = z.shape[0]
        t = torch.randint(0, cfg.num_train_timesteps, (b,), device=z.device)
        eps = torch.randn_like(z)
        a = alphas.to(z.device)[t].view(b, 1, 1, 1)
        x_t = a.sqrt() * z + (1 - a).sqrt() * eps
        pred = mods["denoiser"](x_t, t, c, None, tokens)
        return F.mse_loss(pred.float(), eps.float())

    ema: EMAModel | None = None

    def ema_params():
        out = list(denoiser.parameters())
        if encoder is not None:
            out += list(encoder.parameters())
        return out

    def on_step(ctx) -> None:
        if ema is not None:
            ema.step(ema_params())

    trainer = Trainer(cfg.train, modules, loss_fn, data, frozen=frozen, on_step=on_step)
    if cfg.ema.enabled:
        ema = EMAModel(
            ema_params(),
            decay=cfg.ema.max_decay,
            min_decay=cfg.ema.min_decay,
            use_ema_warmup=True,
            inv_gamma=cfg.ema.inv_gamma,
            power=cfg.ema.power,
            foreach=True,
        )
        ema.to(trainer.accelerator.device)
        trainer.accelerator.register_for_checkpointing(ema)
    result = trainer.fit(resume=cfg.resume)
    final_d = copy.deepcopy(trainer.unwrap("denoiser"))
    final_e = copy.deepcopy(trainer.unwrap("style_encoder")) if encoder is not None else None
    if ema is not None:
        params = list(final_d.parameters()) + (
            list(final_e.parameters()) if final_e is not None else []
        )
        ema.copy_to(params)
    out = Path(cfg.train.output_dir)
    if trainer.accelerator.is_main_process:
        save_morphface(out / "generator", final_d, final_e, model3dmm, cfg)
        summary = {
            "steps": result.step,
            "wall_time_s": round(time.perf_counter() - t0, 1),
            "losses": result.losses,
            "history": result.history,
        }
        (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    trainer.accelerator.wait_for_everyone()
    return MorphFaceTrainResult(
        final_d.eval(),
        final_e.eval() if final_e is not None else None,
        out,
        result,
        time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------------------------
# generator folders


def save_morphface(
    directory: str | os.PathLike,
    denoiser: nn.Module,
    encoder: nn.Module | None,
    model3dmm,
    cfg: MorphFaceConfig,
) -> Path:
    """``denoiser/`` and ``style_encoder/`` (diffusers ``save_pretrained``), ``3dmm.safetensors``
    and ``morphface.json`` (image size, schedule, autoencoder, renderer, guidance defaults)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    denoiser.save_pretrained(str(out / "denoiser"))
    if encoder is not None:
        encoder.save_pretrained(str(out / "style_encoder"))
    model3dmm.save(out / "3dmm.safetensors")
    doc = {
        "format": GENERATOR_FORMAT,
        "version": 1,
        "denoiser": type(denoiser).__name__,
        "use_style": encoder is not None,
        "image_size": cfg.data.image_size,
        "num_train_timesteps": cfg.num_train_timesteps,
        "beta_start": cfg.beta_start,
        "beta_end": cfg.beta_end,
        "autoencoder": asdict(cfg.autoencoder),
        "renderer": asdict(cfg.renderer),
        "guidance": asdict(cfg.guidance),
    }
    tmp = out / f".{GENERATOR_FILE}.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, out / GENERATOR_FILE)
    return out


def load_morphface(directory: str | os.PathLike, **kwargs: Any):
    """A :class:`~facelab.morphface.sample.MorphFaceSampler` for a folder written by
    :func:`save_morphface` (offline). ``kwargs`` override sampler settings."""
    from facelab.core.diffusion.denoiser import UNet2DConditionDenoiser
    from facelab.core.diffusion.train import build_autoencoder
    from facelab.core.diffusion.unet import ConditionalUNet
    from facelab.core.errors import UnknownNameError
    from facelab.morphface.encoder import StyleEncoder
    from facelab.morphface.morphable import MorphableModel
    from facelab.morphface.render import StyleRenderer
    from facelab.morphface.sample import MorphFaceSampler

    root = Path(directory)
    if (root / "generator" / GENERATOR_FILE).is_file():
        root = root / "generator"
    path = root / GENERATOR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"generator: no {GENERATOR_FILE} in {directory}")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: not valid JSON ({exc})") from None
    if doc.get("format") != GENERATOR_FORMAT:
        raise FormatError(
            f"{path}: expected format {GENERATOR_FORMAT!r}, got {doc.get('format')!r}"
        )
    classes = {
        "ConditionalUNet": ConditionalUNet,
        "UNet2DConditionDenoiser": UNet2DConditionDenoiser,
    }
    cls = classes.get(doc.get("denoiser"))
    if cls is None:
        raise UnknownNameError(f"{path}: unknown denoiser {doc.get('denoiser')!r}")
    denoiser = cls.from_pretrained(str(root / "denoiser"), local_files_only=True).eval()
    encoder = None
    if doc.get("use_style", True):
        encoder = StyleEncoder.from_pretrained(str(root / "style_encoder"), local_files_only=True)
        encoder = encoder.eval()
    model3dmm = MorphableModel.load(root / "3dmm.safetensors")
    auto = build_autoencoder(AutoencoderConfig(**doc.get("autoencoder", {})))
    rcfg = doc.get("renderer", {})
    renderer = None
    if encoder is not None:
        renderer = StyleRenderer(
            model3dmm,
            encoder.map_size,
            perspective_distance=rcfg.get("perspective_distance"),
            supersample=int(rcfg.get("supersample", 1)),
        )
    g = doc.get("guidance", {})
    settings = {
        "image_size": doc["image_size"],
        "num_steps": int(g.get("num_steps", 50)),
        "id_scale": float(g.get("id_scale", 1.0)),
        "style_scale": float(g.get("style_scale", 1.0)),
        "blend": float(g.get("blend", 0.0)),
        "num_train_timesteps": doc["num_train_timesteps"],
        "beta_start": doc["beta_start"],
        "beta_end": doc["beta_end"],
    } | kwargs
    return MorphFaceSampler(denoiser, encoder, renderer, auto, model3dmm=model3dmm, **settings)


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
    "StyleDataConfig",
    "StyledImages",
    "flip_maps",
    "load_3dmm",
    "load_morphface",
    "morphface_presets",
    "save_morphface",
    "train",
]
