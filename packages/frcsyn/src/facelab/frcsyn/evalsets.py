"""Evaluation sets: pair lists (FRCSyn's ``img1;img2`` files), insightface ``.bin`` sets and the
toy edition's sets, all as one :class:`PairSet`.

FRCSyn hands participants comparison files with one ``img1;img2`` line per pair and keeps the
ground truth. Here the truth travels with the list: a third field ``label`` (1 = same person,
0 = different; ``true``/``false`` work too) and an optional fourth field ``group`` (the
demographic group of the pair, e.g. BUPT-BalancedFace's ``African_female``)::

    # img1;img2;label;group
    African/m.01/0001.jpg;African/m.01/0002.jpg;1;African_male
    African/m.01/0001.jpg;African/m.07/0003.jpg;0;African_male

or, for a challenge file without labels, a separate labels file with one 0/1 per line (and an
optional groups file with one group per line). Image paths are relative to ``root`` (default:
the list's folder) or absolute; every image is read once however many pairs name it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from facelab.core.errors import FormatError, RangeError, ShapeError

_TRUE = {"1", "true", "same", "yes"}
_FALSE = {"0", "false", "diff", "different", "no"}


@dataclass
class PairSet:
    """A verification set: pair ``k`` compares ``images[index1[k]]`` with ``images[index2[k]]``.

    ``images``: float32 (N, 3, H, W) in [-1, 1], each image once; ``issame``: (P,) bool;
    ``groups``: (P,) demographic group names or None; ``identities``: (N,) identity of each
    image when known (toy sets), used by the leakage check's report; ``stands_in_for``: the
    challenge set a toy set replaces (e.g. ``"CFP-FP"``); ``image_names``: file of each image
    (pair lists); ``attributes``: per-image toyfaces attributes (toy sets: ``identity``,
    ``image``, ``yaw``, ``occlusion_type`` ...), for analysis by condition.
    """

    name: str
    images: torch.Tensor
    index1: np.ndarray
    index2: np.ndarray
    issame: np.ndarray
    groups: np.ndarray | None = None
    identities: np.ndarray | None = None
    stands_in_for: str | None = None
    image_names: list[str] | None = field(default=None, repr=False)
    attributes: dict[str, np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dim() != 4:
            raise ShapeError(
                f"{self.name}: images: expected a (N, 3, H, W) tensor, got "
                f"{getattr(self.images, 'shape', type(self.images).__name__)}"
            )
        n = self.images.shape[0]
        self.index1 = np.asarray(self.index1, dtype=np.int64).reshape(-1)
        self.index2 = np.asarray(self.index2, dtype=np.int64).reshape(-1)
        self.issame = np.asarray(self.issame).reshape(-1)
        if self.issame.dtype != np.bool_:
            if not np.isin(self.issame, (0, 1)).all():
                raise RangeError(f"{self.name}: issame: expected 0/1 or bool labels")
            self.issame = self.issame.astype(bool)
        p = self.index1.size
        if self.index2.size != p or self.issame.size != p:
            raise ShapeError(
                f"{self.name}: expected as many index1, index2 and issame entries, got "
                f"{self.index1.size}, {self.index2.size} and {self.issame.size}"
            )
        if p == 0:
            raise ShapeError(f"{self.name}: expected at least one pair, got none")
        for nm, idx in (("index1", self.index1), ("index2", self.index2)):
            if idx.min() < 0 or idx.max() >= n:
                raise RangeError(
                    f"{self.name}: {nm}: expected indices in [0, {n}), got {idx.min()}..{idx.max()}"
                )
        n_gen = int(self.issame.sum())
        if n_gen == 0 or n_gen == p:
            raise RangeError(
                f"{self.name}: expected genuine and impostor pairs, got {n_gen} genuine and "
                f"{p - n_gen} impostor"
            )
        if self.groups is not None:
            self.groups = np.asarray(self.groups).astype(str).reshape(-1)
            if self.groups.size != p:
                raise ShapeError(
                    f"{self.name}: groups: expected one group per pair ({p}), got {self.groups.size}"
                )
        if self.identities is not None:
            self.identities = np.asarray(self.identities).reshape(-1)
            if self.identities.size != n:
                raise ShapeError(
                    f"{self.name}: identities: expected one per image ({n}), got "
                    f"{self.identities.size}"
                )

    @property
    def num_pairs(self) -> int:
        return int(self.issame.size)

    @property
    def group_names(self) -> list[str]:
        return [] if self.groups is None else sorted(set(self.groups.tolist()))

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def describe(self) -> str:
        extra = f", {len(self.group_names)} groups" if self.groups is not None else ""
        alias = f" (stands in for {self.stands_in_for})" if self.stands_in_for else ""
        return (
            f"{self.name}{alias}: {self.num_pairs} pairs ({int(self.issame.sum())} genuine), "
            f"{self.images.shape[0]} images{extra}"
        )


def interleaved(name: str, images: torch.Tensor, issame, **kwargs) -> PairSet:
    """A PairSet from insightface's interleaved layout: pair k = images 2k and 2k + 1."""
    n = int(np.asarray(issame).size)
    if images.shape[0] != 2 * n:
        raise ShapeError(f"{name}: expected {2 * n} images for {n} pairs, got {images.shape[0]}")
    idx = np.arange(n, dtype=np.int64) * 2
    return PairSet(name, images, idx, idx + 1, np.asarray(issame, dtype=bool), **kwargs)


