"""The toy edition: FRCSyn on CPU with toyfaces.

Evaluation sets are built from *held-out* toyfaces people (global identities from
``TOY_EVAL_OFFSET`` on, never used for training), each standing in for a challenge set:

=============  ====================  ===================================================
set            stands in for         pairs
=============  ====================  ===================================================
``toy-bupt``   BUPT-BalancedFace     balanced over toyfaces' six skin-tone groups: the same
                                     number of people per group, genuine and impostor pairs
                                     inside each group (like BUPT / RFW), group on each pair
``toy-cfpfp``  CFP-FP                frontal (|yaw| <= 10 deg) against profile-ish
                                     (|yaw| >= 25 deg) images
``toy-rof``    ROF (occluded faces)  unoccluded against sunglasses / mask / hand occluders
``toy-agedb``  AgeDB (stand-in)      toyfaces have no age: mild lighting against strong side
                                     light (|azimuth| >= 45 deg, strength >= 0.4)
=============  ====================  ===================================================

The hard sets pick images by their nuisance parameters, which toyfaces computes without
rendering; only the chosen images are rendered. Genuine and impostor pairs alternate, so every
fold of the 10-fold protocol holds both.

The real-data baseline is ArcFace trained on *real toyfaces* (the default training people,
default nuisance) of the same size as the synthetic set. The *synthetic stand-in*
(:func:`write_toy_standin`) is what a generator would hand over in the toy world: other toyfaces
people written as identity folders with a manifest, by default with half the intra-class
nuisance (``difficulty="easy"``), the typical weakness of generated training sets. It exists so
that the runner and the cross-dataset table can be tried without a generator installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from facelab.core.errors import RangeError, UnknownNameError
from facelab.frcsyn.evalsets import PairSet
from facelab.frcsyn.sources import MANIFEST_NAME, write_manifest

#: first global toyfaces identity of the toy edition's evaluation people (training sets use
#: identities below 10^6; core's own held-out toy set starts at 10^6)
TOY_EVAL_OFFSET = 2_000_000
_SET_STRIDE = 100_000  # each toy set draws its people from its own block of identities
#: first identity of the synthetic stand-in's people (disjoint from the real training people
#: as long as the real set has fewer than 500,000 identities)
STANDIN_OFFSET = 500_000
TOY_SETS = ("bupt", "cfpfp", "rof", "agedb")
ToySetName = Literal["bupt", "cfpfp", "rof", "agedb"]
STANDS_IN_FOR = {
    "bupt": "BUPT-BalancedFace",
    "cfpfp": "CFP-FP",
    "rof": "ROF",
    "agedb": "AgeDB",
}
_SUNGLASSES_MASK_HAND = (2, 3, 4)  # indices into toyfaces' OCCLUSION_TYPES


@dataclass
class ToyEditionConfig:
    """Sizes of the toy edition's evaluation sets."""

    image_size: int = 56
    """image side (``run``, ``table``, ``eval`` and ``leakage`` use the recognizer's input size)"""
    seed: int = 0
    sets: tuple[str, ...] = TOY_SETS
    """which sets to build: bupt, cfpfp, rof, agedb"""
    group_identities: int = 20
    """people per skin-tone group in toy-bupt (6 groups)"""
    group_images: int = 6
    """images per person in toy-bupt"""
    group_pairs: int = 400
    """pairs per group in toy-bupt (half genuine)"""
    hard_identities: int = 100
    """people in each hard set"""
    hard_pairs: int = 800
    """pairs of each hard set (half genuine; fewer if the people allow fewer)"""
    candidates: int = 64
    """nuisance draws per person the hard sets choose from (only chosen images are rendered)"""

    def __post_init__(self) -> None:
        self.sets = tuple(self.sets)
        bad = [s for s in self.sets if s not in TOY_SETS]
        if bad or not self.sets:
            raise UnknownNameError(
                f"sets: expected names from {list(TOY_SETS)}, got {list(self.sets)}"
            )
        for name in ("group_identities", "group_images", "hard_identities", "candidates"):
            if int(getattr(self, name)) < 2:
                raise RangeError(f"{name}: expected an int >= 2, got {getattr(self, name)}")
        for name in ("group_pairs", "hard_pairs"):
            if int(getattr(self, name)) < 20:
                raise RangeError(f"{name}: expected at least 20 pairs, got {getattr(self, name)}")
        k, m = int(self.group_identities), int(self.group_images)
        if self.group_pairs // 2 > k * m * (m - 1) // 2:
            raise RangeError(
                f"group_pairs: {self.group_pairs // 2} genuine pairs per group asked for, but "
                f"{k} people x {m} images allow {k * m * (m - 1) // 2}; raise group_images or "
                "group_identities, or lower group_pairs"
            )


