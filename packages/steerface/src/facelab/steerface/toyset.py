"""A toyfaces training set with *visual tendency* built in (ours: the paper's problem, made
measurable on toy data).

Two ingredients of the paper's diagnosis, each with a dial:

1. **Attributes co-occur with identities** (``correlation``). Binary nuisance attributes are read
   from toyfaces' own rendering parameters (``ToyFaces.batch_attributes``): head turned right
   vs left (``yaw``), light from the right vs the left (``light_azimuth``), bright vs dark
   (``exposure``), warm vs cool (``color_temperature``). Each attribute k is "on" in a fraction
   ``rate`` of the training images, but unevenly: identity i shows it at the rate
   ``p_ik = rate + correlation * (b_ik - rate)``, with ``b_ik`` = 1 for ``round(rate * N)``
   identities (a seeded choice) and 0 for the rest. ``correlation`` 0 is an unbiased set, 1 ties
   the attribute to the identity. Images are *selected* from a larger toyfaces pool of the same
   people (public API only: attributes are known before rendering) so that every identity gets
   exactly ``round(p_ik * M)`` images with the attribute on; images whose parameter lies within
   ``margin`` of the threshold are never used, so every label is unambiguous.
2. **The ID embedding carries residual non-identity cues** (``leak``). The toy "face
   recognizer" embedding of image j of identity i is
   ``e_ij = normalize(id_i + leak * sum_k s_ijk a_k / sqrt(K))`` with ``id_i`` a random unit
   vector, ``a_k`` random orthonormal attribute directions and ``s_ijk = +-1`` the image's
   attribute values. The generator trains on ``e_ij`` (``contexts="file"``) and is asked to draw
   the identity's mean embedding (``identity_contexts``), as ``embed_identities`` gives for real
   people, which carries the identity's average cue ``leak * (2 p_ik - 1) a_k / sqrt(K)``.

Images are rendered at ``render_size`` (toyfaces' minimum is 32 px) and average-pooled to
``image_size`` (16 px by default: the toy runs are CPU-sized).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from facelab.core.errors import RangeError, UnknownNameError

#: attribute name -> (toyfaces attribute, threshold, margin): "on" above threshold + margin,
#: "off" below threshold - margin, ambiguous (never selected, not probed) in between
ATTRIBUTES: dict[str, tuple[str, float, float]] = {
    "pose": ("yaw", 0.0, 6.0),  # degrees; on = head turned toward image right
    "lighting": ("light_azimuth", 0.0, 12.0),  # degrees; on = light from image right
    "exposure": ("exposure", 1.0, 0.06),  # multiplicative; on = brighter than average
    "warmth": ("color_temperature", 0.0, 0.025),  # on = warmer than average
}

#: toyfaces identity offsets: the generator's people, the probe's people, held-out FR people
PROBE_OFFSET = 500_000
HELDOUT_OFFSET = 1_000_000


@dataclass
class TendencyToyConfig:
    """The biased toy training set and its toy face-recognizer embeddings."""

    identities: int = 24
    images_per_identity: int = 40
    attributes: tuple[str, ...] = ("pose", "lighting", "exposure", "warmth")
    rate: float = 0.3
    """fraction of training images with each attribute on"""
    correlation: float = 0.6
    """identity-attribute correlation strength rho in [0, 1]"""
    leak: float = 0.3
    """norm of the attribute residue in the toy embedding, relative to the identity part"""
    embedding_dim: int = 64
    render_size: int = 32
    image_size: int = 16
    difficulty: float = 1.0
    seed: int = 0
    max_pool: int = 8192
    """largest pool of candidate images per identity searched for the selection"""

    def __post_init__(self) -> None:
        self.attributes = tuple(self.attributes)
        unknown = [a for a in self.attributes if a not in ATTRIBUTES]
        if unknown or not self.attributes:
            raise UnknownNameError(
                f"attributes: expected a non-empty subset of {sorted(ATTRIBUTES)}, got "
                f"{list(self.attributes)}"
            )
        if len(set(self.attributes)) != len(self.attributes):
            raise RangeError(f"attributes: repeated names in {list(self.attributes)}")
        if self.identities < 2 or self.images_per_identity < 2:
            raise RangeError(
                f"expected >= 2 identities and >= 2 images per identity, got "
                f"{self.identities} and {self.images_per_identity}"
            )
        for name in ("rate", "correlation"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise RangeError(f"{name}: expected a value in [0, 1], got {v}")
        if not 0.0 < self.rate < 1.0:
            raise RangeError(f"rate: expected a value in (0, 1), got {self.rate}")
        if not 0.0 <= self.leak <= 10.0:
            raise RangeError(f"leak: expected a value in [0, 10], got {self.leak}")
        if self.embedding_dim < len(self.attributes) + 2:
            raise RangeError(
                f"embedding_dim: expected at least {len(self.attributes) + 2}, got "
                f"{self.embedding_dim}"
            )
        if self.render_size % self.image_size:
            raise RangeError(
                f"image_size: expected a divisor of render_size {self.render_size}, got "
                f"{self.image_size}"
            )


@dataclass
class TendencyToySet:
    """The selected training set (images uint8 at ``image_size``) and everything about it."""

    config: TendencyToyConfig
    images: torch.Tensor  # (N, 3, S, S) uint8
    labels: torch.Tensor  # (N,) identity label 0..I-1
    attributes: torch.Tensor  # (N, K) bool: the selected attribute values
    preferences: torch.Tensor  # (I, K) bool: b_ik
    rates: torch.Tensor  # (I, K) float: realised per-identity rates (= p_ik up to rounding)
    embeddings: torch.Tensor  # (N, D) unit toy FR embeddings
    identity_vectors: torch.Tensor  # (I, D) id_i
    directions: torch.Tensor  # (K, D) a_k
    pool_index: torch.Tensor  # (N,) image index inside the identity's toyfaces pool
    extra: dict = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return self.config.attributes

    def identity_contexts(self) -> torch.Tensor:
        """(I, D) each identity's normalized mean embedding (the contexts to generate from)."""
        from facelab.core.diffusion.identities import identity_means

        return identity_means(self.embeddings, self.labels)[1]

    def float_images(self) -> torch.Tensor:
        return self.images.float() / 127.5 - 1.0

    def write_folder(self, root: str | Path) -> Path:
        """``root/<label:05d>/<k:03d>.png`` (sorted order = row order) for ``train_diffusion``."""
        from PIL import Image

        root = Path(root)
        m = self.config.images_per_identity
        arr = self.images.permute(0, 2, 3, 1).numpy()
        for n in range(arr.shape[0]):
            i, k = divmod(n, m)
            p = root / f"{i:05d}" / f"{k:03d}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr[n]).save(p)
        return root


