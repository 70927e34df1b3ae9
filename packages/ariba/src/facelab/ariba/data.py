"""Offline federated data: scikit-learn's bundled digits and toyfaces identities, a Dirichlet
non-IID split across clients, and the pixel trigger of the backdoor attacks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from facelab.ariba._checks import checks_deferred
from facelab.core.errors import RangeError

DATASETS = ("digits", "toyfaces")


@dataclass(frozen=True)
class DataConfig:
    """``digits``: scikit-learn's 1,797 8x8 handwritten digits (10 classes, bundled with the
    library); ``toyfaces``: ``num_identities`` procedural identities at ``image_size`` px."""

    name: Literal["digits", "toyfaces"] = "digits"
    test_fraction: float = 0.25
    num_identities: int = 10
    images_per_identity: int = 80
    image_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if not checks_deferred():
            self.validate()

    def validate(self) -> None:
        """Raise a FacelabError on a bad value (see ``_checks``)."""
        if self.name not in DATASETS:
            raise RangeError(f"data.name: expected one of {DATASETS}, got {self.name!r}")
        if not (0.0 < self.test_fraction < 1.0):
            raise RangeError(
                f"data.test_fraction: expected a value in (0, 1), got {self.test_fraction!r}"
            )
        if self.num_identities < 2 or self.images_per_identity < 2:
            raise RangeError(
                "data: expected at least 2 identities and 2 images per identity, got "
                f"{self.num_identities} x {self.images_per_identity}"
            )


@dataclass
class Split:
    """Train and test tensors (images in [lo, hi], int64 labels)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    value_range: tuple[float, float]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


def _stratified(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = max(1, round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load(cfg: DataConfig = DataConfig()) -> Split:
    """The dataset as tensors, split per class (deterministic in ``cfg.seed``)."""
    if cfg.name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # [0, 1]
        y = torch.from_numpy(d.target.astype(np.int64))
        num_classes, value_range = 10, (0.0, 1.0)
    else:
        from facelab.core.data import ToyFaces

        faces = ToyFaces(
            num_identities=cfg.num_identities,
            images_per_identity=cfg.images_per_identity,
            size=cfg.image_size,
            seed=cfg.seed,
            difficulty="easy",
        )
        x = faces.render(slice(0, len(faces)))
        y = faces.labels.clone()
        num_classes, value_range = cfg.num_identities, (-1.0, 1.0)
    tr, te = _stratified(y.numpy(), cfg.test_fraction, cfg.seed)
    tr_t, te_t = torch.from_numpy(tr), torch.from_numpy(te)
    return Split(x[tr_t], y[tr_t], x[te_t], y[te_t], num_classes, value_range)


def dirichlet_split(
    labels: torch.Tensor | np.ndarray,
    num_clients: int,
    alpha: float,
    seed: int = 0,
    min_size: int = 10,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Non-IID partition: for each class, its samples go to the clients in proportions drawn
    from ``Dirichlet(alpha)`` (small alpha: few classes per client; ``alpha=inf``: IID). Redrawn
    until every client holds at least ``min_size`` samples."""
    y = np.asarray(labels)
    if num_clients < 1:
        raise RangeError(f"num_clients: expected >= 1, got {num_clients}")
    if not alpha > 0:
        raise RangeError(f"alpha: expected > 0 (or inf for IID), got {alpha}")
    if num_clients * min_size > len(y):
        raise RangeError(
            f"dirichlet_split: {len(y)} samples cannot give {num_clients} clients "
            f"{min_size} samples each"
        )
    rng = np.random.default_rng(seed)
    if np.isinf(alpha):
        perm = rng.permutation(len(y))
        return [np.sort(p) for p in np.array_split(perm, num_clients)]
    classes = np.unique(y)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            p = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise RangeError(
        f"dirichlet_split: no partition with >= {min_size} samples per client in {max_tries} "
        f"draws (alpha={alpha}, {num_clients} clients); raise alpha or lower min_size"
    )


@dataclass(frozen=True)
class Trigger:
    """A pixel-pattern backdoor trigger in the bottom-right corner: four bars of two cells,
    a cell being ``size // 8`` pixels, set to the image maximum. ``parts`` selects which bars
    (the distributed backdoor gives each attacker one; the full trigger has all four)."""

    parts: tuple[int, ...] = (0, 1, 2, 3)

    NUM_PARTS = 4

    def mask(self, height: int, width: int) -> torch.Tensor:
        cell = max(1, min(height, width) // 8)
        m = torch.zeros(height, width, dtype=torch.bool)
        # bars: rows -4 and -2 (in cells), columns -4..-3 and -2..-1
        bars = [(-4, -4), (-4, -2), (-2, -4), (-2, -2)]
        for p in self.parts:
            r, c = bars[p]
            r0, c0 = height + r * cell, width + c * cell
            m[r0 : r0 + cell, c0 : c0 + 2 * cell] = True
        return m

    def apply(self, x: torch.Tensor, value: float) -> torch.Tensor:
        """A copy of images ``(N, C, H, W)`` with the trigger stamped at ``value``."""
        m = self.mask(x.shape[-2], x.shape[-1]).to(x.device)
        return torch.where(m, torch.as_tensor(value, dtype=x.dtype, device=x.device), x)
