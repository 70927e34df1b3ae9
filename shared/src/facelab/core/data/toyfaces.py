"""ToyFaces: the procedural, deterministic, photograph-like default dataset of facelab.

``ToyFaces(num_identities, images_per_identity)`` renders aligned 112x112 (or any multiple of 8)
face crops on the fly: every identity has its own face geometry and proportions (face width and
height, chin, eye spacing and size, brows, nose, mouth, ears), skin tone, iris and hair colour and
hair style; every image adds nuisance: pose (yaw/pitch as depth-dependent part shifts, roll/scale/
shift as an in-plane warp), expression (smile, open mouth, eye openness, brows), lighting
(direction, strength, exposure, colour temperature, gradient), optics blur, sensor noise,
occluders (glasses, sunglasses, mask, hand) and a textured background.

Why it looks the way it does: the frequency-domain privacy methods (DuetFace, PartialFace,
MinusFace) rest on a property of photographs, most energy in the low DCT frequencies and high
frequencies that look like noise. Hard-edged cartoons break it. So parts are soft shapes (a
smoothstep of a signed distance, widened by each image's optical blur), shaded by a Lambert
model, textured with band-limited noise (skin pores and blotches, hair strands) and overlaid with
white sensor noise, on a background with a 1/f spectrum. The tests check the statistics against
a real aligned face (scikit-image's astronaut): the share of DCT energy in the DuetFace client
channels (98 % of all, 86 % of the non-DC energy there; toyfaces default: about 98.8 % and 86 %),
and that the image rebuilt from the high-frequency (server) channels is noise-like, not an
outline drawing.

Identity is carried by geometry, proportions and colour, never by a single sharp mark; it is
learnable (a small CNN trained for minutes on CPU verifies held-out people well above chance, see
``shared/scripts/toyfaces_learnability.py``) but not trivially, and ``difficulty`` scales every
nuisance.

Determinism: identity ``identity_offset + k`` and image ``j`` of it depend only on
``(seed, identity_offset + k, j)`` (a counter-based hash RNG), so ``ToyFaces(100, 10,
identity_offset=1000)`` holds identities that never occur in ``ToyFaces(1000, ...)``, and the first
images of an identity are the same whatever ``images_per_identity`` is. Images lie exactly on the
8-bit grid (``u8 / 127.5 - 1``), like decoded photographs, so a PNG round trip is lossless.

Sample ``i`` is image ``i % images_per_identity`` of identity ``i // images_per_identity``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from facelab.core.data._toyfaces_params import (
    HAIR_COLORS,
    HAIR_STYLES,
    IRIS_COLORS,
    OCCLUSION_TYPES,
    SKIN_TONE_GROUPS,
    sample_identity_params,
    sample_image_params,
)
from facelab.core.data._toyfaces_render import render_batch
from facelab.core.errors import FacelabTypeError, RangeError, ShapeError, UnknownNameError

__all__ = [
    "ATTRIBUTE_NAMES",
    "DIFFICULTY_PRESETS",
    "HAIR_COLORS",
    "HAIR_STYLES",
    "IRIS_COLORS",
    "OCCLUSION_TYPES",
    "SKIN_TONE_GROUPS",
    "ToyFaces",
    "make_pairs",
    "to_float",
    "to_uint8",
]

#: named nuisance strengths; a float in [0, 3] works too. 0 removes pose, expression, lighting
#: and occluder nuisance (backgrounds and the base blur and sensor noise remain).
DIFFICULTY_PRESETS: dict[str, float] = {"easy": 0.5, "default": 1.0, "hard": 1.6}
MAX_DIFFICULTY = 3.0
BLOCK = 8  # sizes must be multiples of the DCT block
MIN_SIZE = 32
RENDER_CHUNK = 32  # images rendered together (facial parts: see _render_order)

#: identity-level attributes (same for every image of an identity)
IDENTITY_ATTRIBUTES = (
    "skin_tone_group",
    "skin_tone",
    "hair_style",
    "hair_color",
    "iris_color",
    "beard",
)
#: image-level (nuisance) attributes
IMAGE_ATTRIBUTES = (
    "yaw",
    "pitch",
    "roll",
    "scale",
    "smile",
    "mouth_open",
    "eye_openness",
    "light_azimuth",
    "light_elevation",
    "light_strength",
    "exposure",
    "color_temperature",
    "blur_sigma",
    "noise_sigma",
    "occlusion_type",
    "occlusion_amount",
)
ATTRIBUTE_NAMES = ("identity", "label", "image", *IDENTITY_ATTRIBUTES, *IMAGE_ATTRIBUTES)
_INT_ATTRIBUTES = frozenset(
    (
        "identity",
        "label",
        "image",
        "skin_tone_group",
        "hair_style",
        "hair_color",
        "iris_color",
        "occlusion_type",
    )
)
# identity parameters renamed for the attribute view
_IDENTITY_SOURCE = {
    "skin_tone_group": "skin_group",
    "skin_tone": "skin_tone",
    "hair_style": "hair_style",
    "hair_color": "hair_color",
    "iris_color": "iris_color",
    "beard": "beard",
}


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, restoring the setting after.

    Rendering is hundreds of small element-wise ops: extra threads buy little, and on an
    oversubscribed CPU their synchronization makes rendering tens of times slower (measured:
    57x on a loaded 2-core machine). Parallelize across DataLoader workers instead.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images on the 8-bit grid -> uint8 (exact for toyfaces images)."""
    return ((images + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [-1, 1] (``u8 / 127.5 - 1``, the inverse of ``to_uint8``)."""
    return images.float() / 127.5 - 1.0


def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool) or isinstance(value, float):
        raise FacelabTypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise FacelabTypeError(f"{name}: expected an int, got {type(value).__name__}") from None


def _difficulty(value: float | str) -> float:
    if isinstance(value, str):
        try:
            return DIFFICULTY_PRESETS[value]
        except KeyError:
            raise UnknownNameError(
                f"unknown difficulty {value!r}; valid names: {sorted(DIFFICULTY_PRESETS)} or a "
                f"float in [0, {MAX_DIFFICULTY}]"
            ) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FacelabTypeError(
            f"difficulty: expected a name or a float, got {type(value).__name__}"
        )
    d = float(value)
    if not math.isfinite(d) or not 0.0 <= d <= MAX_DIFFICULTY:
        raise RangeError(f"difficulty: expected a float in [0, {MAX_DIFFICULTY}], got {value!r}")
    return d


class ToyFaces(Dataset):
    """Procedural aligned face crops: ``num_identities`` x ``images_per_identity`` samples.

    Args:
        num_identities: number of identities N (labels 0..N-1).
        images_per_identity: images M per identity.
        size: image side in pixels, a multiple of 8 (the DCT block), at least 32. Geometry
            follows the ArcFace 112x112 template scaled to ``size``.
        seed: non-negative int; different seeds give different people and images.
        identity_offset: identity k of this dataset is global identity ``identity_offset + k``;
            disjoint offset ranges give disjoint people (train / held-out splits).
        difficulty: nuisance strength, ``"easy"`` (0.5), ``"default"`` (1.0), ``"hard"`` (1.6)
            or a float in [0, 3]; 0 renders every image of an identity alike except background
            and sensor noise draws.

    ``dataset[i] -> (image, label)``: float32 (3, size, size) in [-1, 1], int64 label.
    """

    def __init__(
        self,
        num_identities: int,
        images_per_identity: int,
        size: int = 112,
        seed: int = 0,
        identity_offset: int = 0,
        difficulty: float | str = "default",
    ) -> None:
        n = _as_int(num_identities, "num_identities")
        m = _as_int(images_per_identity, "images_per_identity")
        size = _as_int(size, "size")
        seed = _as_int(seed, "seed")
        offset = _as_int(identity_offset, "identity_offset")
        if n <= 0:
            raise RangeError(f"num_identities: expected a positive int, got {n}")
        if m <= 0:
            raise RangeError(f"images_per_identity: expected a positive int, got {m}")
        if size < MIN_SIZE or size % BLOCK:
            raise ShapeError(
                f"size: expected a multiple of {BLOCK} that is at least {MIN_SIZE}, got {size}"
            )
        if not 0 <= seed < 2**63:
            raise RangeError(f"seed: expected an int in [0, 2^63), got {seed}")
        if offset < 0 or offset + n >= 2**62:
            raise RangeError(f"identity_offset: expected a non-negative int, got {offset}")
        self.num_identities, self.images_per_identity = n, m
        self.size, self.seed, self.identity_offset = size, seed, offset
        self.difficulty = _difficulty(difficulty)

        identities = np.arange(offset, offset + n, dtype=np.int64)
        self._idp = sample_identity_params(seed, identities)
        abs_ids = np.repeat(identities, m)
        image_ids = np.tile(np.arange(m, dtype=np.int64), n)
        self._imp = sample_image_params(seed, abs_ids, image_ids, self.difficulty)
        self.labels = torch.arange(n, dtype=torch.int64).repeat_interleave(m)
        self._cache: dict[torch.dtype, torch.Tensor] = {}

    def __repr__(self) -> str:
        return (
            f"ToyFaces(num_identities={self.num_identities}, images_per_identity="
            f"{self.images_per_identity}, size={self.size}, seed={self.seed}, identity_offset="
            f"{self.identity_offset}, difficulty={self.difficulty})"
        )

    def __len__(self) -> int:
        return self.num_identities * self.images_per_identity

    # ---- indexing
    def _index(self, i: object) -> int:
        if isinstance(i, torch.Tensor) and i.dim() == 0 and not i.is_floating_point():
            i = int(i)
        k = _as_int(i, "index")
        n = len(self)
        if not -n <= k < n:
            raise IndexError(f"index {k} is out of range for a ToyFaces of {n} images")
        return k % n

    def _indices(self, indices: object) -> torch.Tensor:
        if isinstance(indices, slice):
            return torch.arange(len(self))[indices]
        if isinstance(indices, torch.Tensor):
            idx = indices
        else:
            try:
                idx = torch.as_tensor(
                    list(indices) if not isinstance(indices, np.ndarray) else indices
                )
            except (TypeError, ValueError, RuntimeError):
                raise FacelabTypeError(
                    f"indices: expected a sequence of ints, a 1-D integer tensor or a slice, "
                    f"got {type(indices).__name__}"
                ) from None
        if idx.numel() == 0:
            return torch.zeros(0, dtype=torch.int64)
        if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
            raise FacelabTypeError(f"indices: expected integers, got dtype {idx.dtype}")
        if idx.dim() != 1:
            raise ShapeError(
                f"indices: expected a 1-D list of indices, got shape {tuple(idx.shape)}"
            )
        idx = idx.to(torch.int64)
        n = len(self)
        bad = (idx < -n) | (idx >= n)
        if bool(bad.any()):
            raise IndexError(
                f"indices: {int(bad.sum())} out of range for a ToyFaces of {n} images, e.g. "
                f"{int(idx[bad][0])}"
            )
        return idx % n

    # ---- rendering
    def _params(self, idx: torch.Tensor) -> tuple[dict, dict]:
        lab = self.labels[idx]
        idp = {k: v[lab] for k, v in self._idp.items()}
        imp = {k: v[idx] for k, v in self._imp.items()}
        return idp, imp

    def render(self, indices: Sequence[int] | torch.Tensor | slice) -> torch.Tensor:
        """Images of ``indices`` as float32 (B, 3, size, size) in [-1, 1], rendered batched.

        A pixel depends only on its own image's parameters, never on the rest of the batch:
        ``render(idx)[k]`` equals ``self[idx[k]][0]`` exactly. Runs on one torch thread.
        """
        idx = self._indices(indices)
        out = torch.empty(idx.numel(), 3, self.size, self.size)
        order = self._render_order(idx)
        with _one_thread():
            for start in range(0, idx.numel(), RENDER_CHUNK):
                pos = order[start : start + RENDER_CHUNK]
                idp, imp = self._params(idx[pos])
                img = render_batch(idp, imp, self.size)
                # quantize to the 8-bit grid like a decoded photograph: [0,1] -> {0..255} -> [-1,1]
                out[pos] = img.mul_(255.0).round_().div_(127.5).sub_(1.0)
        return out

    def _render_order(self, idx: torch.Tensor) -> torch.Tensor:
        """Positions of ``idx`` grouped into chunks of similar pose.

        Facial parts are drawn in windows that bound them for a whole chunk, so chunks of
        similar yaw and pitch draw smaller windows. Pixels do not depend on the chunk, so this
        changes the speed only. About sqrt(#chunks) groups of chunks share a yaw range each and
        split it by pitch.
        """
        n = idx.numel()
        if n <= RENDER_CHUNK:
            return torch.arange(n)
        by_yaw = torch.argsort(self._imp["yaw"][idx], stable=True)
        chunks = -(-n // RENDER_CHUNK)
        group = RENDER_CHUNK * -(-chunks // max(1, math.isqrt(chunks)))  # ~sqrt(chunks) groups
        pitch = self._imp["pitch"][idx]
        parts = []
        for start in range(0, n, group):
            g = by_yaw[start : start + group]
            parts.append(g[torch.argsort(pitch[g], stable=True)])
        return torch.cat(parts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = self._index(i)
        return self._images(torch.tensor([k]))[0], self.labels[k].clone()

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A batch of samples rendered together: ``DataLoader`` calls this (torch >= 2.1) with
        a whole batch of indices, so loading is vectorized; the samples equal ``self[i]``."""
        idx = self._indices(indices)
        images, labels = self._images(idx), self.labels[idx]
        return list(zip(images.unbind(0), labels.unbind(0)))

    def _images(self, idx: torch.Tensor) -> torch.Tensor:
        """float32 images of (valid, non-negative) indices, from the cache when there is one."""
        cached = self._cache.get(torch.float32)
        if cached is not None:
            return cached[idx]
        cached = self._cache.get(torch.uint8)
        if cached is not None:
            return to_float(cached[idx])
        return self.render(idx)

    def materialize(self, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
        """All images as one tensor (N*M, 3, size, size), cached: uint8 0..255 or float in [-1, 1].

        Treat the result as read-only (it is the cache).
        """
        if dtype not in (torch.uint8, torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise FacelabTypeError(f"materialize: expected uint8 or a float dtype, got {dtype}")
        if dtype in self._cache:
            return self._cache[dtype]
        if dtype == torch.uint8:
            out = torch.empty(len(self), 3, self.size, self.size, dtype=torch.uint8)
            step = RENDER_CHUNK * 8
            for start in range(0, len(self), step):
                stop = min(start + step, len(self))
                out[start:stop] = to_uint8(self.render(slice(start, stop)))
        else:
            out = to_float(self.materialize(torch.uint8)).to(dtype)
        self._cache[dtype] = out
        return out

    # ---- attributes
    def attributes(self, i: int) -> dict[str, float | int]:
        """Nuisance and identity attributes of sample ``i`` (see ``ATTRIBUTE_NAMES``)."""
        k = self._index(i)
        batch = self.batch_attributes([k])
        return {
            name: (int(v[0]) if name in _INT_ATTRIBUTES else float(v[0]))
            for name, v in batch.items()
        }

    def batch_attributes(
        self, indices: Sequence[int] | torch.Tensor | slice | None = None
    ) -> dict[str, torch.Tensor]:
        """Attributes of many samples (all when ``indices`` is None): name -> (B,) tensor.

        Angles are in degrees (yaw > 0: the head turns towards image right; light azimuth 0 =
        frontal, elevation > 0 = from above); ``occlusion_type`` indexes ``OCCLUSION_TYPES``;
        ``skin_tone`` runs from 0 (lightest) to 1 (darkest) and ``skin_tone_group`` is its sixth.
        """
        idx = torch.arange(len(self)) if indices is None else self._indices(indices)
        lab = self.labels[idx]
        out: dict[str, torch.Tensor] = {
            "identity": lab + self.identity_offset,
            "label": lab.clone(),
            "image": idx % self.images_per_identity,
        }
        for name in IDENTITY_ATTRIBUTES:
            v = self._idp[_IDENTITY_SOURCE[name]][lab]
            out[name] = v.long() if name in _INT_ATTRIBUTES else v.clone()
        for name in IMAGE_ATTRIBUTES:
            v = self._imp[name][idx]
            out[name] = v.long() if name in _INT_ATTRIBUTES else v.clone()
        return out

    def identity_parameters(self) -> torch.Tensor:
        """(N, P) float32: every identity's shape and colour parameters, one row per identity."""
        cols = [v.reshape(self.num_identities, -1).float() for _, v in sorted(self._idp.items())]
        return torch.cat(cols, 1)

    # ---- export
    def write_folders(self, root: str | Path, overwrite: bool = False) -> Path:
        """Write ``root/<label:05d>/<image:03d>.png`` (RGB, 8 bit); returns ``root``.

        Folder names are dataset labels (0..N-1), so a reader that sorts folder names recovers
        ``labels``. Existing files are not replaced unless ``overwrite``.
        """
        from PIL import Image

        root = Path(root)
        m = self.images_per_identity
        step = RENDER_CHUNK * 4
        for start in range(0, len(self), step):
            stop = min(start + step, len(self))
            u8 = to_uint8(self.render(slice(start, stop))).permute(0, 2, 3, 1).numpy()
            for off in range(stop - start):
                k, j = divmod(start + off, m)
                path = root / f"{k:05d}" / f"{j:03d}.png"
                if path.exists() and not overwrite:
                    raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(u8[off]).save(path)
        return root


# --------------------------------------------------------------------------------------------
# verification pairs


def _pair_keys(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return lo * n + hi


def _sample_unique(draw, need: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unique pair keys from a sampler ``draw(count) -> (a, b)`` (rejection, order random)."""
    keys = np.zeros(0, dtype=np.int64)
    while keys.size < need:
        a, b = draw(2 * (need - keys.size) + 16)
        new = _pair_keys(a, b, n)
        keys = np.concatenate([keys, new])
        _, first = np.unique(keys, return_index=True)
        keys = keys[np.sort(first)]
    return keys[:need]


def make_pairs(
    dataset: ToyFaces | torch.Tensor, num_pairs: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Verification pairs: ``num_pairs // 2`` genuine, the rest impostor, no pair repeated.

    Args:
        dataset: a ToyFaces (or anything with a ``labels`` tensor) or a 1-D label tensor.
        num_pairs: total number of pairs (at least 2).
        seed: the pairs are a deterministic function of (labels, num_pairs, seed).

    Returns ``(idx1, idx2, issame)``: int64 sample indices (idx1 < idx2) and a bool tensor,
    in random order.
    """
    labels = dataset if isinstance(dataset, torch.Tensor) else getattr(dataset, "labels", None)
    if not isinstance(labels, torch.Tensor):
        raise FacelabTypeError(
            f"make_pairs: expected a dataset with a labels tensor or a label tensor, got "
            f"{type(dataset).__name__}"
        )
    if labels.dim() != 1 or labels.is_floating_point():
        raise ShapeError(
            f"make_pairs: expected 1-D integer labels, got {labels.dtype} {tuple(labels.shape)}"
        )
    num_pairs = _as_int(num_pairs, "num_pairs")
    seed = _as_int(seed, "seed")
    if num_pairs < 2:
        raise RangeError(f"num_pairs: expected at least 2, got {num_pairs}")
    lab = labels.cpu().numpy().astype(np.int64)
    n = lab.size
    order = np.argsort(lab, kind="stable")
    classes, starts, counts = np.unique(lab[order], return_index=True, return_counts=True)
    n_gen, n_imp = num_pairs // 2, num_pairs - num_pairs // 2
    gen_pool = int((counts * (counts - 1) // 2).sum())
    imp_pool = int((n * n - (counts**2).sum()) // 2)
    if n_gen > gen_pool or n_imp > imp_pool:
        raise RangeError(
            f"make_pairs: asked for {n_gen} genuine and {n_imp} impostor pairs, but these labels "
            f"allow only {gen_pool} genuine and {imp_pool} impostor pairs"
        )
    rng = np.random.default_rng([seed, 0x9A125])
    cls_of = np.searchsorted(classes, lab)  # class index of every sample
    pos_in_class = np.empty(n, dtype=np.int64)
    pos_in_class[order] = np.arange(n) - np.repeat(starts, counts)
    multi = np.flatnonzero(counts[cls_of] >= 2)

    def draw_genuine(count: int):
        a = multi[rng.integers(0, multi.size, count)]
        c = cls_of[a]
        step = 1 + rng.integers(0, counts[c] - 1)
        b = order[starts[c] + (pos_in_class[a] + step) % counts[c]]
        return a, b

    def draw_impostor(count: int):
        a = rng.integers(0, n, count)
        b = rng.integers(0, n, count)
        keep = lab[a] != lab[b]
        return a[keep], b[keep]

    def enumerate_all(same: bool) -> np.ndarray:
        i, j = np.triu_indices(n, 1)
        keep = (lab[i] == lab[j]) if same else (lab[i] != lab[j])
        return i[keep] * n + j[keep]

    parts = []
    for need, pool, same, draw in (
        (n_gen, gen_pool, True, draw_genuine),
        (n_imp, imp_pool, False, draw_impostor),
    ):
        if need == 0:
            parts.append(np.zeros(0, dtype=np.int64))
        elif 4 * need >= pool:  # dense: enumerate and choose without replacement
            allp = enumerate_all(same)
            parts.append(allp[rng.choice(allp.size, need, replace=False)])
        else:
            parts.append(_sample_unique(draw, need, n, rng))
    keys = np.concatenate(parts)
    same = np.concatenate([np.ones(n_gen, dtype=bool), np.zeros(n_imp, dtype=bool)])
    perm = rng.permutation(keys.size)
    keys, same = keys[perm], same[perm]
    return (
        torch.from_numpy(keys // n),
        torch.from_numpy(keys % n),
        torch.from_numpy(same),
    )
