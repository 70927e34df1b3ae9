"""IJB-B / IJB-C 1:1 template verification (insightface ``arcface_torch/eval_ijbc.py`` layout).

Folder layout (``root`` is the ``IJBC`` or ``IJBB`` folder of insightface's IJB release)::

    root/meta/ijbc_face_tid_mid.txt          "<image> <template id> <media id>" per image
    root/meta/ijbc_template_pair_label.txt   "<template 1> <template 2> <label 0/1>" per pair
    root/meta/ijbc_name_5pts_score.txt       "<image> x1 y1 ... x5 y5 <faceness>" per image
    root/loose_crop/<image>                  the loosely cropped images

Line ``i`` of the two per-image files describes the same image (insightface indexes features by
line). Template features: image features are averaged within each media (a video's frames or
one still), the media features summed per template, and the sum L2-normalized; the score of a
template pair is the cosine of the two template features.

insightface's reported numbers use raw (unnormalized) flip-summed features, so the feature norm
weights the average ("N1"), and also multiply by the detector's faceness score ("D1"). Here both
are options, off by default: each image feature is normalized first unless
``norm_weighting=True``, and faceness weighting is ``faceness_weighting=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facelab.core.errors import (
    FacelabTypeError,
    FormatError,
    KeyMismatchError,
    RangeError,
    ShapeError,
    ZeroVectorError,
)
from facelab.core.eval.metrics import (
    IJB_FARS,
    TarRule,
    check_features,
    check_labels,
    check_rates,
    check_rule,
    l2_normalize,
    pair_scores,
    roc,
    to_numpy,
)

IJB_NAMES = ("IJBB", "IJBC")


@dataclass(frozen=True)
class IJBMeta:
    """The IJB-B/C protocol files, one entry per image line and per template pair."""

    name: str
    root: Path
    image_names: np.ndarray  # (N,) str
    template_ids: np.ndarray  # (N,) int64
    media_ids: np.ndarray  # (N,) int64
    landmarks: np.ndarray  # (N, 5, 2) float32, in loose-crop pixel coordinates
    faceness: np.ndarray  # (N,) float32
    pair_t1: np.ndarray  # (P,) int64
    pair_t2: np.ndarray  # (P,) int64
    pair_labels: np.ndarray  # (P,) bool

    @property
    def image_dir(self) -> Path:
        return self.root / "loose_crop"

    @property
    def num_images(self) -> int:
        return int(self.image_names.shape[0])

    @property
    def num_pairs(self) -> int:
        return int(self.pair_t1.shape[0])


def _meta_dir(root: Path, name: str) -> Path:
    for cand in (root / "meta", root / name / "meta"):
        if cand.is_dir():
            return cand
    raise FormatError(
        f"root: expected an IJB folder with a meta/ sub-folder ({root}/meta or "
        f"{root}/{name}/meta), found neither"
    )


def _read_columns(path: Path, ncols: int, what: str) -> list[np.ndarray]:
    """Whitespace-separated text columns (strings); checks every line has ``ncols`` fields."""
    if not path.is_file():
        raise FormatError(f"{what}: file not found: {path}")
    rows = path.read_text().split("\n")
    rows = [r for r in rows if r.strip()]
    if not rows:
        raise FormatError(f"{what}: {path} is empty")
    fields = [r.split() for r in rows]
    bad = next((i for i, f in enumerate(fields) if len(f) != ncols), None)
    if bad is not None:
        raise FormatError(
            f"{what}: {path} line {bad + 1}: expected {ncols} fields, got {len(fields[bad])}: "
            f"{rows[bad][:80]!r}"
        )
    cols = np.array(fields, dtype=object).T
    return list(cols)


def _ints(col: np.ndarray, path: Path, what: str) -> np.ndarray:
    try:
        return col.astype(np.int64)
    except ValueError as exc:
        raise FormatError(f"{what}: {path}: expected integer fields: {exc}") from None


def _read_int_table(path: Path, ncols: int, what: str) -> np.ndarray:
    """A large all-integer table (the 15M-line pair file) parsed by numpy's C reader."""
    if not path.is_file():
        raise FormatError(f"{what}: file not found: {path}")
    try:
        a = np.loadtxt(path, dtype=np.int64, ndmin=2)
    except ValueError as exc:
        raise FormatError(f"{what}: {path}: expected {ncols} integers per line: {exc}") from None
    if a.shape[0] == 0:
        raise FormatError(f"{what}: {path} is empty")
    if a.shape[1] != ncols:
        raise FormatError(
            f"{what}: {path}: expected {ncols} integers per line, got {a.shape[1]} columns"
        )
    return a


