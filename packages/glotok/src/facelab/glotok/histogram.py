"""Codebook-wise histogram relation learning (GloTok, Sec. "global perspective").

The semantic codebook is supervised as a whole: the distribution of the pairwise cosine
similarities of its entries, ``D = {cos(t_i, t_j) | i <= j}`` (the diagonal included, as the
paper writes it), is soft-binned into ``N`` bins with centres ``B_k = -1 + 2k / (N - 1)`` and
weights ``exp(-alpha (d - B_k)^2)``, normalized to sum 1, and pulled toward a teacher histogram
``P_t`` by ``KL(P_t || P_s)`` (``F.kl_div(log P_s, P_t, reduction="sum")``). The teacher
histogram is computed once, from a pretrained codebook or from k-means centroids of a pretrained
model's features, and saved with its ``bins`` and ``alpha``; the pretrained model never runs
during tokenizer training.

Memory: the pairwise tensor of a 16,384-entry codebook with 40 bins holds 16,384^2 x 40 floats
(43 GB), and autograd would keep it (and its intermediates) for the backward pass. Here the
histogram is one autograd node (``_PairHistogram``) that walks the codebook in row blocks: the
forward pass keeps only the normalized codebook, and the backward pass recomputes each block's
weights to form the gradient ``dL/dT = W T`` block by block, so peak memory is one block of
``rows x K x bins`` values (``chunk_elements``, 2^22 by default: 16 MiB in float32, a few
such buffers live at once).

``alpha`` is not given in the paper. Our default puts the Gaussian's standard deviation at one
bin spacing ``delta = 2 / (N - 1)``: ``alpha = 1 / (2 delta^2) = (N - 1)^2 / 8`` (190.1 for 40
bins), so a value midway between two centres weighs 0.88 at both and a value on a centre still
gives its neighbours 0.61: adjacent bins overlap and the histogram is smooth in the codebook.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from facelab.core.errors import (
    FacelabTypeError,
    FormatError,
    KeyMismatchError,
    NonFiniteError,
    RangeError,
    ShapeError,
    ZeroVectorError,
    expect_rank,
    expect_tensor,
    extremes,
)

#: the paper's number of bins
DEFAULT_BINS = 40
#: added to the student histogram before its log: a bin whose weight underflowed to 0 in float32
#: (a value more than ~0.7 away from every pair similarity at the default alpha) gives
#: log(1e-10) = -23 instead of -inf, a finite loss and gradient
EMPTY_BIN_EPS = 1e-10
#: a codebook row with a norm below this cannot be normalized (its cosine is undefined)
ZERO_NORM = 1e-12
#: elements of one block of the pairwise-weights tensor (rows x K x bins)
DEFAULT_CHUNK_ELEMENTS = 1 << 22

HIST_FORMAT = "facelab.glotok.teacher-histogram"


def default_alpha(bins: int = DEFAULT_BINS) -> float:
    """``(bins - 1)^2 / 8``: a Gaussian of one bin spacing standard deviation (see module doc)."""
    _check_bins(bins)
    return (bins - 1) ** 2 / 8.0


def bin_centers(
    bins: int = DEFAULT_BINS, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``B_k = -1 + 2k / (bins - 1)``, k = 0 .. bins-1."""
    _check_bins(bins)
    k = torch.arange(bins, device=device, dtype=torch.float64)
    return (-1.0 + 2.0 * k / (bins - 1)).to(dtype or torch.get_default_dtype())


def _check_bins(bins: object) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int):
        raise FacelabTypeError(f"bins: expected an int, got {type(bins).__name__} {bins!r}")
    if bins < 2:
        raise RangeError(f"bins: expected at least 2 bins, got {bins}")
    return bins


def _resolve_alpha(alpha: float | None, bins: int) -> float:
    if alpha is None:
        return default_alpha(bins)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise FacelabTypeError(f"alpha: expected a number, got {type(alpha).__name__}")
    if not math.isfinite(alpha) or alpha <= 0:
        raise RangeError(f"alpha: expected a finite number > 0, got {alpha!r}")
    return float(alpha)