def from_bin(
    path: str | os.PathLike[str], image_size: int = 112, *, resize: bool = False
) -> PairSet:
    """An insightface ``.bin`` (lfw, cfp_fp, agedb_30 ...) through core's restricted reader."""
    from facelab.core.data.verification import load_bin

    images, issame = load_bin(path, image_size=(image_size, image_size), resize=resize)
    return interleaved(Path(path).stem, images, issame.numpy())


def _parse_label(text: str, where: str) -> bool:
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise FormatError(f"{where}: expected a label 0/1 (or true/false), got {text!r}")


def _read_lines(path: Path, what: str) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: cannot read {what}: {exc}") from exc
    out = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append((n, line))
    return out


def _load_images(paths: list[Path], image_size: int, resize: bool, where: str) -> torch.Tensor:
    from facelab.core.data.folders import load_image

    out = torch.empty(len(paths), 3, image_size, image_size)
    for i, p in enumerate(paths):
        img = load_image(p)
        if tuple(img.shape[1:]) != (image_size, image_size):
            if not resize:
                raise ShapeError(
                    f"{where}: image {p} is {img.shape[1]}x{img.shape[2]}, expected "
                    f"{image_size}x{image_size} (aligned crops; pass resize=True to resize)"
                )
            img = torch.nn.functional.interpolate(
                img[None], size=(image_size, image_size), mode="bilinear", antialias=True
            )[0].clamp_(-1.0, 1.0)
        out[i] = img
    return out


def read_pair_list(
    path: str | os.PathLike[str],
    root: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    labels: str | os.PathLike[str] | None = None,
    groups: str | os.PathLike[str] | None = None,
    image_size: int = 112,
    resize: bool = False,
) -> PairSet:
    """Read an FRCSyn-style pair list (``img1;img2[;label[;group]]`` lines; module doc).

    ``labels`` / ``groups``: files with one value per pair, for lists that carry only the two
    image paths. A line naming a missing image, a malformed line or a label count that does
    not match the pairs is a ``FormatError`` naming the file and line.
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    lines = _read_lines(path, "pair list")
    if not lines:
        raise FormatError(f"{path}: empty pair list")
    ext_labels = None if labels is None else _read_lines(Path(labels), "labels file")
    ext_groups = None if groups is None else _read_lines(Path(groups), "groups file")
    for what, ext in (("labels", ext_labels), ("groups", ext_groups)):
        if ext is not None and len(ext) != len(lines):
            raise FormatError(
                f"{what} file: expected one line per pair ({len(lines)} in {path}), got {len(ext)}"
            )
    pos: dict[str, int] = {}
    files: list[Path] = []
    i1: list[int] = []
    i2: list[int] = []
    same: list[bool] = []
    grp: list[str] = []
    for k, (n, line) in enumerate(lines):
        where = f"{path} line {n}"
        fields = [f.strip() for f in line.split(";")]
        if len(fields) < 2 or len(fields) > 4 or not fields[0] or not fields[1]:
            raise FormatError(f"{where}: expected 'img1;img2[;label[;group]]', got {line!r}")
        if len(fields) >= 3:
            same.append(_parse_label(fields[2], where))
        elif ext_labels is not None:
            same.append(_parse_label(ext_labels[k][1], f"{labels} line {ext_labels[k][0]}"))
        else:
            raise FormatError(
                f"{where}: no label: give 'img1;img2;label' lines or a labels file (the "
                "challenge's own comparison files carry no ground truth)"
            )
        if len(fields) == 4:
            grp.append(fields[3])
        elif ext_groups is not None:
            grp.append(ext_groups[k][1])
        elif grp:
            raise FormatError(f"{where}: expected a group field like the lines before it")
        for f, dst in ((fields[0], i1), (fields[1], i2)):
            if f not in pos:
                p = Path(f) if os.path.isabs(f) else base / f
                if not p.is_file():
                    raise FormatError(f"{where}: image {p} does not exist")
                pos[f] = len(files)
                files.append(p)
            dst.append(pos[f])
    if grp and len(grp) != len(same):
        raise FormatError(f"{path}: some lines have a group field and some do not")
    images = _load_images(files, image_size, resize, str(path))
    return PairSet(
        name or path.stem,
        images,
        np.array(i1),
        np.array(i2),
        np.array(same),
        groups=np.array(grp) if grp else None,
        image_names=[str(f) for f in pos],
    )


def parse_set_spec(spec: str) -> tuple[str | None, str]:
    """``"name=path"`` -> ``(name, path)``; a bare path -> ``(None, path)``."""
    if "=" in spec:
        name, _, p = spec.partition("=")
        if not name or not p:
            raise FormatError(f"evaluation set: expected 'name=path' or a path, got {spec!r}")
        return name, p
    return None, spec


def load_eval_sets(
    bins: tuple[str, ...] = (),
    pairs: tuple[str, ...] = (),
    *,
    image_size: int = 112,
    resize: bool = False,
) -> list[PairSet]:
    """``.bin`` files and pair lists (each ``path`` or ``name=path``) as PairSets."""
    sets: list[PairSet] = []
    for spec in bins:
        name, p = parse_set_spec(spec)
        s = from_bin(p, image_size, resize=resize)
        s.name = name or s.name
        sets.append(s)
    for spec in pairs:
        name, p = parse_set_spec(spec)
        sets.append(read_pair_list(p, name=name, image_size=image_size, resize=resize))
    names = [s.name for s in sets]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FormatError(f"evaluation sets: names must be unique, got {dup} more than once")
    return sets