def load_ijb_meta(root: str | Path, name: str = "IJBC") -> IJBMeta:
    """Read the IJB-B/C meta files of ``root`` (see the module doc for the layout)."""
    name = name.upper()
    if name not in IJB_NAMES:
        raise RangeError(f"name: expected one of {list(IJB_NAMES)}, got {name!r}")
    root = Path(root)
    meta = _meta_dir(root, name)
    root = meta.parent
    low = name.lower()

    p_tm = meta / f"{low}_face_tid_mid.txt"
    names_tm, tids, mids = _read_columns(p_tm, 3, "template/media list")
    tids = _ints(tids, p_tm, "template/media list")
    mids = _ints(mids, p_tm, "template/media list")

    p_lm = meta / f"{low}_name_5pts_score.txt"
    cols = _read_columns(p_lm, 12, "landmark list")
    names_lm = cols[0]
    try:
        nums = np.stack(cols[1:], axis=1).astype(np.float32)
    except ValueError as exc:
        raise FormatError(f"landmark list: {p_lm}: expected numbers: {exc}") from None
    if names_lm.shape[0] != names_tm.shape[0]:
        raise FormatError(
            f"landmark list: {p_lm} has {names_lm.shape[0]} lines but {p_tm} has "
            f"{names_tm.shape[0]}; line i of both must describe the same image"
        )
    mismatch = np.flatnonzero(names_lm != names_tm)
    if mismatch.size:
        i = int(mismatch[0])
        raise FormatError(
            f"landmark list: line {i + 1} names {names_lm[i]!r} but {p_tm} line {i + 1} names "
            f"{names_tm[i]!r}; the two files must list the images in the same order"
        )

    p_pairs = meta / f"{low}_template_pair_label.txt"
    pairs = _read_int_table(p_pairs, 3, "template pair list")
    labels = pairs[:, 2]
    if not np.isin(labels, (0, 1)).all():
        raise FormatError(f"template pair list: {p_pairs}: expected labels 0/1 in column 3")
    known = np.unique(tids)
    for col, which in ((pairs[:, 0], "first"), (pairs[:, 1], "second")):
        missing = ~np.isin(col, known)
        if missing.any():
            raise KeyMismatchError(
                f"template pair list: {p_pairs}: {int(missing.sum())} pairs name a {which} "
                f"template that {p_tm} does not define, e.g. {col[missing][:3].tolist()}"
            )
    return IJBMeta(
        name=name,
        root=root,
        image_names=names_tm.astype(str),
        template_ids=tids,
        media_ids=mids,
        landmarks=nums[:, :10].reshape(-1, 5, 2),
        faceness=nums[:, 10],
        pair_t1=pairs[:, 0].copy(),
        pair_t2=pairs[:, 1].copy(),
        pair_labels=labels == 1,
    )


