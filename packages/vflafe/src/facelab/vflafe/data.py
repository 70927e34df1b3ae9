"""Vertically partitioned datasets: every party holds other features of the same samples.

A ``VerticalData`` holds the active party's sample ids and labels and, per passive party, a
feature block aligned row by row to those ids. Loaders (all offline):

* ``breast_cancer(parties)``: scikit-learn's bundled Wisconsin breast cancer table (569 x 30,
  2 classes), columns cut into ``parties`` contiguous blocks;
* ``digits(parties)``: scikit-learn's bundled 8x8 digits (1,797 x 64, 10 classes), the image cut
  into ``parties`` blocks of columns (left / right halves for two parties);
* ``toyfaces(parties, ...)``: facelab's procedural faces, each image cut into ``parties``
  horizontal bands (eyes / nose / mouth ...), the label is the identity.

Real VFL first aligns the parties' records (private set intersection); ``align`` is the step
after it: a party's rows reordered to the active party's ids, with an ``AlignmentError`` when
the id sets differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from facelab.core.errors import FacelabTypeError, RangeError, ShapeError, UnknownNameError
from facelab.vflafe.errors import AlignmentError

__all__ = [
    "DATASETS",
    "VerticalData",
    "align",
    "breast_cancer",
    "digits",
    "load",
    "toyfaces",
]

DatasetName = Literal["breast_cancer", "digits", "toyfaces"]
DATASETS = ("breast_cancer", "digits", "toyfaces")


def align(
    active_ids: torch.Tensor, party_ids: torch.Tensor, party_rows: torch.Tensor
) -> torch.Tensor:
    """``party_rows`` (one per entry of ``party_ids``) reordered to the order of ``active_ids``.

    Raises ``AlignmentError`` when an id is missing, extra or repeated on either side.
    """
    for name, ids in (("active_ids", active_ids), ("party_ids", party_ids)):
        if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.is_floating_point():
            raise FacelabTypeError(f"{name}: expected a 1-D integer tensor, got {ids!r:.80}")
    if party_rows.shape[0] != party_ids.shape[0]:
        raise ShapeError(
            f"party_rows: expected one row per party id ({party_ids.shape[0]}), got "
            f"{party_rows.shape[0]}"
        )
    a, p = active_ids.cpu().numpy(), party_ids.cpu().numpy()
    for name, ids in (("active", a), ("party", p)):
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise AlignmentError(
                f"{name} sample ids: expected unique ids, got {int((counts > 1).sum())} repeated "
                f"(e.g. {uniq[counts > 1][:3].tolist()})"
            )
    missing = np.setdiff1d(a, p)
    extra = np.setdiff1d(p, a)
    if missing.size or extra.size:
        raise AlignmentError(
            f"party sample ids do not align with the active party's: expected the same "
            f"{a.size} ids, got {missing.size} missing (e.g. {missing[:3].tolist()}) and "
            f"{extra.size} extra (e.g. {extra[:3].tolist()})"
        )
    order = np.argsort(p, kind="stable")
    pos = order[np.searchsorted(p[order], a)]
    return party_rows[torch.from_numpy(pos).to(party_rows.device)]


@dataclass
class VerticalData:
    """Samples ``ids`` (int64, the active party's order), ``labels`` (int64) and one feature
    block per passive party (``parties[k][i]`` belongs to sample ``ids[i]``)."""

    ids: torch.Tensor
    labels: torch.Tensor
    parties: list[torch.Tensor]
    num_classes: int
    name: str = "custom"

    def __post_init__(self) -> None:
        n = self.ids.shape[0]
        if self.ids.dim() != 1 or self.labels.shape != (n,):
            raise ShapeError(
                f"ids/labels: expected two 1-D tensors of one length, got {tuple(self.ids.shape)} "
                f"and {tuple(self.labels.shape)}"
            )
        if not self.parties:
            raise ShapeError("parties: expected at least one passive party's features, got none")
        for k, x in enumerate(self.parties):
            if x.shape[0] != n:
                raise ShapeError(f"parties[{k}]: expected {n} rows, got shape {tuple(x.shape)}")
        if n == 0:
            raise ShapeError("VerticalData: expected at least one sample, got 0")

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def feature_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(x.shape[1:]) for x in self.parties]

    def rows_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Row positions of sample ``ids`` (AlignmentError for an unknown id)."""
        own = self.ids.cpu().numpy()
        want = ids.cpu().numpy()
        order = np.argsort(own, kind="stable")
        pos = np.searchsorted(own[order], want).clip(0, len(own) - 1)
        found = own[order][pos] == want
        if not found.all():
            raise AlignmentError(
                f"ids: expected ids of this dataset, got {int((~found).sum())} unknown "
                f"(e.g. {want[~found][:3].tolist()})"
            )
        return torch.from_numpy(order[pos])

    def subset(self, index: torch.Tensor) -> VerticalData:
        return VerticalData(
            self.ids[index],
            self.labels[index],
            [x[index] for x in self.parties],
            self.num_classes,
            self.name,
        )

    def split(
        self, test_fraction: float = 0.25, seed: int = 0
    ) -> tuple[VerticalData, VerticalData]:
        """Stratified random train / test split."""
        from sklearn.model_selection import train_test_split

        if not 0.0 < test_fraction < 1.0:
            raise RangeError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
        idx = np.arange(len(self))
        tr, te = train_test_split(
            idx, test_size=test_fraction, random_state=seed, stratify=self.labels.numpy()
        )
        return self.subset(torch.from_numpy(np.sort(tr))), self.subset(
            torch.from_numpy(np.sort(te))
        )


def _column_blocks(n_cols: int, parties: int) -> list[np.ndarray]:
    if isinstance(parties, bool) or not isinstance(parties, int) or not 1 <= parties <= n_cols:
        raise RangeError(f"parties: expected an int in [1, {n_cols}], got {parties!r}")
    return np.array_split(np.arange(n_cols), parties)


def _standardize(train: VerticalData, test: VerticalData) -> None:
    """Each party standardizes its own columns with its own training statistics (in place)."""
    for k, x in enumerate(train.parties):
        mean = x.mean(0, keepdim=True)
        std = x.std(0, keepdim=True).clamp_min(1e-6)
        train.parties[k] = (x - mean) / std
        test.parties[k] = (test.parties[k] - mean) / std


def _tabular(x: np.ndarray, y: np.ndarray, blocks: list[np.ndarray], name: str) -> VerticalData:
    xt = torch.from_numpy(x.astype(np.float32))
    return VerticalData(
        ids=torch.arange(len(y), dtype=torch.int64),
        labels=torch.from_numpy(y.astype(np.int64)),
        parties=[xt[:, b].contiguous() for b in blocks],
        num_classes=int(y.max()) + 1,
        name=name,
    )


def breast_cancer(
    parties: int = 2, test_fraction: float = 0.25, seed: int = 0
) -> tuple[VerticalData, VerticalData]:
    """Breast cancer (569 x 30, 2 classes), columns in ``parties`` blocks, standardized per party
    on its training rows. Returns (train, test)."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    data = _tabular(x, y, _column_blocks(x.shape[1], parties), "breast_cancer")
    train, test = data.split(test_fraction, seed)
    _standardize(train, test)
    return train, test


def digits(
    parties: int = 2, test_fraction: float = 0.25, seed: int = 0
) -> tuple[VerticalData, VerticalData]:
    """8x8 digits (1,797 samples, 10 classes); party k holds a block of image columns
    (pixels / 16 in [0, 1], flattened). Returns (train, test)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    cols = _column_blocks(8, parties)
    blocks = [np.concatenate([r * 8 + c for r in range(8)]) for c in cols]
    data = _tabular(x / 16.0, y, blocks, "digits")
    return data.split(test_fraction, seed)


def toyfaces(
    parties: int = 2,
    num_identities: int = 20,
    images_per_identity: int = 20,
    size: int = 32,
    test_fraction: float = 0.25,
    seed: int = 0,
    difficulty: float | str = "easy",
) -> tuple[VerticalData, VerticalData]:
    """ToyFaces identities as classes; party k holds horizontal band k of every image, a
    ``(3, size // parties, size)`` crop in [-1, 1] (``size`` divisible by ``parties``)."""
    from facelab.core.data.toyfaces import ToyFaces

    if isinstance(parties, bool) or not isinstance(parties, int) or parties < 1:
        raise RangeError(f"parties: expected a positive int, got {parties!r}")
    if size % parties:
        raise ShapeError(f"size: expected a multiple of parties={parties}, got {size}")
    faces = ToyFaces(
        num_identities, images_per_identity, size=size, seed=seed, difficulty=difficulty
    )
    images = faces.materialize(torch.float32)
    band = size // parties
    data = VerticalData(
        ids=torch.arange(len(faces), dtype=torch.int64),
        labels=faces.labels.clone(),
        parties=[images[:, :, k * band : (k + 1) * band, :].contiguous() for k in range(parties)],
        num_classes=num_identities,
        name="toyfaces",
    )
    return data.split(test_fraction, seed)


def load(
    name: DatasetName, parties: int = 2, seed: int = 0, **kwargs
) -> tuple[VerticalData, VerticalData]:
    """One of ``DATASETS`` by name: (train, test)."""
    loaders = {"breast_cancer": breast_cancer, "digits": digits, "toyfaces": toyfaces}
    if name not in loaders:
        raise UnknownNameError(f"dataset: expected one of {list(DATASETS)}, got {name!r}")
    return loaders[name](parties=parties, seed=seed, **kwargs)