def attribute_values(attrs: dict[str, torch.Tensor], names) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K) bool "on" and (B, K) bool "clear" (outside the margin) from toyfaces attributes."""
    on, clear = [], []
    for name in names:
        src, thr, margin = ATTRIBUTES[name]
        v = attrs[src].double()
        on.append(v > thr)
        clear.append((v - thr).abs() > margin)
    return torch.stack(on, 1), torch.stack(clear, 1)


def downsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool float images in [-1, 1] by ``factor`` and quantize to uint8."""
    x = F.avg_pool2d(images, factor) if factor > 1 else images
    return ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _toy(n, m, cfg: TendencyToyConfig, offset: int):
    from facelab.core.data.toyfaces import ToyFaces

    return ToyFaces(
        n,
        m,
        size=cfg.render_size,
        seed=cfg.seed,
        identity_offset=offset,
        difficulty=cfg.difficulty,
    )


def identity_rates(
    cfg: TendencyToyConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """b (I, K) bool and the per-identity on-counts (I, K) of the selection."""
    n, k, m = cfg.identities, len(cfg.attributes), cfg.images_per_identity
    b = np.zeros((n, k), dtype=bool)
    n_on = round(cfg.rate * n)
    for j in range(k):
        b[rng.permutation(n)[:n_on], j] = True
    p = cfg.rate + cfg.correlation * (b.astype(np.float64) - cfg.rate)
    return b, np.rint(p * m).astype(np.int64)


def build_tendency_set(cfg: TendencyToyConfig) -> TendencyToySet:
    """Select, render and embed the biased training set (deterministic in ``cfg``)."""
    rng = np.random.default_rng([cfg.seed, 0x57EE2])
    n_id, m, k = cfg.identities, cfg.images_per_identity, len(cfg.attributes)
    b, counts = identity_rates(cfg, rng)
    # target attribute vectors: per identity and attribute, exactly counts[i, j] images on
    targets = np.zeros((n_id, m, k), dtype=bool)
    for i in range(n_id):
        for j in range(k):
            targets[i, rng.permutation(m)[: counts[i, j]], j] = True
    codes = (targets * (1 << np.arange(k))).sum(-1)  # (I, M) combination codes
    pool = 4 * m * (1 << k)
    chosen = None
    while chosen is None:
        toy = _toy(n_id, pool, cfg, 0)
        on, clear = attribute_values(toy.batch_attributes(), cfg.attributes)
        ok = clear.all(1).view(n_id, pool).numpy()
        code = (on.numpy() * (1 << np.arange(k))).sum(-1).reshape(n_id, pool)
        chosen = _match(codes, code, ok)
        if chosen is None:
            if pool >= cfg.max_pool:
                raise RangeError(
                    f"toy set: not enough candidate images with the wanted attribute "
                    f"combinations in pools of {pool} per identity; lower images_per_identity "
                    f"or the number of attributes, or raise max_pool"
                )
            pool = min(2 * pool, cfg.max_pool)
    index = torch.from_numpy((np.arange(n_id)[:, None] * pool + chosen).reshape(-1))
    factor = cfg.render_size // cfg.image_size
    images = torch.cat(
        [downsample(toy.render(index[s : s + 256]), factor) for s in range(0, index.numel(), 256)]
    )
    labels = torch.arange(n_id).repeat_interleave(m)
    attrs = torch.from_numpy(targets.reshape(n_id * m, k))
    ids, dirs = _embedding_basis(cfg)
    emb = toy_embeddings(ids[labels], attrs, dirs, cfg.leak)
    rates = attrs.view(n_id, m, k).double().mean(1)
    return TendencyToySet(
        config=cfg,
        images=images,
        labels=labels,
        attributes=attrs,
        preferences=torch.from_numpy(b),
        rates=rates,
        embeddings=emb,
        identity_vectors=ids,
        directions=dirs,
        pool_index=torch.from_numpy(chosen.reshape(-1)),
        extra={"pool_per_identity": pool},
    )


def _match(codes: np.ndarray, code: np.ndarray, ok: np.ndarray) -> np.ndarray | None:
    """For each identity and wanted combination, the first unused clear pool images with it."""
    n_id, m = codes.shape
    out = np.zeros((n_id, m), dtype=np.int64)
    for i in range(n_id):
        for c in np.unique(codes[i]):
            want = np.flatnonzero(codes[i] == c)
            have = np.flatnonzero(ok[i] & (code[i] == c))
            if have.size < want.size:
                return None
            out[i, want] = have[: want.size]
    return out


def _embedding_basis(cfg: TendencyToyConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity vectors (I, D) and orthonormal attribute directions (K, D), seeded."""
    g = torch.Generator().manual_seed(cfg.seed * 7919 + 17)
    d, k = cfg.embedding_dim, len(cfg.attributes)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    dirs = q.T.float()
    ids = F.normalize(torch.randn(cfg.identities, d, generator=g), dim=1)
    return ids, dirs


def toy_embeddings(
    identity: torch.Tensor, attributes: torch.Tensor, directions: torch.Tensor, leak: float
) -> torch.Tensor:
    """``normalize(id + leak * sum_k s_k a_k / sqrt(K))`` with ``s = 2 * on - 1``."""
    s = attributes.float() * 2.0 - 1.0
    residue = s @ directions / math.sqrt(directions.shape[0])
    return F.normalize(identity + leak * residue, dim=1)


def probe_set(
    cfg: TendencyToyConfig, identities: int = 200, images_per_identity: int = 12
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unselected real toyfaces of other people for the attribute probes: images (float, at
    ``image_size``), on (B, K) and clear (B, K) masks."""
    toy = _toy(identities, images_per_identity, cfg, PROBE_OFFSET)
    on, clear = attribute_values(toy.batch_attributes(), cfg.attributes)
    factor = cfg.render_size // cfg.image_size
    imgs = torch.cat(
        [downsample(toy.render(slice(s, s + 256)), factor) for s in range(0, len(toy), 256)]
    )
    return imgs.float() / 127.5 - 1.0, on, clear


def heldout_pairs(
    cfg: TendencyToyConfig, identities: int = 100, images_per_identity: int = 6, pairs: int = 1200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Verification pairs of held-out real toyfaces people (never generated, never trained
    on), interleaved like a .bin: images (2P, 3, S, S) and issame (P,)."""
    from facelab.core.data.toyfaces import make_pairs

    toy = _toy(identities, images_per_identity, cfg, HELDOUT_OFFSET)
    i1, i2, same = make_pairs(toy, pairs, seed=cfg.seed)
    gen, imp = torch.nonzero(same).flatten(), torch.nonzero(~same).flatten()
    k = min(gen.numel(), imp.numel())
    order = torch.cat([torch.stack([gen[:k], imp[:k]], 1).flatten(), gen[k:], imp[k:]])
    i1, i2, same = i1[order], i2[order], same[order]
    idx = torch.stack([i1, i2], 1).flatten()
    factor = cfg.render_size // cfg.image_size
    imgs = torch.cat(
        [downsample(toy.render(idx[s : s + 256]), factor) for s in range(0, idx.numel(), 256)]
    )
    return imgs.float() / 127.5 - 1.0, same


__all__ = [
    "ATTRIBUTES",
    "HELDOUT_OFFSET",
    "PROBE_OFFSET",
    "TendencyToyConfig",
    "TendencyToySet",
    "attribute_values",
    "build_tendency_set",
    "heldout_pairs",
    "probe_set",
    "toy_embeddings",
]