def aggregate_templates(
    features: Any,
    template_ids: Any,
    media_ids: Any,
    *,
    norm_weighting: bool = False,
    weights: Any | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """Template features from image features: mean per media, sum per template, normalize.

    ``features``: (N, D) image features (the flip-summed embeddings); ``template_ids``,
    ``media_ids``: (N,) integers. Each image feature is L2-normalized first unless
    ``norm_weighting`` (insightface's N1: the raw norm then weights the media mean); ``weights``
    (N,) multiplies each image feature (e.g. the faceness score, insightface's D1).
    Returns ``(template_features (T, D) float32 unit rows, template ids (T,) sorted)``.
    """
    f = check_features(features, "features")
    n = f.shape[0]
    tids = _id_array(template_ids, n, "template_ids")
    mids = _id_array(media_ids, n, "media_ids")
    # per-image scale: 1/norm (unless norm weighting) times the optional weight
    scale = np.ones(n, dtype=np.float64)
    if not norm_weighting:
        norms = torch.linalg.vector_norm(f, dim=1).double().numpy()
        if (norms <= 1e-12).any():
            raise ZeroVectorError(
                f"features: expected non-zero feature vectors, got {int((norms <= 1e-12).sum())} "
                "with norm 0"
            )
        scale /= norms
    if weights is not None:
        w = to_numpy(weights, "weights")
        if w.shape != (n,):
            raise ShapeError(f"weights: expected shape ({n},), got {w.shape}")
        if not np.isfinite(w).all() or (w < 0).any():
            raise RangeError("weights: expected finite non-negative values")
        scale *= w
    # Sort by (template, media); a media group is a run of equal (template, media): a media
    # that appears in two templates is averaged separately in each, as insightface does (it
    # groups the media inside each template). One float32 copy of the features, float64 sums.
    order = np.lexsort((mids, tids))
    t_sorted, m_sorted = tids[order], mids[order]
    new_media = np.r_[True, (t_sorted[1:] != t_sorted[:-1]) | (m_sorted[1:] != m_sorted[:-1])]
    media_start = np.flatnonzero(new_media)
    x = f.numpy()[order] * scale[order, None].astype(np.float32)
    media_sum = np.add.reduceat(x, media_start, axis=0, dtype=np.float64)
    del x
    counts = np.diff(np.r_[media_start, n])
    media_mean = media_sum / counts[:, None]
    media_tid = t_sorted[media_start]
    new_t = np.r_[True, media_tid[1:] != media_tid[:-1]]
    t_start = np.flatnonzero(new_t)
    tmpl = torch.from_numpy(np.add.reduceat(media_mean, t_start, axis=0))
    tmpl = l2_normalize(tmpl, "template features (sum of media features)")
    return tmpl.float(), media_tid[t_start]


def _id_array(x: Any, n: int, name: str) -> np.ndarray:
    a = to_numpy(x, name)
    if a.shape != (n,):
        raise ShapeError(f"{name}: expected shape ({n},) (one id per feature row), got {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise FacelabTypeError(f"{name}: expected integer ids, got dtype {a.dtype}")
    return a.astype(np.int64)


def template_pair_scores(
    template_features: Any,
    template_ids: Any,
    pair_t1: Any,
    pair_t2: Any,
    *,
    memory_mb: int = 256,
) -> np.ndarray:
    """Cosine score per template pair (bounded memory; see :func:`pair_scores`)."""
    t = check_features(template_features, "template_features")
    ids = to_numpy(template_ids, "template_ids").astype(np.int64)
    if ids.shape != (t.shape[0],):
        raise ShapeError(
            f"template_ids: expected shape ({t.shape[0]},) (one per template feature), got "
            f"{ids.shape}"
        )
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    if np.any(sorted_ids[1:] == sorted_ids[:-1]):
        raise KeyMismatchError("template_ids: expected unique template ids, got duplicates")
    idx = []
    for p, name in ((pair_t1, "pair_t1"), (pair_t2, "pair_t2")):
        a = to_numpy(p, name).astype(np.int64)
        pos = np.clip(np.searchsorted(sorted_ids, a), 0, sorted_ids.size - 1)
        missing = sorted_ids[pos] != a
        if missing.any():
            raise KeyMismatchError(
                f"{name}: {int(missing.sum())} pairs name templates without features, e.g. "
                f"{a[missing][:3].tolist()}"
            )
        idx.append(order[pos])
    return pair_scores(t, idx[0], idx[1], normalize=True, memory_mb=memory_mb)


def ijb_verification(
    features: Any,
    meta: IJBMeta,
    fars: Any = IJB_FARS,
    *,
    norm_weighting: bool = False,
    faceness_weighting: bool = False,
    rule: TarRule = "insightface",
    return_scores: bool = False,
) -> dict[float, float] | tuple[dict[float, float], np.ndarray]:
    """TAR at each FAR of the IJB 1:1 protocol: ``{far: tar}`` (optionally with the scores).

    ``features`` (N, D): one row per image line of ``meta`` (the flip-summed embeddings; pass
    them unnormalized when ``norm_weighting``).
    """
    check_rule(rule)
    fars = check_rates(fars, "fars")
    f = check_features(features, "features")
    if f.shape[0] != meta.num_images:
        raise ShapeError(
            f"features: expected one row per image of {meta.name} ({meta.num_images}), got "
            f"{f.shape[0]}"
        )
    labels = check_labels(meta.pair_labels, meta.num_pairs, "meta.pair_labels")
    tmpl, ids = aggregate_templates(
        f,
        meta.template_ids,
        meta.media_ids,
        norm_weighting=norm_weighting,
        weights=meta.faceness if faceness_weighting else None,
    )
    scores = template_pair_scores(tmpl, ids, meta.pair_t1, meta.pair_t2)
    tars = roc(scores, labels).tar_at_far(fars, rule)
    return (tars, scores) if return_scores else tars


class IJBImages(torch.utils.data.Dataset):
    """The loose crops of an IJB set, aligned to the ArcFace template with their 5 landmarks.

    Items are float (3, size, size) tensors in [-1, 1], in meta line order. Alignment uses
    ``facelab.core.data.align.align_faces`` (skimage similarity transform); pixels outside the
    crop are black (-1), as insightface's ``cv2.warpAffine(..., borderValue=0)`` on 0..255.
    """

    def __init__(self, meta: IJBMeta, size: int = 112):
        self.meta = meta
        self.size = size

    def __len__(self) -> int:
        return self.meta.num_images

    def __getitem__(self, i: int) -> torch.Tensor:
        from facelab.core.data.align import align_faces
        from facelab.core.data.folders import load_image

        x = load_image(self.meta.image_dir / str(self.meta.image_names[i]))
        lm = torch.from_numpy(self.meta.landmarks[i].copy())
        return align_faces(x, lm, size=self.size, border_value=-1.0)