def _toyfaces(n: int, m: int, cfg: ToyEditionConfig, offset: int, difficulty="default"):
    from facelab.core.data.toyfaces import ToyFaces

    return ToyFaces(
        n, m, size=cfg.image_size, seed=cfg.seed, identity_offset=offset, difficulty=difficulty
    )


def _alternate(gen: np.ndarray, imp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (k, 2) genuine and impostor, interleaved g, i, g, i ... -> (pairs, issame)."""
    k = min(len(gen), len(imp))
    both = np.stack([gen[:k], imp[:k]], 1).reshape(-1, 2)
    pairs = np.concatenate([both, gen[k:], imp[k:]])
    same = np.concatenate(
        [np.tile([True, False], k), np.ones(len(gen) - k, bool), np.zeros(len(imp) - k, bool)]
    )
    return pairs, same


def _render_pairs(
    ds, pairs: np.ndarray, issame: np.ndarray, name: str, groups=None, stands_in_for=None
) -> PairSet:
    """Render each image named by ``pairs`` (dataset indices) once; build the PairSet."""
    used, inv = np.unique(pairs.reshape(-1), return_inverse=True)
    inv = inv.reshape(-1, 2)
    images = ds.render(torch.from_numpy(used))
    attrs = {k: v.numpy() for k, v in ds.batch_attributes(torch.from_numpy(used)).items()}
    return PairSet(
        name,
        images,
        inv[:, 0],
        inv[:, 1],
        issame,
        groups=groups,
        identities=attrs["identity"],
        stands_in_for=stands_in_for,
        attributes=attrs,
    )


def balanced_set(cfg: ToyEditionConfig) -> PairSet:
    """``toy-bupt``: the same number of held-out people in each skin-tone group; pairs inside
    groups (genuine: two images of one person; impostor: two people of the group)."""
    from facelab.core.data.toyfaces import SKIN_TONE_GROUPS, make_pairs

    k, m = cfg.group_identities, cfg.group_images
    offset = TOY_EVAL_OFFSET
    pool = max(2 * k * SKIN_TONE_GROUPS, 64)
    while True:  # grow the candidate people until every group has k of them (deterministic)
        probe = _toyfaces(pool, 1, cfg, offset)
        tone = probe.batch_attributes()["skin_tone_group"].numpy()
        counts = np.bincount(tone, minlength=SKIN_TONE_GROUPS)
        if counts.min() >= k:
            break
        pool *= 2
    chosen = np.concatenate([np.flatnonzero(tone == g)[:k] for g in range(SKIN_TONE_GROUPS)])
    n_people = int(chosen.max()) + 1
    ds = _toyfaces(n_people, m, cfg, offset)
    rng = np.random.default_rng([cfg.seed, 0xB0B7])
    all_pairs, all_same, all_groups = [], [], []
    for g in range(SKIN_TONE_GROUPS):
        people = chosen[tone[chosen] == g]
        samples = (people[:, None] * m + np.arange(m)[None, :]).reshape(-1)
        labels = torch.from_numpy(np.repeat(np.arange(people.size), m))
        i1, i2, same = make_pairs(labels, cfg.group_pairs, seed=cfg.seed * 7919 + g)
        all_pairs.append(np.stack([samples[i1.numpy()], samples[i2.numpy()]], 1))
        all_same.append(same.numpy())
        all_groups.append(np.full(same.numel(), f"skin{g + 1}"))
    pairs = np.concatenate(all_pairs)
    same = np.concatenate(all_same)
    groups = np.concatenate(all_groups)
    order = rng.permutation(len(same))  # groups mixed across the folds
    return _render_pairs(
        ds, pairs[order], same[order], "toy-bupt", groups[order], STANDS_IN_FOR["bupt"]
    )


def _conditions(name: str, a: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (reference image, probe image) over a candidate pool's attributes."""
    if name == "cfpfp":
        yaw = a["yaw"].abs().numpy()
        return yaw <= 10.0, yaw >= 25.0
    if name == "rof":
        occ = a["occlusion_type"].numpy()
        return occ == 0, np.isin(occ, _SUNGLASSES_MASK_HAND)
    if name == "agedb":
        az = a["light_azimuth"].abs().numpy()
        strength = a["light_strength"].numpy()
        log_exp = np.abs(np.log(a["exposure"].numpy()))
        return (az <= 20.0) & (log_exp <= 0.15), (az >= 45.0) & (strength >= 0.4)
    raise UnknownNameError(f"unknown toy set {name!r}")  # pragma: no cover


def hard_set(name: ToySetName, cfg: ToyEditionConfig) -> PairSet:
    """``toy-cfpfp`` / ``toy-rof`` / ``toy-agedb``: reference images against hard probes."""
    if name not in ("cfpfp", "rof", "agedb"):
        raise UnknownNameError(f"hard set: expected 'cfpfp', 'rof' or 'agedb', got {name!r}")
    offset = TOY_EVAL_OFFSET + _SET_STRIDE * (1 + TOY_SETS.index(name))
    per = 2  # reference and probe images per person
    n, c = cfg.hard_identities, cfg.candidates
    pool = math.ceil(1.25 * n) + 4
    ds = _toyfaces(pool, c, cfg, offset)
    ref_ok, probe_ok = _conditions(name, ds.batch_attributes())
    ref_ok, probe_ok = ref_ok.reshape(pool, c), probe_ok.reshape(pool, c)
    good = np.flatnonzero((ref_ok.sum(1) >= per) & (probe_ok.sum(1) >= per))[:n]
    if good.size < n:
        raise RangeError(
            f"toy-{name}: only {good.size} of {pool} people have {per} reference and {per} probe "
            f"images among {c} candidates; raise candidates"
        )
    refs = np.stack([np.flatnonzero(ref_ok[p])[:per] + p * c for p in good])  # (n, per)
    probes = np.stack([np.flatnonzero(probe_ok[p])[:per] + p * c for p in good])
    rng = np.random.default_rng([cfg.seed, 0x4A2D, TOY_SETS.index(name)])
    gen = np.stack(
        [np.repeat(refs, per, axis=1).reshape(-1), np.tile(probes, (1, per)).reshape(-1)], 1
    )
    n_gen = min(cfg.hard_pairs // 2, len(gen))
    gen = gen[rng.permutation(len(gen))[:n_gen]]
    n_imp = cfg.hard_pairs - n_gen
    a = rng.integers(0, n, 4 * n_imp)
    b = rng.integers(0, n, 4 * n_imp)
    keep = a != b
    a, b = a[keep][:n_imp], b[keep][:n_imp]
    imp = np.stack(
        [refs[a, rng.integers(0, per, a.size)], probes[b, rng.integers(0, per, b.size)]], 1
    )
    pairs, same = _alternate(gen, imp)
    return _render_pairs(ds, pairs, same, f"toy-{name}", stands_in_for=STANDS_IN_FOR[name])


def toy_eval_sets(cfg: ToyEditionConfig | None = None) -> list[PairSet]:
    """The toy edition's evaluation sets, in ``cfg.sets`` order."""
    cfg = cfg or ToyEditionConfig()
    return [balanced_set(cfg) if s == "bupt" else hard_set(s, cfg) for s in cfg.sets]  # type: ignore[arg-type]


def toy_real_dataset(num_images: int, num_identities: int, image_size: int, seed: int = 0):
    """Real toyfaces of the given size (the real-data baseline and the toy CASIA stand-in):
    ``num_identities`` training people with ``ceil(num_images / num_identities)`` images each,
    cut to exactly ``num_images`` images. Returns ``(dataset, num_classes)``."""
    from torch.utils.data import Subset

    from facelab.core.data.toyfaces import ToyFaces

    if num_identities < 1 or num_images < num_identities:
        raise RangeError(
            f"toy real dataset: expected num_images >= num_identities >= 1, got {num_images} "
            f"images of {num_identities} identities"
        )
    per = -(-num_images // num_identities)
    ds = ToyFaces(num_identities, per, size=image_size, seed=seed)
    if len(ds) == num_images:
        return ds, num_identities
    # take image 0 of every person, then image 1 of every person ...: each keeps one at least
    flat = np.arange(len(ds))
    image, person = flat % per, flat // per
    keep = np.sort(np.argsort(image * num_identities + person, kind="stable")[:num_images])
    return Subset(ds, keep.tolist()), num_identities


def write_toy_standin(
    root: str | Path,
    num_identities: int = 200,
    images_per_identity: int = 20,
    *,
    image_size: int = 56,
    seed: int = 0,
    difficulty: float | str = "easy",
    identity_offset: int = STANDIN_OFFSET,
    name: str = "toyfaces-standin",
    overwrite: bool = False,
) -> Path:
    """Write a synthetic-set stand-in: toyfaces identity folders plus a ``manifest.json``.

    The people (``identity_offset`` on) differ from the real training people and from every
    evaluation person; ``difficulty`` sets their intra-class nuisance (``"easy"``: half of the
    real data's). Returns ``root``.
    """
    from facelab.core.data.toyfaces import ToyFaces
    from facelab.core.errors import FacelabError

    root = Path(root)
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise FacelabError(
            f"{root}: expected a new or empty folder for the stand-in, it holds files already "
            "(pass overwrite=True / --overwrite to replace them)"
        )
    ds = ToyFaces(
        num_identities,
        images_per_identity,
        size=image_size,
        seed=seed,
        identity_offset=identity_offset,
        difficulty=difficulty,
    )
    ds.write_folders(root, overwrite=overwrite)
    write_manifest(
        root / MANIFEST_NAME,
        len(ds),
        num_identities,
        real_images=0,
        generator=name,
        toy_standin={
            "seed": seed,
            "identity_offset": identity_offset,
            "difficulty": ds.difficulty,
            "image_size": image_size,
        },
    )
    return root
