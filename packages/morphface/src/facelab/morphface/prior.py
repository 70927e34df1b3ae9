"""The subject-specific style prior: per-subject means and the pooled intra-subject covariance.

MorphFace observes that real people have *distinct, subject-specific* styles: a person's pose,
expression and shape vary around their own mean, and those means differ between people. The
prior is fitted on the per-image 3DMM parameters of real training images with subject labels
(style vectors ``x_ij``, subject i, image j; :mod:`facelab.morphface.params`):

* subject means ``m_i`` and the population mean ``mu`` (mean of the subject means);
* the pooled within-subject covariance ``W = sum_ij (x_ij - m_i)(x_ij - m_i)^T / (N - S)``;
* the between-subject covariance ``B = cov(m_i) - mean_i(1 / n_i) W`` (the covariance of the
  subject means minus what the within-subject noise adds to them; projected onto the PSD cone).

New subjects: ``m ~ N(mu, B)`` (distinct from each other like real people;
``min_separation`` > 0 additionally rejects candidate means closer than that Mahalanobis
distance under B to an accepted one), then each image ``x = m + e``, ``e ~ N(0, W)`` (varying
within the subject like real people do). With ``clip`` (default) every sampled value is kept
inside the fitted data's [0.5 %, 99.5 %] range per dimension, so renderings stay in the range
the generator was trained on.

Everything is vectorized (``index_add`` sums per subject); fitting needs at least two subjects
and at least two images per subject (fewer cannot show intra-subject variation: an error).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from facelab.core.errors import FormatError, NonFiniteError, RangeError, ShapeError
from facelab.morphface.params import StyleLayout, StyleParams

FORMAT = "facelab.morphface.style-prior"
CLIP_QUANTILES = (0.005, 0.995)


def _sqrt_psd(cov: torch.Tensor) -> torch.Tensor:
    """A factor L with L L^T = the PSD projection of ``cov`` (symmetric eigendecomposition)."""
    sym = 0.5 * (cov + cov.T)
    vals, vecs = torch.linalg.eigh(sym)
    return vecs * vals.clamp(min=0).sqrt()


def _psd(cov: torch.Tensor) -> torch.Tensor:
    l = _sqrt_psd(cov)  # noqa: E741
    return l @ l.T


@dataclass
class StylePrior:
    """A fitted prior (see the module docstring); float64 statistics."""

    layout: StyleLayout
    mean: torch.Tensor  # (D,)
    between: torch.Tensor  # (D, D)
    within: torch.Tensor  # (D, D)
    low: torch.Tensor  # (D,)
    high: torch.Tensor  # (D,)
    num_subjects: int
    num_images: int

    @classmethod
    def fit(
        cls,
        styles: StyleParams | torch.Tensor,
        labels: torch.Tensor,
        *,
        layout: StyleLayout | None = None,
        drop_singletons: bool = False,
    ) -> StylePrior:
        """Fit on per-image styles (``StyleParams`` or (N, D) vectors with ``layout``) and
        subject ``labels`` (N,). ``drop_singletons``: leave subjects with one image out instead
        of raising."""
        if isinstance(styles, StyleParams):
            layout = styles.layout
            x = styles.to_vector()
        else:
            if layout is None:
                raise ShapeError("fit: give a StyleLayout with raw style vectors")
            x = styles
        if x.dim() != 2 or x.shape[1] != layout.dim:
            raise ShapeError(f"styles: expected (N, {layout.dim}), got {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise NonFiniteError("styles: expected finite parameters, got NaN/Inf")
        if labels.dim() != 1 or labels.shape[0] != x.shape[0] or labels.is_floating_point():
            raise ShapeError(
                f"labels: expected ({x.shape[0]},) integer subject ids, got {labels.dtype} "
                f"{tuple(labels.shape)}"
            )
        x = x.double()
        uniq, inv = torch.unique(labels, return_inverse=True)
        counts = torch.bincount(inv, minlength=uniq.numel())
        if bool((counts < 2).any()):
            few = uniq[counts < 2]
            if not drop_singletons:
                raise RangeError(
                    f"style prior: every subject needs at least 2 images to estimate "
                    f"intra-subject variation; {few.numel()} subject(s) have 1 (e.g. label "
                    f"{int(few[0])}); pass drop_singletons=True to leave them out"
                )
            keep = counts[inv] >= 2
            x, labels = x[keep], labels[keep]
            uniq, inv = torch.unique(labels, return_inverse=True)
            counts = torch.bincount(inv, minlength=uniq.numel())
        s, n = int(uniq.numel()), int(x.shape[0])
        if s < 2:
            raise RangeError(f"style prior: expected at least 2 subjects, got {s}")
        sums = torch.zeros(s, x.shape[1], dtype=torch.float64).index_add_(0, inv, x)
        means = sums / counts[:, None].double()
        resid = x - means[inv]
        within = resid.T @ resid / (n - s)
        mu = means.mean(0)
        dm = means - mu
        cov_means = dm.T @ dm / (s - 1)
        between = _psd(cov_means - (1.0 / counts.double()).mean() * within)
        q = torch.tensor(CLIP_QUANTILES, dtype=torch.float64)
        lo, hi = torch.quantile(x, q, dim=0)
        return cls(layout, mu, between, _psd(within), lo, hi, s, n)

    # ---------------------------------------------------------------- sampling

    def sample_subjects(
        self, n: int, *, seed: int = 0, min_separation: float = 0.0, max_tries: int = 50
    ) -> torch.Tensor:
        """(n, D) new subject means ~ N(mean, between), optionally at least ``min_separation``
        apart (Mahalanobis under ``between``, greedy over candidates in draw order)."""
        if n < 1:
            raise RangeError(f"n: expected a positive number of subjects, got {n}")
        g = torch.Generator().manual_seed(int(seed))
        lb = _sqrt_psd(self.between)
        if min_separation <= 0:
            z = torch.randn(n, lb.shape[1], generator=g, dtype=torch.float64)
            return self.mean + z @ lb.T
        # whitened coordinates (pseudo-inverse on the supported subspace)
        vals, vecs = torch.linalg.eigh(0.5 * (self.between + self.between.T))
        keep = vals > vals.max() * 1e-9
        kept: list[torch.Tensor] = []
        for _ in range(max_tries):
            z = torch.randn(4 * n, lb.shape[1], generator=g, dtype=torch.float64)
            cand = self.mean + z @ lb.T
            white = ((cand - self.mean) @ vecs[:, keep]) / vals[keep].sqrt()
            for k in range(cand.shape[0]):
                if kept:
                    w = torch.stack([kw for _, kw in kept])
                    if float((w - white[k]).norm(dim=1).min()) < min_separation:
                        continue
                kept.append((cand[k], white[k]))
                if len(kept) == n:
                    return torch.stack([c for c, _ in kept])
        raise RangeError(
            f"min_separation {min_separation}: found only {len(kept)} of {n} subjects that far "
            f"apart in {max_tries} rounds; lower it"
        )

    def sample_images(
        self,
        subject_means: torch.Tensor,
        images_per_subject: int,
        *,
        seed: int = 0,
        clip: bool = True,
    ) -> torch.Tensor:
        """(n * k, D) styles: every subject's k images around its mean (subject-major)."""
        if images_per_subject < 1:
            raise RangeError(f"images_per_subject: expected >= 1, got {images_per_subject}")
        g = torch.Generator().manual_seed(int(seed) + 0x51A7)
        lw = _sqrt_psd(self.within)
        n, k = subject_means.shape[0], images_per_subject
        z = torch.randn(n * k, lw.shape[1], generator=g, dtype=torch.float64)
        x = subject_means.double().repeat_interleave(k, 0) + z @ lw.T
        if clip:
            x = torch.minimum(torch.maximum(x, self.low), self.high)
        return x

    def sample(
        self,
        num_subjects: int,
        images_per_subject: int,
        *,
        seed: int = 0,
        min_separation: float = 0.0,
        clip: bool = True,
    ) -> tuple[StyleParams, torch.Tensor]:
        """New subjects' styles: (StyleParams of n * k images, subject-major; subject labels)."""
        means = self.sample_subjects(num_subjects, seed=seed, min_separation=min_separation)
        x = self.sample_images(means, images_per_subject, seed=seed, clip=clip)
        labels = torch.arange(num_subjects).repeat_interleave(images_per_subject)
        return self.layout.split(x.float()), labels

    # ---------------------------------------------------------------- files

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "mean": self.mean.contiguous(),
            "between": self.between.contiguous(),
            "within": self.within.contiguous(),
            "low": self.low.contiguous(),
            "high": self.high.contiguous(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        import json

        from safetensors.torch import save_file

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "version": "1",
            "layout": json.dumps(self.layout.to_dict()),
            "num_subjects": str(self.num_subjects),
            "num_images": str(self.num_images),
        }
        tmp = p.with_name(f".{p.name}.tmp")
        save_file(self.tensors(), str(tmp), metadata=meta)
        os.replace(tmp, p)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> StylePrior:
        import json

        from safetensors import safe_open

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"style prior: {p} does not exist")
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = dict(f.metadata() or {})
                t = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise FormatError(f"{p}: not a readable safetensors file ({exc})") from None
        if meta.get("format") != FORMAT:
            raise FormatError(
                f"{p}: expected a style prior (format {FORMAT!r}), got {meta.get('format')!r}"
            )
        try:
            layout = StyleLayout(**json.loads(meta["layout"]))
            return cls(
                layout,
                t["mean"],
                t["between"],
                t["within"],
                t["low"],
                t["high"],
                int(meta["num_subjects"]),
                int(meta["num_images"]),
            )
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise FormatError(f"{p}: incomplete style prior ({exc})") from None


def subject_statistics(values: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """How subject-specific a scalar attribute is: between-subject variance of the subject means,
    pooled within-subject variance, and their ratio (the one-way ANOVA effect: 0 when subjects
    do not differ beyond their own variation), plus the intraclass correlation
    ``between / (between + within)``."""
    v = values.double().reshape(-1)
    uniq, inv = torch.unique(labels, return_inverse=True)
    counts = torch.bincount(inv, minlength=uniq.numel()).double()
    if bool((counts < 2).any()) or uniq.numel() < 2:
        raise RangeError("subject_statistics: expected >= 2 subjects with >= 2 images each")
    means = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inv, v) / counts
    within = float(((v - means[inv]) ** 2).sum() / (v.numel() - uniq.numel()))
    between = float(means.var() - (1.0 / counts).mean() * within)
    between = max(between, 0.0)
    return {
        "between_var": between,
        "within_var": within,
        "icc": between / (between + within) if between + within > 0 else 0.0,
    }


__all__ = ["CLIP_QUANTILES", "FORMAT", "StylePrior", "subject_statistics"]
