"""Training the identity-conditioned denoiser on the core ``Trainer``.

Epsilon-prediction MSE with diffusers' ``DDPMScheduler`` noising (T = 1000, linear betas
1e-4 .. 0.02); context dropout and the unconditional probability with the learnable empty
context live in the denoiser (train mode); EMA with diffusers' ``EMAModel`` on the reference
schedule (``inv_gamma`` 1, ``power`` 0.75, max decay 0.9999, warm-up on), checkpointed with the
trainer's state so a resumed run continues exactly. ID vectors come from

* ``contexts="file"``: a safetensors file with ``embeddings`` (N, 512) unit vectors, one per image
  of the image list (the reference: ElasticFace embeddings precomputed for CASIA-WebFace);
* ``contexts="recognizer"``: a frozen recognizer (a ``save_pretrained`` directory) embedding each
  batch on the fly;
* ``contexts="identity"``: one fixed random unit vector per identity label (toy runs: ours).

A conditioning hook (``ContextTransform``) given to :func:`train_diffusion` transforms the ID
vectors before the denoiser and may add a loss term; it trains with the denoiser. Per-image
extra conditioning (``ExtraConditioner`` + a dataset yielding a per-image extra input, e.g.
:class:`SynthImages` with ``extra=``) adds context tokens next to the ID tokens, trained jointly,
EMA-averaged and saved with the denoiser (``extra_conditioner.safetensors``).

Presets: ``paper`` (the reference: UNet 96 x [1, 2, 2, 2] in the VQ-f4 latent space of 128 px
CASIA-WebFace with flips, Adam 1e-4, cosine warm restarts T_0 10k x2, batch 64 per GPU, fp16,
900k steps) and ``toy`` (pixel-space toyfaces at 32 px, a small UNet, minutes on a CPU).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from facelab.core.diffusion.hooks import apply_extra, apply_transform, input_channels, token_width
from facelab.core.errors import (
    FormatError,
    KeyMismatchError,
    RangeError,
    ShapeError,
    UnknownNameError,
)

GENERATOR_FILE = "generator.json"
GENERATOR_FORMAT = "facelab-generator"
EXTRA_CONDITIONER_FILE = "extra_conditioner.safetensors"


# --------------------------------------------------------------------------------------------
# configuration


@dataclass
class SynthDataConfig:
    """Training images and their ID vectors.

    ``source``: ``"toyfaces"``, an identity-folder root, or a text file listing image paths
    (relative to the file's folder, one per line). ``contexts``: "file" (``embeddings``: a
    safetensors file whose ``embeddings`` rows follow the image order: the list's lines, or the
    folder dataset's sorted order), "recognizer" (``recognizer``: a ``save_pretrained`` dir run
    on each batch at ``recognizer_size`` px) or "identity" (a random unit vector per label).
    """

    source: str = "toyfaces"
    image_size: int = 128
    flip: bool = True
    contexts: Literal["file", "recognizer", "identity"] = "file"
    embeddings: str = ""
    recognizer: str = ""
    recognizer_size: int = 112
    context_dim: int = 512
    context_seed: int = 0
    toy_identities: int = 1000
    toy_images_per_identity: int = 20
    toy_seed: int = 0
    toy_difficulty: str = "default"

    def __post_init__(self) -> None:
        if self.contexts not in ("file", "recognizer", "identity"):
            raise UnknownNameError(
                f"contexts: expected 'file', 'recognizer' or 'identity', got {self.contexts!r}"
            )
        if self.image_size < 8 or self.image_size % 8:
            raise RangeError(f"image_size: expected a multiple of 8, got {self.image_size}")


@dataclass
class AutoencoderConfig:
    """``kind``: "pixel" (identity), "vq-f4" (the released LDM encoder/decoder state dicts at
    ``encoder`` / ``decoder``), or "folder" (a diffusers AutoencoderKL / VQModel at ``path``)."""

    kind: Literal["pixel", "vq-f4", "folder"] = "pixel"
    encoder: str = ""
    decoder: str = ""
    path: str = ""


@dataclass
class ReferenceUNetConfig:
    """The reference model YAML's fields (defaults: UIFace's released model)."""

    input_channels: int = 3
    initial_channels: int = 96
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 2)
    is_attention: tuple[bool, ...] = (False, True, True, True)
    attention_heads: int = -1
    attention_head_channels: int = 32
    n_blocks_per_resolution: int = 2
    condition_type: str = "CA"
    context_input_channels: int = 512
    context_channels: int = 256
    is_context_conditional: bool = True
    n_context_classes: int = 0
    learn_empty_context: bool = True
    context_dropout_probability: float = 0.25
    unconditioned_probability: float = 0.2
    first_sample_unconditional: bool = True
    n_context_tokens: int | None = None
    #: pixel-aligned extra input (ours; 0 = none): channels of the maps an extra conditioner
    #: returns (``ExtraOutput.maps``), added at the input through a zero-initialized conv
    extra_input_channels: int = 0


@dataclass
class DiffusersUNetConfig:
    """``UNet2DConditionDenoiser`` fields (used when ``denoiser="diffusers"``)."""

    in_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512)
    layers_per_block: int = 2
    cross_attention_dim: int = 256
    attention_head_dim: int = 32
    norm_num_groups: int = 32
    n_tokens: int = 32
    context_input_channels: int = 512
    context_dropout_probability: float = 0.25
    unconditioned_probability: float = 0.2
    first_sample_unconditional: bool = True
    #: pixel-aligned extra input channels (see ``ReferenceUNetConfig``)
    extra_input_channels: int = 0


@dataclass
class EMAConfig:
    """diffusers ``EMAModel`` with warm-up: decay(step) = min(max_decay, 1 - (1 + step /
    inv_gamma) ** -power) (the reference's schedule)."""

    enabled: bool = True
    inv_gamma: float = 1.0
    power: float = 0.75
    max_decay: float = 0.9999
    min_decay: float = 0.0


def _paper_train() -> Any:
    from facelab.core.train import TrainConfig

    return TrainConfig(
        output_dir="runs/synth",
        max_steps=900_000,
        batch_size=64,
        optimizer="adamw",
        lr=1e-4,
        weight_decay=0.0,
        betas=(0.9, 0.999),
        scheduler="cosine_restarts",
        restart_period=10_000,
        restart_mult=2,
        mixed_precision="fp16",
        seed=0,
        num_workers=8,
        checkpoint_every=10_000,
        log_every=500,
    )


@dataclass
class SynthTrainConfig:
    """The generator's training recipe (``facelab synth train``)."""

    data: SynthDataConfig = field(default_factory=SynthDataConfig)
    denoiser: Literal["reference", "diffusers"] = "reference"
    unet: ReferenceUNetConfig = field(default_factory=ReferenceUNetConfig)
    diffusers_unet: DiffusersUNetConfig = field(default_factory=DiffusersUNetConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    ema: EMAConfig = field(default_factory=EMAConfig)
    train: Any = field(default_factory=_paper_train)
    resume: str | None = "latest"
    #: Min-SNR-gamma loss weighting (Hang et al., ICCV 2023): each sample's noise MSE weighted
    #: by min(SNR(t), gamma) / SNR(t); 0 = the plain mean MSE (the reference recipe)
    snr_gamma: float = 0.0


def snr_weights(alphas_cumprod_t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights of epsilon-prediction samples at cumulative alphas ``alphas_cumprod_t``
    (B,): ``min(SNR, gamma) / SNR`` with ``SNR = a / (1 - a)`` (1 where SNR <= gamma)."""
    if not gamma > 0:
        raise RangeError(f"snr_gamma: expected a positive value, got {gamma}")
    a = alphas_cumprod_t.double()
    snr = a / (1.0 - a)
    return (snr.clamp(max=float(gamma)) / snr).to(alphas_cumprod_t.dtype)


def synth_presets() -> dict[str, SynthTrainConfig]:
    """``paper``: the reference recipe (needs CASIA-WebFace, embeddings and the VQ-f4 weights
    as local paths); ``toy``: pixel-space toyfaces at 32 px on a CPU."""
    from facelab.core.train import TrainConfig

    paper = SynthTrainConfig(
        data=SynthDataConfig(source="", image_size=128, contexts="file"),
        autoencoder=AutoencoderConfig(kind="vq-f4"),
    )
    toy = SynthTrainConfig(
        data=SynthDataConfig(
            source="toyfaces",
            image_size=32,
            contexts="identity",
            toy_identities=TOY_IDENTITIES,
            toy_images_per_identity=40,
            toy_difficulty="easy",
        ),
        unet=ReferenceUNetConfig(**TOY_UNET),
        autoencoder=AutoencoderConfig(kind="pixel"),
        ema=EMAConfig(max_decay=0.999),
        train=TrainConfig(
            output_dir="runs/synth-toy",
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


#: the toy preset's denoiser (pixel space, 32 px): 32 x [1, 2, 2], attention at 8 px
TOY_UNET: dict[str, Any] = {
    "initial_channels": 32,
    "channel_multipliers": (1, 2, 2),
    "is_attention": (False, False, True),
    "attention_head_channels": 32,
    "n_blocks_per_resolution": 1,
    "context_channels": 64,
    "n_context_tokens": 8,
    "context_dropout_probability": 0.1,
    "unconditioned_probability": 0.1,
}
TOY_IDENTITIES = 24
TOY_STEPS = 1500


# --------------------------------------------------------------------------------------------
# data


class SynthImages(Dataset):
    """The training images (uint8 cache for toyfaces, files otherwise) with flips, plus a
    per-sample payload: a context vector (file / identity contexts) or the label (recognizer
    contexts). Items are ``(image, payload)``; with per-image extra conditioning (``extra``,
    see :class:`~facelab.core.diffusion.hooks.ExtraConditioner`) ``(image, payload, extra,
    flipped)``, ``flipped`` a 0-d bool tensor (the image was mirrored left-right).

    ``images``: ``(uint8 images (N, 3, H, W), labels (N,))`` built by the caller (e.g. a toy set
    of its own) instead of ``cfg.source``; ``extra``: a tensor or a dict of tensors with one row
    per image (image order: the list's lines, the folder dataset's sorted order, ``images``);
    :meth:`set_extra` sets it later (``relative_paths`` names the images of file sources).
    """

    def __init__(
        self,
        cfg: SynthDataConfig,
        *,
        images: tuple[torch.Tensor, torch.Tensor] | None = None,
        extra: torch.Tensor | dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.cfg = cfg
        self.u8: torch.Tensor | None = None
        self.paths: list[Path] = []
        self.relative_paths: list[str] | None = None
        if images is not None:
            u8, labels = images
            if u8.dtype != torch.uint8 or u8.dim() != 4 or labels.shape != (u8.shape[0],):
                raise ShapeError(
                    f"images: expected uint8 (N, C, H, W) images and (N,) labels, got "
                    f"{u8.dtype} {tuple(u8.shape)} and {tuple(labels.shape)}"
                )
            self.u8, self.labels = u8, labels.long().clone()
        elif cfg.source == "toyfaces":
            from facelab.core.data.toyfaces import ToyFaces

            toy = ToyFaces(
                cfg.toy_identities,
                cfg.toy_images_per_identity,
                size=cfg.image_size,
                seed=cfg.toy_seed,
                difficulty=cfg.toy_difficulty,
            )
            self.u8 = toy.materialize(torch.uint8)
            self.labels = toy.labels.clone()
        else:
            src = Path(cfg.source)
            if src.is_dir():
                from facelab.core.data.folders import IdentityFolderDataset

                ds = IdentityFolderDataset(src)
                self.paths = [p for p, _ in ds.samples]
                self.labels = ds.labels.clone()
                self.relative_paths = list(ds.relative_paths)
            elif src.is_file():
                lines = [ln.strip() for ln in src.read_text().splitlines() if ln.strip()]
                if not lines:
                    raise FormatError(f"{src}: empty image list")
                self.paths = [src.parent / ln for ln in lines]
                self.labels = torch.zeros(len(lines), dtype=torch.long)
                self.relative_paths = lines
            else:
                raise FileNotFoundError(
                    f"data.source: expected 'toyfaces', an identity-folder root or an image-list "
                    f"file, got {cfg.source!r}"
                )
        n = len(self)
        self.vectors: torch.Tensor | None = None
        if cfg.contexts == "file":
            self.vectors = load_embeddings(cfg.embeddings, n, cfg.context_dim)
        elif cfg.contexts == "identity":
            from facelab.core.diffusion.identities import random_identities

            table = random_identities(int(self.labels.max()) + 1, cfg.context_dim, cfg.context_seed)
            self.vectors = table[self.labels]
        self.extra: torch.Tensor | dict[str, torch.Tensor] | None = None
        if extra is not None:
            self.set_extra(extra)

    def set_extra(self, extra: torch.Tensor | dict[str, torch.Tensor] | None) -> None:
        """Per-image extra conditioning: a tensor or dict of tensors, one row per image."""
        n = len(self)
        parts = extra.items() if isinstance(extra, dict) else [("extra", extra)]
        if extra is not None:
            for name, value in parts:
                if not isinstance(value, torch.Tensor) or value.dim() < 1 or value.shape[0] != n:
                    got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                    raise ShapeError(
                        f"extra conditioning {name!r}: expected a tensor with one row per "
                        f"training image ({n}), got {got}"
                    )
        self.extra = extra

    def __len__(self) -> int:
        return int(self.labels.numel())

    def _image(self, i: int) -> torch.Tensor:
        if self.u8 is not None:
            return self.u8[i].float() / 127.5 - 1.0
        from facelab.core.data.folders import load_image

        img = load_image(self.paths[i])  # FormatError naming the file when unreadable
        if img.shape[-1] != self.cfg.image_size or img.shape[-2] != self.cfg.image_size:
            img = F.interpolate(
                img[None], size=(self.cfg.image_size,) * 2, mode="bilinear", antialias=True
            )[0]
        return img

    def __getitem__(self, i: int):
        i = int(i)
        img = self._image(i)
        flipped = bool(self.cfg.flip and torch.rand(()) < 0.5)
        if flipped:
            img = img.flip(-1)
        payload = self.vectors[i] if self.vectors is not None else self.labels[i]
        if self.extra is None:
            return img, payload
        if isinstance(self.extra, dict):
            extra = {k: v[i] for k, v in self.extra.items()}
        else:
            extra = self.extra[i]
        return img, payload, extra, torch.tensor(flipped)


def load_embeddings(path: str, n: int, dim: int) -> torch.Tensor:
    """``embeddings`` (n, dim) unit vectors from a safetensors file (checked)."""
    from safetensors.torch import load_file

    from facelab.core.diffusion.sampling import check_contexts

    if not path:
        raise FormatError("data.embeddings: contexts='file' needs a safetensors file of ID vectors")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data.embeddings: {p} does not exist")
    try:
        tensors = load_file(str(p))
    except Exception as exc:
        raise FormatError(f"{p}: not a readable safetensors file ({exc})") from None
    if "embeddings" not in tensors:
        raise FormatError(f"{p}: expected a tensor named 'embeddings', got {sorted(tensors)}")
    emb = tensors["embeddings"]
    if emb.dim() != 2 or emb.shape[0] != n:
        raise ShapeError(
            f"{p}: expected one {dim}-d ID vector per training image ({n}), got {tuple(emb.shape)}"
        )
    return check_contexts(emb, dim, f"{p} embeddings")


# --------------------------------------------------------------------------------------------
# building blocks


def build_denoiser(cfg: SynthTrainConfig) -> nn.Module:
    from dataclasses import asdict

    if cfg.denoiser == "reference":
        from facelab.core.diffusion.unet import ConditionalUNet

        return ConditionalUNet(**asdict(cfg.unet))
    if cfg.denoiser == "diffusers":
        from facelab.core.diffusion.denoiser import UNet2DConditionDenoiser

        return UNet2DConditionDenoiser(
            sample_size=cfg.data.image_size, **asdict(cfg.diffusers_unet)
        )
    raise UnknownNameError(f"denoiser: expected 'reference' or 'diffusers', got {cfg.denoiser!r}")


def build_autoencoder(cfg: AutoencoderConfig) -> nn.Module:
    from facelab.core.diffusion.autoencoder import (
        DiffusersAutoencoder,
        PixelAutoencoder,
        VQAutoencoder,
    )

    if cfg.kind == "pixel":
        return PixelAutoencoder()
    if cfg.kind == "vq-f4":
        if not cfg.encoder or not cfg.decoder:
            raise FormatError(
                "autoencoder: kind 'vq-f4' needs --autoencoder.encoder and .decoder paths"
            )
        return VQAutoencoder.from_ldm_f4(cfg.encoder, cfg.decoder)
    if cfg.kind == "folder":
        return DiffusersAutoencoder.from_folder(cfg.path)
    raise UnknownNameError(
        f"autoencoder.kind: expected 'pixel', 'vq-f4' or 'folder', got {cfg.kind!r}"
    )


@dataclass
class SynthTrainResult:
    denoiser: nn.Module  # EMA weights when EMA is on
    output_dir: Path
    train: Any
    wall_time: float
    extra_conditioner: nn.Module | None = None  # EMA weights when EMA is on


def train_diffusion(
    cfg: SynthTrainConfig,
    context_transform: nn.Module | None = None,
    *,
    denoiser: nn.Module | None = None,
    dataset: Dataset | None = None,
    extra_conditioner: nn.Module | None = None,
) -> SynthTrainResult:
    """Train the generator; write ``output_dir/generator`` (EMA weights, loadable with
    :func:`load_generator`) and ``metrics.json``.

    ``context_transform``: a conditioning hook (trains with the denoiser, saved next to it);
    ``denoiser``: a prebuilt denoiser instead of the one the config describes; ``dataset``:
    the training samples instead of ``cfg.data``'s images (items as :class:`SynthImages`'s:
    ``(image, payload)``, or ``(image, payload, extra, flipped)`` with an extra conditioner);
    ``extra_conditioner``: per-image extra conditioning
    (:class:`~facelab.core.diffusion.hooks.ExtraConditioner`): its tokens are appended to the ID
    tokens, it trains jointly with the denoiser and shares its EMA, checkpoints and generator
    folder (``extra_conditioner.safetensors``). Without these the base trains as before.
    """
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    from facelab.core.train import Trainer

    t0 = time.perf_counter()
    if not (math.isfinite(cfg.snr_gamma) and cfg.snr_gamma >= 0):
        raise RangeError(f"snr_gamma: expected 0 (off) or a positive value, got {cfg.snr_gamma}")
    data = dataset if dataset is not None else SynthImages(cfg.data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = denoiser if denoiser is not None else build_denoiser(cfg)
    autoencoder = build_autoencoder(cfg.autoencoder)
    noise = DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule="linear",
    )
    modules: dict[str, nn.Module] = {"denoiser": model, "autoencoder": autoencoder}
    frozen = ["autoencoder"]
    if extra_conditioner is not None:
        modules["extra_conditioner"] = extra_conditioner
    if context_transform is not None:
        modules["context_transform"] = context_transform
    if cfg.data.contexts == "recognizer":
        from facelab.core.hub import from_pretrained

        if not cfg.data.recognizer:
            raise FormatError(
                "data.recognizer: contexts='recognizer' needs a save_pretrained directory"
            )
        modules["recognizer"] = from_pretrained(cfg.data.recognizer)
        frozen.append("recognizer")
    alphas = noise.alphas_cumprod
    width = token_width(model)
    in_channels = input_channels(model)
    n_items = 2 if extra_conditioner is None else 4

    def loss_fn(batch, mods, ctx):
        if len(batch) != n_items:
            raise FormatError(
                f"training samples: expected {n_items} items per sample "
                + (
                    "(image, payload, extra, flipped) for the extra conditioner"
                    if extra_conditioner is not None
                    else "(image, payload); per-image extra inputs need an extra_conditioner"
                )
                + f", got {len(batch)}"
            )
        images, payload = batch[0], batch[1]
        with torch.no_grad():
            z = mods["autoencoder"].encode(images)
            if cfg.data.contexts == "recognizer":
                x = F.interpolate(
                    images, size=(cfg.data.recognizer_size,) * 2, mode="bilinear", antialias=True
                )
                c = F.normalize(mods["recognizer"](x).float(), dim=1)
            else:
                c = payload.float()
        b = z.shape[0]
        tokens = maps = None
        if extra_conditioner is not None:
            extra = apply_extra(
                mods["extra_conditioner"], batch[2], batch[3], b, width, in_channels
            )
            tokens, maps = extra.tokens, extra.maps
        t = torch.randint(0, cfg.num_train_timesteps, (b,), device=z.device)
        eps = torch.randn_like(z)
        a = alphas.to(z.device)[t].view(b, 1, 1, 1)
        x_t = a.sqrt() * z + (1 - a).sqrt() * eps
        hook = apply_transform(mods.get("context_transform"), c, t)
        if maps is None:
            pred = mods["denoiser"](x_t, t, hook.context, None, tokens)
        else:
            pred = mods["denoiser"](x_t, t, hook.context, None, tokens, extra_input=maps)
        if cfg.snr_gamma:
            per_sample = (pred.float() - eps.float()).pow(2).flatten(1).mean(1)
            mse = (snr_weights(a.view(b).float(), cfg.snr_gamma) * per_sample).mean()
        else:
            mse = F.mse_loss(pred.float(), eps.float())
        if hook.loss is None and not hook.logs:
            return mse
        logs = {"mse": mse.detach(), **{f"hook_{k}": v.detach() for k, v in hook.logs.items()}}
        if hook.loss is not None:
            logs["hook_loss"] = hook.loss.detach()
            return mse + hook.loss, logs
        return mse, logs

    ema: EMAModel | None = None

    def ema_params() -> list[nn.Parameter]:
        # the extra conditioner shares the denoiser's EMA (after the denoiser's parameters)
        params = list(model.parameters())
        if extra_conditioner is not None:
            params += list(extra_conditioner.parameters())
        return params

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
    trained = trainer.unwrap("denoiser")
    final = trained
    extra = trainer.unwrap("extra_conditioner") if extra_conditioner is not None else None
    if ema is not None:
        import copy

        final = copy.deepcopy(trained)
        params = list(final.parameters())
        if extra is not None:
            extra = copy.deepcopy(extra)
            params += list(extra.parameters())
        ema.copy_to(params)
    out = Path(cfg.train.output_dir)
    if trainer.accelerator.is_main_process:
        hook = trainer.unwrap("context_transform") if context_transform is not None else None
        save_generator(
            out / "generator", final, cfg, context_transform=hook, extra_conditioner=extra
        )
        summary = {
            "steps": result.step,
            "wall_time_s": round(time.perf_counter() - t0, 1),
            "losses": result.losses,
            "history": result.history,
        }
        (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=str))
    trainer.accelerator.wait_for_everyone()
    return SynthTrainResult(
        final.eval(),
        out,
        result,
        time.perf_counter() - t0,
        extra.eval() if extra is not None else None,
    )


# --------------------------------------------------------------------------------------------
# generator folders


def save_generator(
    directory: str | os.PathLike,
    denoiser: nn.Module,
    cfg: SynthTrainConfig,
    context_transform: nn.Module | None = None,
    extra_conditioner: nn.Module | None = None,
) -> Path:
    """``directory/denoiser`` (diffusers ``save_pretrained``), ``generator.json`` (class, image
    size, schedule, autoencoder recipe), ``context_transform.safetensors`` and
    ``extra_conditioner.safetensors`` if any."""
    from dataclasses import asdict

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    denoiser.save_pretrained(str(out / "denoiser"))
    if context_transform is not None:
        from safetensors.torch import save_model

        save_model(context_transform, str(out / "context_transform.safetensors"))
    if extra_conditioner is not None:
        from safetensors.torch import save_model

        save_model(extra_conditioner, str(out / EXTRA_CONDITIONER_FILE))
    doc = {
        "format": GENERATOR_FORMAT,
        "version": 1,
        "denoiser": type(denoiser).__name__,
        "image_size": cfg.data.image_size,
        "num_train_timesteps": cfg.num_train_timesteps,
        "beta_start": cfg.beta_start,
        "beta_end": cfg.beta_end,
        "autoencoder": asdict(cfg.autoencoder),
    }
    if extra_conditioner is not None:
        doc["extra_conditioner"] = type(extra_conditioner).__name__
    tmp = out / f".{GENERATOR_FILE}.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, out / GENERATOR_FILE)
    return out


def generator_document(
    directory: str | os.PathLike,
    file_name: str = GENERATOR_FILE,
    format_name: str = GENERATOR_FORMAT,
) -> tuple[Path, dict[str, Any]]:
    """(generator folder, its JSON description): ``directory`` or its ``generator/``
    subfolder holding ``file_name``, whose ``format`` must be ``format_name`` (methods that add
    a description of their own to the base's generator folder read it the same way)."""
    root = Path(directory)
    if (root / "generator" / file_name).is_file():
        root = root / "generator"
    path = root / file_name
    if not path.is_file():
        raise FileNotFoundError(f"generator: no {file_name} in {directory}")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FormatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != format_name:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise FormatError(f"{path}: expected format {format_name!r}, got {got!r}")
    return root, doc


def load_generator(directory: str | os.PathLike, **sampler_kwargs: Any):
    """An ``IdentitySampler`` for a folder written by :func:`save_generator` (offline)."""
    from facelab.core.diffusion.denoiser import UNet2DConditionDenoiser
    from facelab.core.diffusion.sampling import IdentitySampler
    from facelab.core.diffusion.unet import ConditionalUNet

    root, doc = generator_document(directory)
    path = root / GENERATOR_FILE
    classes = {
        "ConditionalUNet": ConditionalUNet,
        "UNet2DConditionDenoiser": UNet2DConditionDenoiser,
    }
    cls = classes.get(doc.get("denoiser"))
    if cls is None:
        raise UnknownNameError(
            f"{path}: unknown denoiser {doc.get('denoiser')!r}; known {sorted(classes)}"
        )
    model = cls.from_pretrained(str(root / "denoiser"), local_files_only=True).eval()
    auto = build_autoencoder(AutoencoderConfig(**doc.get("autoencoder", {})))
    kwargs = {
        "image_size": doc["image_size"],
        "num_train_timesteps": doc["num_train_timesteps"],
        "beta_start": doc["beta_start"],
        "beta_end": doc["beta_end"],
    } | sampler_kwargs
    return IdentitySampler(model, auto, **kwargs)


def load_extra_conditioner(directory: str | os.PathLike, module: nn.Module) -> nn.Module:
    """Load the ``extra_conditioner.safetensors`` of a generator folder (or its run folder)
    strictly into ``module`` (built by the caller with the trained architecture); returns it in
    eval mode. Missing / unexpected / mis-shaped keys raise a ``KeyMismatchError`` naming them."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root, _ = generator_document(directory)
    path = root / EXTRA_CONDITIONER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"generator: no {EXTRA_CONDITIONER_FILE} in {directory}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise FormatError(f"{path}: not a readable safetensors file ({exc})") from None
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        raise KeyMismatchError(
            f"{path}: does not fit {type(module).__name__}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, shapes (file vs module) {shapes[:5]}"
        )
    module.load_state_dict(state)
    return module.eval()