def normalized_codebook(codebook: torch.Tensor, name: str = "codebook") -> torch.Tensor:
    """Rows divided by their norms, after checking the codebook is a finite, non-empty
    ``(K, D)`` float tensor without zero rows (their cosine is undefined)."""
    expect_tensor(codebook, name, floating=True)
    expect_rank(codebook, 2, name, "(num_codes, dim)")
    if codebook.shape[0] < 1 or codebook.shape[1] < 1:
        raise ShapeError(
            f"{name}: expected at least one code of dim >= 1, got {tuple(codebook.shape)}"
        )
    norms = torch.linalg.vector_norm(codebook.detach(), dim=1)
    lo, hi = extremes(norms)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = int((~torch.isfinite(codebook.detach()).all(dim=1)).sum())
        raise NonFiniteError(f"{name}: expected finite entries, got {bad} rows with NaN/Inf")
    if lo < ZERO_NORM:
        rows = torch.nonzero(norms < ZERO_NORM).flatten()[:5].tolist()
        raise ZeroVectorError(
            f"{name}: expected non-zero code vectors (cosines are undefined for zero vectors), "
            f"got {int((norms < ZERO_NORM).sum())} rows with norm < {ZERO_NORM}, e.g. rows {rows}"
        )
    return codebook / torch.linalg.vector_norm(codebook, dim=1, keepdim=True)


