"""The inversion attack: learn to map what an adversary observes back to the face image.

Every privacy method in facelab is judged the same way: an adversary who sees what crosses the
trust boundary (frequency channels sent to a server, a protected image, a protected template)
and who has paired training data trains a decoder back to RGB; we measure how much of the face
and of the identity comes back. ``InversionAttack`` is that adversary. Its decoder adapts to the
observation:

* maps ``(B, C, h, w)`` (images, any number of frequency channels, any resolution): a per-channel
  standardizer; for integer upscales such as the compact DCT's 14 -> 112 a learned linear 1x1
  conv + pixel shuffle (it can represent the block inverse DCT exactly) and a conv stem at full
  resolution, otherwise a conv stem at the input resolution and a bilinear resize; then a U-Net
  of configurable width and depth;
* vectors ``(B, D)`` (embeddings, flattened protected templates): a per-feature standardizer, an
  MLP to a ``seed_size x seed_size`` map, transposed-conv x2 stages up to about the target size,
  a final resize to the exact size.

Both end in a 3-channel conv and ``tanh``, so reconstructions lie in [-1, 1]. The loss is L1
plus an optional ``ssim_weight * (1 - SSIM)``; there is no perceptual (pretrained) loss, so
nothing needs downloaded weights. The training loop is deliberately small and self-contained.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from facelab.core.errors import (
    FacelabTypeError,
    FormatError,
    NonFiniteError,
    ShapeError,
    describe,
    expect_finite,
    expect_nonempty,
    expect_tensor,
)
from facelab.core.privacy.grids import save_grid
from facelab.core.privacy.metrics import (
    AttackResult,
    Match,
    _ssim_unchecked,
    check_images,
    embed,
    evaluate_reconstructions,
    pair_scores,
    threshold_at_far,
    to_unit,
)
from facelab.core.progress import progress_bar

_FORMAT = "facelab.privacy.InversionAttack"
_FORMAT_VERSION = "1"
_IMAGE_CHANNELS = 3
_STD_FLOOR = 1e-6  # constant observation channels are centred, not blown up
_STATS_CHUNK_ELEMENTS = 2**24  # observation statistics: ~128 MiB of float64 per chunk


def _stats_chunk(sample_numel: int) -> int:
    return max(1, _STATS_CHUNK_ELEMENTS // max(sample_numel, 1))


Norm = Literal["batch", "group", "none"]


@dataclass(frozen=True)
class AttackConfig:
    """Decoder architecture and loss; the training budget is given to ``fit``.

    width: channels of the full-resolution decoder level (doubled per level below it);
    depth: U-Net levels below full resolution (maps only; needs H, W >= 2**depth);
    max_width_mult: cap on the doubling, in units of ``width``;
    mlp_hidden, seed_size: the vector decoder's MLP width and its first map's side;
    norm: normalization after each conv ("batch", "group" or "none");
    ssim_weight: weight of the ``1 - SSIM`` term added to the L1 loss.
    """

    width: int = 32
    depth: int = 3
    max_width_mult: int = 8
    mlp_hidden: int = 512
    seed_size: int = 7
    norm: Norm = "batch"
    ssim_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("width", "max_width_mult", "mlp_hidden", "seed_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"AttackConfig.{name}: expected a positive integer, got {v!r}")
        if not isinstance(self.depth, int) or isinstance(self.depth, bool) or self.depth < 0:
            raise ValueError(f"AttackConfig.depth: expected an integer >= 0, got {self.depth!r}")
        if self.norm not in ("batch", "group", "none"):
            raise ValueError(
                f"AttackConfig.norm: expected 'batch', 'group' or 'none', got {self.norm!r}"
            )
        if not (isinstance(self.ssim_weight, int | float) and 0.0 <= self.ssim_weight < math.inf):
            raise ValueError(
                f"AttackConfig.ssim_weight: expected a finite number >= 0, got {self.ssim_weight!r}"
            )


# ------------------------------------------------------------------------------------------
# decoder
# ------------------------------------------------------------------------------------------


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, 8), channels)
    return nn.Identity()


def _conv(cin: int, cout: int, norm: Norm) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"), _norm(norm, cout), nn.SiLU()]


class ConvBlock(nn.Sequential):
    """Two 3x3 conv -> norm -> SiLU layers."""

    def __init__(self, cin: int, cout: int, norm: Norm) -> None:
        super().__init__(*_conv(cin, cout, norm), *_conv(cout, cout, norm))


class Standardize(nn.Module):
    """``(x - mean) / std`` per channel (maps) or per feature (vectors).

    The statistics come from the adversary's training observations; frequency coefficients
    span several orders of magnitude (the DC term is ~100x the high frequencies), so without
    this the decoder would see only the DC channel.
    """

    def __init__(self, features: int, spatial: bool) -> None:
        super().__init__()
        self.spatial = spatial
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1) if self.spatial else (1, -1)
        return (x - self.mean.view(shape)) / self.std.view(shape)


class Resize(nn.Module):
    """Bilinear resize of feature maps to a fixed size (identity when already there)."""

    def __init__(self, src: tuple[int, int], dst: tuple[int, int]) -> None:
        super().__init__()
        self.dst = dst
        if src == dst:
            self.mode = "identity"
        else:
            self.mode = "downsample" if dst[0] * dst[1] < src[0] * src[1] else "upsample"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "identity":
            return x
        down = self.mode == "downsample"
        return F.interpolate(x, size=self.dst, mode="bilinear", align_corners=False, antialias=down)


class DepthToSpace(nn.Sequential):
    """A learned *linear* 1x1 conv to ``channels * r * r`` then pixel shuffle by ``r``.

    Each output pixel is a linear function of its block's input channels, so this can represent
    the block inverse DCT exactly (compact DCT: 192 x 14 x 14 -> 3 x 112 x 112).
    """

    def __init__(self, in_channels: int, channels: int, r: int) -> None:
        super().__init__(nn.Conv2d(in_channels, channels * r * r, 1), nn.PixelShuffle(r))
        self.mode = "shuffle"


def _integer_upscale(src: tuple[int, int], dst: tuple[int, int]) -> int:
    """The common integer factor r > 1 with dst = r * src, else 1."""
    if dst[0] % src[0] == 0 and dst[1] % src[1] == 0 and dst[0] // src[0] == dst[1] // src[1]:
        return dst[0] // src[0]
    return 1


class MapDecoder(nn.Module):
    """``(B, C, h, w) -> (B, 3, H, W)``: stem, resize, U-Net, tanh."""

    def __init__(
        self,
        in_channels: int,
        in_size: tuple[int, int],
        out_size: tuple[int, int],
        cfg: AttackConfig,
    ) -> None:
        super().__init__()
        if min(out_size) < 2**cfg.depth:
            raise ShapeError(
                f"AttackConfig.depth={cfg.depth} halves the image {cfg.depth} times; the target "
                f"size {out_size} is too small (need >= {2**cfg.depth}); use a smaller depth"
            )
        w = cfg.width
        widths = [w * min(2**i, cfg.max_width_mult) for i in range(cfg.depth + 1)]
        r = _integer_upscale(in_size, out_size)
        # integer upscales (compact DCT) go linear depth-to-space first, then the stem at full
        # resolution; other sizes get the stem at the input resolution, then a bilinear resize
        self.resize_first = r > 1
        if self.resize_first:
            self.resize: nn.Module = DepthToSpace(in_channels, w, r)
            self.stem = ConvBlock(w, w, cfg.norm)
        else:
            self.stem = ConvBlock(in_channels, w, cfg.norm)
            self.resize = Resize(in_size, out_size)
        self.enc0 = ConvBlock(w, widths[0], cfg.norm)
        self.down = nn.ModuleList(
            ConvBlock(widths[i], widths[i + 1], cfg.norm) for i in range(cfg.depth)
        )
        self.up = nn.ModuleList(
            ConvBlock(widths[i + 1] + widths[i], widths[i], cfg.norm) for i in range(cfg.depth)
        )
        self.head = nn.Conv2d(widths[0], _IMAGE_CHANNELS, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.resize(x)) if self.resize_first else self.resize(self.stem(x))
        skips = [self.enc0(x)]
        for block in self.down:
            skips.append(block(F.avg_pool2d(skips[-1], 2)))
        y = skips.pop()
        for block, skip in zip(reversed(self.up), reversed(skips)):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], dim=1))
        return torch.tanh(self.head(y))


class VectorDecoder(nn.Module):
    """``(B, D) -> (B, 3, H, W)``: MLP to a seed map, transposed-conv x2 stages, resize, tanh."""

    def __init__(self, dim: int, out_size: tuple[int, int], cfg: AttackConfig) -> None:
        super().__init__()
        s, w = cfg.seed_size, cfg.width
        stages = max(0, round(math.log2(max(out_size) / s)))
        widths = [w * min(2 ** (stages - i), cfg.max_width_mult) for i in range(stages + 1)]
        self.seed_shape = (widths[0], s, s)
        self.out_size = out_size
        self.mlp = nn.Sequential(
            nn.Linear(dim, cfg.mlp_hidden),
            nn.SiLU(),
            nn.Linear(cfg.mlp_hidden, widths[0] * s * s),
        )
        self.seed = nn.Sequential(_norm(cfg.norm, widths[0]), nn.SiLU())
        self.ups = nn.ModuleList(
            nn.Sequential(
                nn.ConvTranspose2d(widths[i], widths[i + 1], 4, stride=2, padding=1),
                _norm(cfg.norm, widths[i + 1]),
                nn.SiLU(),
                *_conv(widths[i + 1], widths[i + 1], cfg.norm),
            )
            for i in range(stages)
        )
        self.head = nn.Conv2d(widths[-1], _IMAGE_CHANNELS, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.seed(self.mlp(x).view(x.shape[0], *self.seed_shape))
        for up in self.ups:
            y = up(y)
        if tuple(y.shape[-2:]) != self.out_size:
            down = y.shape[-1] * y.shape[-2] > self.out_size[0] * self.out_size[1]
            y = F.interpolate(
                y, size=self.out_size, mode="bilinear", align_corners=False, antialias=down
            )
        return torch.tanh(self.head(y))


class InversionDecoder(nn.Module):
    """Standardize the observation, then decode it to an RGB image in [-1, 1]."""

    def __init__(
        self,
        observation_shape: Sequence[int],
        image_shape: Sequence[int],
        cfg: AttackConfig,
    ) -> None:
        super().__init__()
        self.observation_shape = tuple(int(v) for v in observation_shape)
        self.image_shape = tuple(int(v) for v in image_shape)
        if len(self.image_shape) != 3 or self.image_shape[0] != _IMAGE_CHANNELS:
            raise ShapeError(f"image_shape: expected (3, H, W), got {self.image_shape}")
        out_size = (self.image_shape[1], self.image_shape[2])
        if len(self.observation_shape) == 3:
            c, h, w = self.observation_shape
            self.standardize = Standardize(c, spatial=True)
            self.body: nn.Module = MapDecoder(c, (h, w), out_size, cfg)
        elif len(self.observation_shape) == 1:
            self.standardize = Standardize(self.observation_shape[0], spatial=False)
            self.body = VectorDecoder(self.observation_shape[0], out_size, cfg)
        else:
            raise ShapeError(
                "observation_shape: expected (C, h, w) for maps or (D,) for vectors, got "
                f"{self.observation_shape}"
            )

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.body(self.standardize(observations))


def build_decoder(
    observation_shape: Sequence[int], image_shape: Sequence[int], config: AttackConfig
) -> InversionDecoder:
    """The decoder ``InversionAttack`` trains, for one observation shape (without batch)."""
    return InversionDecoder(observation_shape, image_shape, config)


# ------------------------------------------------------------------------------------------
# input handling
# ------------------------------------------------------------------------------------------


def check_observations(observations: object, name: str = "observations") -> torch.Tensor:
    """A non-empty, finite floating batch ``(B, D)`` or ``(B, C, h, w)``."""
    x = expect_tensor(observations, name, floating=True)
    if x.dim() not in (2, 4):
        hint = ""
        if x.dim() == 3:
            hint = "; flatten templates such as (B, 49, 16) to (B, D) with .flatten(1)"
        raise ShapeError(
            f"{name}: expected (B, D) vectors or (B, C, h, w) maps, got shape "
            f"{tuple(x.shape)}{hint}"
        )
    expect_nonempty(x, name)
    expect_finite(x, name)
    return x


def _check_counts(obs: torch.Tensor, images: torch.Tensor, names: tuple[str, str]) -> None:
    if obs.shape[0] != images.shape[0]:
        raise ShapeError(
            f"{names[0]} and {names[1]} must pair up one to one, got {obs.shape[0]} "
            f"observations and {images.shape[0]} images"
        )


def _check_positive_int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def _check_dataset(data: object) -> Dataset:
    if not isinstance(data, Dataset) or not hasattr(data, "__len__"):
        raise FacelabTypeError(
            "observations: expected a tensor or a map-style torch Dataset yielding "
            f"(observation, image), got {type(data).__name__}"
        )
    if len(data) == 0:
        raise ShapeError("observations: the dataset is empty")
    return data


def _checked_batch(batch: object, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(batch, list | tuple) and len(batch) == 2):
        raise FormatError(
            f"{where}: expected the dataset to yield (observation, image) pairs, got a batch of "
            f"{type(batch).__name__}"
        )
    obs = check_observations(batch[0], f"{where} observations")
    img = check_images(batch[1], f"{where} images")
    _check_counts(obs, img, (f"{where} observations", f"{where} images"))
    return obs, img


@dataclass
class FitHistory:
    """Mean training loss over each logging window (``steps[i]`` = last step of window i)."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")


# ------------------------------------------------------------------------------------------
# the attack
# ------------------------------------------------------------------------------------------


class InversionAttack:
    """An adversary that learns ``observation -> image`` from paired data.

    ``InversionAttack(width=16, depth=2, seed=0)`` or ``InversionAttack(AttackConfig(...))``.
    The decoder is built on the first ``fit`` from the observation and image shapes (and the
    observation statistics); later ``fit`` calls continue training it. With the same seed,
    data and thread count, CPU training is bit-for-bit reproducible (GPU up to cuDNN's own
    non-determinism). The global torch RNG is left untouched.
    """

    def __init__(
        self,
        config: AttackConfig | None = None,
        *,
        seed: int = 0,
        device: str | torch.device | None = None,
        **overrides: Any,
    ) -> None:
        config = config or AttackConfig()
        if not isinstance(config, AttackConfig):
            raise FacelabTypeError(f"config: expected an AttackConfig, got {describe(config)}")
        if overrides:
            known = {f.name for f in dataclasses.fields(AttackConfig)}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise FacelabTypeError(
                    f"InversionAttack: unknown config field(s) {unknown}; known: {sorted(known)}"
                )
            config = dataclasses.replace(config, **overrides)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise FacelabTypeError(f"seed: expected an int, got {type(seed).__name__}")
        self.config = config
        self.seed = seed
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self._decoder: InversionDecoder | None = None

    def __repr__(self) -> str:
        shapes = ""
        if self._decoder is not None:
            shapes = f", observation={self._decoder.observation_shape}, "
            shapes += f"image={self._decoder.image_shape}"
        return f"InversionAttack({self.config}, seed={self.seed}{shapes})"

    @property
    def decoder(self) -> InversionDecoder:
        if self._decoder is None:
            raise RuntimeError("InversionAttack: the decoder is built by the first fit() or load()")
        return self._decoder

    @property
    def is_fitted(self) -> bool:
        return self._decoder is not None

    # -- building ----------------------------------------------------------------------------

    def _build(
        self, observation_shape: Sequence[int], image_shape: Sequence[int]
    ) -> InversionDecoder:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            decoder = build_decoder(observation_shape, image_shape, self.config)
        return decoder.to(self.device)

    def _check_against_decoder(self, obs: torch.Tensor, name: str) -> None:
        want = self.decoder.observation_shape
        if tuple(obs.shape[1:]) != want:
            raise ShapeError(
                f"{name}: this attack was trained on observations of shape (B, "
                f"{', '.join(map(str, want))}), got {tuple(obs.shape)}"
            )

    @staticmethod
    def _statistics(
        chunks: Iterator[torch.Tensor], spatial: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std, accumulated in float64 over chunks."""
        count, total, total_sq = 0, None, None
        for x in chunks:
            x = x.double()
            dims = (0, 2, 3) if spatial else (0,)
            part, part_sq = x.sum(dims), (x * x).sum(dims)
            total = part if total is None else total + part
            total_sq = part_sq if total_sq is None else total_sq + part_sq
            count += x.numel() // x.shape[1]
        mean = total / count
        var = (total_sq / count - mean * mean).clamp_min(0.0)
        return mean.float(), var.sqrt().clamp_min(_STD_FLOOR).float()

    # -- training ----------------------------------------------------------------------------

    def fit(
        self,
        observations: torch.Tensor | Dataset,
        images: torch.Tensor | None = None,
        *,
        steps: int = 1000,
        batch_size: int = 32,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        schedule: Literal["cosine", "constant"] = "cosine",
        log_every: int = 50,
        stats_samples: int = 4096,
        num_workers: int = 0,
        progress: bool = False,
    ) -> FitHistory:
        """Train the decoder on ``(observation, image)`` pairs; images RGB in [-1, 1].

        ``observations`` is a tensor (with ``images`` the matching tensor) or a map-style
        Dataset yielding ``(observation, image)`` (then ``images`` is None). AdamW at ``lr``
        with a cosine decay to 0 over ``steps`` (or constant). Observation statistics for the
        standardizer come from the tensor (all of it) or from ``stats_samples`` random dataset
        items, on the first fit only.
        """
        steps = _check_positive_int(steps, "steps")
        batch_size = _check_positive_int(batch_size, "batch_size")
        log_every = _check_positive_int(log_every, "log_every")
        stats_samples = _check_positive_int(stats_samples, "stats_samples")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr: expected a positive finite number, got {lr!r}")
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule: expected 'cosine' or 'constant', got {schedule!r}")
        gen = torch.Generator().manual_seed(self.seed)

        if isinstance(observations, torch.Tensor):
            obs = check_observations(observations)
            img = check_images(images, "images")
            _check_counts(obs, img, ("observations", "images"))
            obs_shape, img_shape = tuple(obs.shape[1:]), tuple(img.shape[1:])

            def stats_chunks() -> Iterator[torch.Tensor]:
                return iter(obs.split(_stats_chunk(obs[0].numel())))

            batches = self._tensor_batches(obs, img, batch_size, gen)
        else:
            if images is not None:
                raise ValueError(
                    "images: pass None when observations is a Dataset (it yields the images)"
                )
            data = _check_dataset(observations)
            first_obs, first_img = _checked_batch(
                torch.utils.data.default_collate([data[0]]), "dataset item 0"
            )
            obs_shape, img_shape = tuple(first_obs.shape[1:]), tuple(first_img.shape[1:])

            def stats_chunks() -> Iterator[torch.Tensor]:
                k = min(stats_samples, len(data))
                pick = torch.randperm(len(data), generator=gen)[:k].tolist()
                loader = DataLoader(
                    Subset(data, pick),
                    batch_size=_stats_chunk(first_obs.numel()),
                    num_workers=num_workers,
                )
                for batch in loader:
                    yield _checked_batch(batch, "dataset batch")[0]

            batches = self._dataset_batches(data, batch_size, gen, num_workers)

        if self._decoder is None:
            decoder = self._build(obs_shape, img_shape)
            mean, std = self._statistics(stats_chunks(), spatial=len(obs_shape) == 3)
            decoder.standardize.mean.copy_(mean)
            decoder.standardize.std.copy_(std)
            self._decoder = decoder
        else:
            if obs_shape != self._decoder.observation_shape:
                raise ShapeError(
                    "observations: this attack was built for observations "
                    f"{self._decoder.observation_shape}, got {obs_shape}"
                )
            if img_shape != self._decoder.image_shape:
                raise ShapeError(
                    f"images: this attack was built for images {self._decoder.image_shape}, "
                    f"got {img_shape}"
                )
        return self._train(batches, steps, lr, weight_decay, schedule, log_every, progress)

    def _tensor_batches(
        self, obs: torch.Tensor, img: torch.Tensor, batch_size: int, gen: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless shuffled batches: consecutive epochs' permutations, cut into batches."""
        n = obs.shape[0]
        order = torch.empty(0, dtype=torch.long)
        while True:
            while order.numel() < batch_size:
                order = torch.cat([order, torch.randperm(n, generator=gen)])
            idx, order = order[:batch_size], order[batch_size:]
            yield obs[idx.to(obs.device)], img[idx.to(img.device)]

    def _dataset_batches(
        self, data: Dataset, batch_size: int, gen: torch.Generator, num_workers: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(
            data,
            batch_size=batch_size,
            shuffle=True,
            generator=gen,
            num_workers=num_workers,
            drop_last=len(data) > batch_size,
        )
        while True:
            for batch in loader:
                obs, img = _checked_batch(batch, "dataset batch")
                self._check_against_decoder(obs, "dataset observations")
                yield obs, img

    def _train(
        self,
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
        steps: int,
        lr: float,
        weight_decay: float,
        schedule: str,
        log_every: int,
        progress: bool,
    ) -> FitHistory:
        decoder = self.decoder
        decoder.train()
        opt = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=weight_decay)
        if schedule == "cosine":
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, steps) / steps))
            )
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        ssim_weight = float(self.config.ssim_weight)
        window = torch.zeros((), device=self.device)
        logged: list[torch.Tensor] = []
        history = FitHistory()
        start = time.perf_counter()
        for step in progress_bar(range(steps), disable=not progress, desc="inversion attack"):
            obs, img = next(batches)
            obs = obs.to(self.device, torch.float32, non_blocking=True)
            img = img.to(self.device, torch.float32, non_blocking=True)
            pred = decoder(obs)
            loss = F.l1_loss(pred, img)
            if ssim_weight > 0:
                loss = loss + ssim_weight * (
                    1.0 - _ssim_unchecked(to_unit(pred), to_unit(img)).mean()
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            window += loss.detach()
            done = step + 1
            if done % log_every == 0 or done == steps:
                span = done - (history.steps[-1] if history.steps else 0)
                logged.append(window / span)
                history.steps.append(done)
                window = torch.zeros((), device=self.device)
        decoder.eval()
        history.losses = torch.stack(logged).tolist()
        history.seconds = time.perf_counter() - start
        if not all(math.isfinite(v) for v in history.losses):
            raise NonFiniteError(
                f"InversionAttack.fit: the training loss became non-finite ({history.losses}); "
                "lower lr or check the observations"
            )
        return history

    # -- inference ---------------------------------------------------------------------------

    @torch.no_grad()
    def reconstruct(self, observations: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Reconstructed images ``(B, 3, H, W)`` in [-1, 1], float32, on the input's device."""
        obs = check_observations(observations)
        self._check_against_decoder(obs, "observations")
        batch_size = _check_positive_int(batch_size, "batch_size")
        decoder = self.decoder
        was_training = decoder.training
        decoder.eval()
        try:
            out = [
                decoder(chunk.to(self.device, torch.float32)).to(obs.device)
                for chunk in obs.split(batch_size)
            ]
        finally:
            decoder.train(was_training)
        return torch.cat(out)

    def evaluate(
        self,
        observations: torch.Tensor | Dataset,
        images: torch.Tensor | None = None,
        *,
        recognizer: nn.Module | None = None,
        threshold: float | None = None,
        labels: torch.Tensor | Sequence[int] | None = None,
        far: float | None = None,
        match: Match | None = None,
        batch_size: int = 256,
    ) -> AttackResult:
        """Reconstruct held-out observations and score them against their images.

        SSIM/PSNR always; with a ``recognizer``, identity leakage; with a ``threshold`` (or a
        ``far`` and ``labels`` to choose one on the real images), the attack success rate.
        See ``evaluate_reconstructions`` for ``match``.
        """
        batch_size = _check_positive_int(batch_size, "batch_size")
        if isinstance(observations, torch.Tensor):
            obs = check_observations(observations)
            img = check_images(images, "images")
            _check_counts(obs, img, ("observations", "images"))
            rec = self.reconstruct(obs, batch_size).to(img.device)
        else:
            if images is not None:
                raise ValueError(
                    "images: pass None when observations is a Dataset (it yields the images)"
                )
            data = _check_dataset(observations)
            recs, imgs = [], []
            for batch in DataLoader(data, batch_size=batch_size, shuffle=False):
                obs, img = _checked_batch(batch, "dataset batch")
                recs.append(self.reconstruct(obs, batch_size).to(img.device))
                imgs.append(img)
            rec, img = torch.cat(recs), torch.cat(imgs)
        return evaluate_reconstructions(
            rec,
            img,
            recognizer=recognizer,
            threshold=threshold,
            labels=labels,
            far=far,
            match=match,
            batch_size=batch_size,
        )

    # -- persistence -------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the decoder (weights + observation statistics) and its config to safetensors.

        The write is atomic (temporary file, then rename).
        """
        decoder = self.decoder
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}
        metadata = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "config": json.dumps(dataclasses.asdict(self.config)),
            "observation_shape": json.dumps(list(decoder.observation_shape)),
            "image_shape": json.dumps(list(decoder.image_shape)),
            "seed": str(self.seed),
        }
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            save_file(tensors, str(tmp), metadata=metadata)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(
        cls, path: str | os.PathLike, device: str | torch.device | None = None
    ) -> InversionAttack:
        """Load an attack written by ``save``; corrupted or foreign files raise FormatError."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"InversionAttack.load: no such file {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # safetensors raises its own error types
            raise FormatError(
                f"InversionAttack.load: {path} is not a readable safetensors file ({err})"
            ) from err
        if metadata.get("format") != _FORMAT:
            raise FormatError(
                f"InversionAttack.load: {path} is not a saved InversionAttack "
                f"(format {metadata.get('format')!r}, expected {_FORMAT!r})"
            )
        if metadata.get("format_version") != _FORMAT_VERSION:
            raise FormatError(
                f"InversionAttack.load: unsupported format version "
                f"{metadata.get('format_version')!r} (this facelab reads {_FORMAT_VERSION!r})"
            )
        try:
            config = AttackConfig(**json.loads(metadata["config"]))
            obs_shape = json.loads(metadata["observation_shape"])
            img_shape = json.loads(metadata["image_shape"])
            seed = int(metadata["seed"])
        except (KeyError, TypeError, ValueError) as err:
            raise FormatError(
                f"InversionAttack.load: corrupted metadata in {path} ({err})"
            ) from err
        attack = cls(config, seed=seed, device=device)
        decoder = attack._build(obs_shape, img_shape)
        try:
            decoder.load_state_dict(tensors, strict=True)
        except RuntimeError as err:
            raise FormatError(
                f"InversionAttack.load: the weights in {path} do not fit the saved config ({err})"
            ) from err
        decoder.eval()
        attack._decoder = decoder
        return attack


# ------------------------------------------------------------------------------------------
# fair comparisons
# ------------------------------------------------------------------------------------------


def mean_image_baseline(
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    *,
    recognizer: nn.Module | None = None,
    threshold: float | None = None,
    labels: torch.Tensor | Sequence[int] | None = None,
    far: float | None = None,
    match: Match | None = None,
) -> AttackResult:
    """Score the attack that ignores its observation and outputs the mean training image.

    This is what an attack on an observation carrying no information converges to under L1/L2;
    an attack is only informative to the extent it beats it.
    """
    train = check_images(train_images, "train_images")
    test = check_images(test_images, "test_images")
    if train.shape[1:] != test.shape[1:]:
        raise ShapeError(
            f"train_images and test_images differ in image shape: {tuple(train.shape[1:])} vs "
            f"{tuple(test.shape[1:])}"
        )
    mean = train.mean(0, keepdim=True).to(test.device).expand_as(test).contiguous()
    return evaluate_reconstructions(
        mean, test, recognizer=recognizer, threshold=threshold, labels=labels, far=far, match=match
    )


def compare_attacks(
    observations: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    *,
    config: AttackConfig | None = None,
    steps: int = 1000,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    device: str | torch.device | None = None,
    recognizer: nn.Module | None = None,
    threshold: float | None = None,
    test_labels: torch.Tensor | Sequence[int] | None = None,
    far: float | None = None,
    match: Match | None = None,
    baseline: bool = True,
    grid_path: str | os.PathLike | None = None,
    grid_samples: int = 8,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Train one inversion attack per observation type and score each on the same test set.

    ``observations`` maps a name to ``(train_observations, test_observations)``, paired with
    ``train_images`` / ``test_images``. Every attack gets the same decoder config, seed, steps,
    batch size and learning rate, and every success rate uses the same threshold (given, or
    chosen once at ``far`` on the real test images with ``test_labels``), so the rows are
    comparable. With ``baseline``, a first row ``"mean image"`` scores the no-information
    attack. With ``grid_path``, a PNG of originals vs each attack's reconstructions is written.
    ``progress`` shows each attack's training progress (core ``progress_bar``: a bar on a
    terminal, a line every few seconds otherwise).

    Returns one row per attack: ``attack``, ``observation`` (its shape), the metrics of
    ``AttackResult.as_row`` and ``train_loss`` / ``train_seconds``.
    """
    if not isinstance(observations, Mapping) or not observations:
        raise ValueError(
            "observations: expected a non-empty mapping name -> (train_obs, test_obs), got "
            f"{describe(observations)}"
        )
    train = check_images(train_images, "train_images")
    test = check_images(test_images, "test_images")
    for name, pair in observations.items():
        if not (isinstance(pair, tuple | list) and len(pair) == 2):
            raise ValueError(
                f"observations[{name!r}]: expected a (train_obs, test_obs) pair, got "
                f"{describe(pair)}"
            )
        tr = check_observations(pair[0], f"observations[{name!r}] train")
        te = check_observations(pair[1], f"observations[{name!r}] test")
        _check_counts(tr, train, (f"observations[{name!r}] train", "train_images"))
        _check_counts(te, test, (f"observations[{name!r}] test", "test_images"))
        if tr.shape[1:] != te.shape[1:]:
            raise ShapeError(
                f"observations[{name!r}]: train and test observations differ in shape: "
                f"{tuple(tr.shape[1:])} vs {tuple(te.shape[1:])}"
            )
    if far is not None:
        if recognizer is None or test_labels is None:
            raise ValueError("far: choosing a threshold needs a recognizer and test_labels")
        if threshold is not None:
            raise ValueError("pass either a threshold or a far to choose one at, not both")
        _, impostor = pair_scores(embed(recognizer, test), test_labels)
        threshold = threshold_at_far(impostor, far)
    scoring = dict(recognizer=recognizer, threshold=threshold, labels=test_labels, match=match)
    if recognizer is None:
        scoring["labels"] = None

    rows: list[dict[str, Any]] = []
    recs: dict[str, torch.Tensor] = {}
    if baseline:
        row = mean_image_baseline(train, test, **scoring).as_row("mean image")
        row.update(observation="none", train_loss=float("nan"), train_seconds=0.0)
        rows.append(row)
    for name, (train_obs, test_obs) in observations.items():
        attack = InversionAttack(config, seed=seed, device=device)
        history = attack.fit(
            train_obs, train, steps=steps, batch_size=batch_size, lr=lr, progress=progress
        )
        rec = attack.reconstruct(test_obs).to(test.device)
        result = evaluate_reconstructions(rec, test, **scoring)
        row = result.as_row(name)
        row.update(
            observation="x".join(str(v) for v in test_obs.shape[1:]),
            train_loss=history.final_loss,
            train_seconds=history.seconds,
        )
        rows.append(row)
        if grid_path is not None:
            recs[name] = rec[:grid_samples]
    if grid_path is not None:
        save_grid(grid_path, test[:grid_samples], recs)
    if far is not None:
        for row in rows:
            row["far"] = float(far)
    return rows