def _rows_per_block(num_codes: int, bins: int, chunk_elements: int) -> int:
    return max(1, min(num_codes, chunk_elements // max(1, num_codes * bins)))


class _PairHistogram(torch.autograd.Function):
    """Unnormalized soft histogram ``h_n = sum_{i<=j} exp(-alpha (t_i.t_j - B_n)^2)`` of unit
    rows ``t``; backward recomputes each row block (nothing pairwise is saved)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, centers: torch.Tensor, alpha: float, rows: int):
        k = t.shape[0]
        hist = torch.zeros_like(centers)
        for s in range(0, k, rows):
            e = min(k, s + rows)
            d = t[s:e] @ t[s:].T  # pairs (i, j) with j >= s; keep j >= i
            i = torch.arange(s, e, device=t.device)[:, None]
            j = torch.arange(s, k, device=t.device)[None, :]
            x = d.unsqueeze(-1) - centers
            w = x.square_().mul_(-alpha).exp_()
            w.masked_fill_((j < i).unsqueeze(-1), 0.0)
            hist += w.sum(dim=(0, 1))
        ctx.save_for_backward(t, centers)
        ctx.alpha, ctx.rows = alpha, rows
        return hist

    @staticmethod
    def backward(ctx, grad_hist: torch.Tensor):
        t, centers = ctx.saved_tensors
        alpha, rows = ctx.alpha, ctx.rows
        k = t.shape[0]
        grad_t = torch.zeros_like(t)
        for s in range(0, k, rows):
            e = min(k, s + rows)
            d = t[s:e] @ t.T  # all columns: row i collects every pair it belongs to
            x = d.unsqueeze(-1) - centers
            w = x.square().mul_(-alpha).exp_().mul_(x)
            # dh_n/dd = -2 alpha (d - B_n) exp(-alpha (d - B_n)^2)
            coef = (w @ grad_hist).mul_(-2.0 * alpha)  # (rows, K) = dL/dd_ij
            # the diagonal pair (i, i) depends on t_i twice: d(t_i . t_i)/dt_i = 2 t_i
            idx = torch.arange(s, e, device=t.device)
            coef[idx - s, idx] *= 2.0
            grad_t[s:e] = coef @ t
        return grad_t, None, None, None


def codebook_histogram(
    codebook: torch.Tensor,
    bins: int = DEFAULT_BINS,
    alpha: float | None = None,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Soft histogram ``P`` (``(bins,)``, sums to 1) of the pairwise cosines ``i <= j`` of a
    ``(K, D)`` codebook; differentiable in the codebook, memory bounded by ``chunk_elements``.

    ``alpha`` defaults to :func:`default_alpha` ``(bins)``. Zero rows, NaN/Inf raise."""
    bins = _check_bins(bins)
    alpha = _resolve_alpha(alpha, bins)
    if (
        isinstance(chunk_elements, bool)
        or not isinstance(chunk_elements, int)
        or chunk_elements < 1
    ):
        raise RangeError(f"chunk_elements: expected a positive int, got {chunk_elements!r}")
    t = normalized_codebook(codebook)
    centers = bin_centers(bins, device=t.device, dtype=t.dtype)
    rows = _rows_per_block(t.shape[0], bins, chunk_elements)
    hist = _PairHistogram.apply(t, centers, alpha, rows)
    return hist / hist.sum()


def codebook_histogram_naive(
    codebook: torch.Tensor, bins: int = DEFAULT_BINS, alpha: float | None = None
) -> torch.Tensor:
    """The same histogram through one full ``K x K x bins`` tensor and plain autograd: the
    reference for tests and the memory benchmark (do not use it on large codebooks)."""
    bins = _check_bins(bins)
    alpha = _resolve_alpha(alpha, bins)
    t = normalized_codebook(codebook)
    centers = bin_centers(bins, device=t.device, dtype=t.dtype)
    d = t @ t.T
    k = t.shape[0]
    upper = torch.ones(k, k, dtype=torch.bool, device=t.device).triu()
    w = torch.exp(-alpha * (d.unsqueeze(-1) - centers) ** 2) * upper.unsqueeze(-1)
    hist = w.sum(dim=(0, 1))
    return hist / hist.sum()


@dataclass
class TeacherHistogram:
    """A teacher histogram with the ``bins`` and ``alpha`` it was computed with.

    ``source`` says where it came from (e.g. ``"kmeans:toy-arcface-r18"``), ``num_codes`` how
    many vectors (codebook entries or centroids) it summarizes."""

    hist: torch.Tensor
    bins: int
    alpha: float
    source: str = ""
    num_codes: int = 0

    def __post_init__(self) -> None:
        self.bins = _check_bins(self.bins)
        self.alpha = _resolve_alpha(self.alpha, self.bins)
        self.hist = check_histogram(self.hist, self.bins, "teacher histogram")

    def save(self, path: str | os.PathLike) -> Path:
        """Write a safetensors file (histogram + bins/alpha/source metadata), atomically."""
        import tempfile

        from safetensors.torch import save_file

        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        # a unique temporary name: several processes of one run may save the same histogram
        fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        meta = {
            "format": HIST_FORMAT,
            "version": "1",
            "bins": str(self.bins),
            "alpha": repr(self.alpha),
            "source": self.source,
            "num_codes": str(self.num_codes),
        }
        save_file({"hist": self.hist.detach().cpu().contiguous()}, str(tmp), metadata=meta)
        os.replace(tmp, out)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> TeacherHistogram:
        from safetensors import SafetensorError, safe_open

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"teacher histogram: no file {p}")
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
                hist = f.get_tensor("hist") if "hist" in f.keys() else None
        except SafetensorError as exc:
            raise FormatError(f"{p}: not a readable safetensors file ({exc})") from None
        if meta.get("format") != HIST_FORMAT or hist is None:
            raise FormatError(
                f"{p}: expected a teacher histogram written by TeacherHistogram.save "
                f"(format {HIST_FORMAT!r} with a 'hist' tensor), got metadata {meta}"
            )
        try:
            bins, alpha = int(meta["bins"]), float(meta["alpha"])
            num_codes = int(meta.get("num_codes", "0"))
        except (KeyError, ValueError) as exc:
            raise FormatError(f"{p}: bad bins/alpha metadata ({exc})") from None
        return cls(hist, bins, alpha, meta.get("source", ""), num_codes)

    def to_json(self) -> dict:
        return {
            "bins": self.bins,
            "alpha": self.alpha,
            "source": self.source,
            "num_codes": self.num_codes,
            "hist": [round(v, 8) for v in self.hist.tolist()],
        }

    def __repr__(self) -> str:
        return json.dumps({k: v for k, v in self.to_json().items() if k != "hist"})


def check_histogram(hist: object, bins: int, name: str = "histogram") -> torch.Tensor:
    """A ``(bins,)`` float tensor, finite, non-negative, summing to 1 (within 1e-3)."""
    expect_tensor(hist, name, floating=True)
    if hist.dim() != 1 or hist.shape[0] != bins:
        raise ShapeError(
            f"{name}: expected shape ({bins},) (one value per bin), got {tuple(hist.shape)}"
        )
    lo, hi = extremes(hist.detach())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise NonFiniteError(f"{name}: expected finite values, got NaN/Inf")
    total = float(hist.detach().sum())
    if lo < 0 or abs(total - 1.0) > 1e-3:
        raise RangeError(
            f"{name}: expected non-negative values summing to 1, got min {lo:.4g}, sum {total:.6g}"
        )
    return hist


def histogram_relation_loss(
    codebook: torch.Tensor,
    teacher_hist: torch.Tensor | TeacherHistogram,
    bins: int | None = None,
    alpha: float | None = None,
    *,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """``KL(P_t || P_s) = F.kl_div(log(P_s + eps), P_t, reduction="sum")`` with ``P_s`` the
    :func:`codebook_histogram` of ``codebook`` and ``P_t`` the (constant) teacher histogram.

    With a :class:`TeacherHistogram`, ``bins`` and ``alpha`` default to the teacher's and must
    equal them when given (a student binned otherwise is not comparable). With a bare tensor
    they default to 40 and :func:`default_alpha`."""
    if isinstance(teacher_hist, TeacherHistogram):
        for key, given, stored in (
            ("bins", bins, teacher_hist.bins),
            ("alpha", alpha, teacher_hist.alpha),
        ):
            if given is not None and not math.isclose(float(given), float(stored), rel_tol=1e-9):
                raise KeyMismatchError(
                    f"histogram_relation_loss: {key}={given!r} but the teacher histogram was "
                    f"computed with {key}={stored!r}"
                )
        bins, alpha, target = teacher_hist.bins, teacher_hist.alpha, teacher_hist.hist
    else:
        bins = DEFAULT_BINS if bins is None else _check_bins(bins)
        target = check_histogram(teacher_hist, bins, "teacher_hist")
    student = codebook_histogram(codebook, bins, alpha, chunk_elements=chunk_elements)
    target = target.detach().to(device=student.device, dtype=student.dtype)
    return F.kl_div(torch.log(student + EMPTY_BIN_EPS), target, reduction="sum")


def teacher_histogram_from_codebook(
    codebook: torch.Tensor,
    bins: int = DEFAULT_BINS,
    alpha: float | None = None,
    source: str = "codebook",
) -> TeacherHistogram:
    """The teacher histogram of a pretrained semantic codebook ``(K, D)``."""
    alpha = _resolve_alpha(alpha, _check_bins(bins))
    with torch.no_grad():
        hist = codebook_histogram(codebook.detach().float(), bins, alpha)
    return TeacherHistogram(hist.cpu(), bins, alpha, source, int(codebook.shape[0]))


def kmeans_centroids(
    features: torch.Tensor, num_codes: int, seed: int = 0, max_iter: int = 100
) -> torch.Tensor:
    """scikit-learn k-means centroids ``(num_codes, D)`` of ``(N, D)`` features (MiniBatchKMeans
    above 20,000 samples)."""
    import numpy as np
    from sklearn.cluster import KMeans, MiniBatchKMeans

    expect_tensor(features, "features", floating=True)
    expect_rank(features, 2, "features", "(num_samples, dim)")
    if isinstance(num_codes, bool) or not isinstance(num_codes, int) or num_codes < 2:
        raise RangeError(f"num_codes: expected an int >= 2, got {num_codes!r}")
    if features.shape[0] < num_codes:
        raise RangeError(
            f"features: k-means with {num_codes} centroids needs at least {num_codes} samples, "
            f"got {features.shape[0]}"
        )
    lo, hi = extremes(features.detach())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise NonFiniteError("features: expected finite values, got NaN/Inf")
    x = features.detach().cpu().double().numpy()
    if x.shape[0] > 20_000:
        km = MiniBatchKMeans(num_codes, random_state=seed, n_init=3, max_iter=max_iter)
    else:
        km = KMeans(num_codes, random_state=seed, n_init=1, max_iter=max_iter)
    km.fit(x)
    return torch.from_numpy(np.asarray(km.cluster_centers_, dtype=np.float32))


def teacher_histogram_from_features(
    features: torch.Tensor,
    num_codes: int,
    bins: int = DEFAULT_BINS,
    alpha: float | None = None,
    *,
    seed: int = 0,
    source: str = "kmeans",
) -> TeacherHistogram:
    """k-means the teacher's features into ``num_codes`` centroids (the size of the student's
    semantic codebook) and bin their pairwise cosines: the paper's route when no pretrained
    codebook exists."""
    centroids = kmeans_centroids(features, num_codes, seed=seed)
    return teacher_histogram_from_codebook(centroids, bins, alpha, source=source)
