"""``SubsetPlan``: how the 54 unpruned DCT positions are split into subsets and permuted.

PartialFace removes the low frequencies ``PARTIALFACE_PRUNED`` of every colour; 54 positions per
colour remain. A plan splits them into ``num_subsets`` disjoint subsets of ``subset_size``
positions (the paper: 6 x 9) and fixes ``num_permutations`` orders of a subset (the paper: 3).
A subset uses the same positions in Y, Cb and Cr, so one (subset, permutation) selects
``3 * subset_size`` channels (27) of the 192-channel spectrum, colour-major::

    channel j of colour c  =  c * 64 + subsets[subset][permutations[perm][j]]

The reference (TFace ``create_channel_subsets`` / ``form_training_batch``) hard-codes one plan;
it is :func:`reference_plan`. New plans come from :meth:`SubsetPlan.generate`: the operating
system's CSPRNG by default (a deployment's plan is the server's secret), a seeded generator only
when a seed is passed (reproducible experiments; such a plan is not secret).

A plan is saved apart from the model (JSON or safetensors) and identified by ``plan_id``, a
SHA-256 of its content: models, challenges and payloads carry the id, never the plan, so a
mismatch fails loudly and ``repr``/logs never show the positions.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import secrets
import tempfile
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from facelab.core.errors import (
    FacelabTypeError,
    FormatError,
    RangeError,
    ShapeError,
    UnknownNameError,
)
from facelab.core.freq import (
    COEFFS_PER_COLOR,
    COLORS,
    PARTIALFACE_PRUNED,
    complement_positions,
)

PLAN_FORMAT = "facelab.partialface.plan"
PLAN_FORMAT_VERSION = 1

#: the 54 positions (per colour) left after pruning, ascending: the reference's indexing base
REMAINING_POSITIONS: tuple[int, ...] = complement_positions(PARTIALFACE_PRUNED)

#: TFace's hard-coded split (rows = subsets), as indices into ``REMAINING_POSITIONS``
REFERENCE_SELECTION: tuple[tuple[int, ...], ...] = (
    (1, 24, 28, 12, 32, 45, 47, 40, 52),
    (35, 39, 44, 42, 10, 4, 37, 31, 53),
    (0, 50, 19, 6, 22, 51, 49, 23, 21),
    (38, 8, 25, 13, 17, 30, 7, 33, 9),
    (26, 29, 16, 2, 43, 14, 5, 11, 48),
    (36, 41, 46, 34, 15, 27, 18, 20, 3),
)
#: TFace's candidate permutations of a subset's 9 channels
REFERENCE_PERMUTATIONS: tuple[tuple[int, ...], ...] = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8),
    (7, 3, 0, 6, 5, 4, 1, 2, 8),
    (4, 8, 6, 0, 2, 5, 3, 7, 1),
)
#: subsets each identity trains on (the paper: 3 of 6, so C(6, 3) = 20 triples)
SUBSETS_PER_IDENTITY = 3
PRESETS = ("reference",)


def _int_matrix(value: object, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value.tolist() if isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError) as e:  # ragged nested lists
        raise ShapeError(f"{name}: expected a rectangular matrix of ints ({e})") from None
    if arr.dtype == object or arr.dtype.kind not in "iu":
        raise FacelabTypeError(f"{name}: expected integers, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.size == 0:
        raise ShapeError(f"{name}: expected a non-empty 2-D matrix, got shape {arr.shape}")
    return arr.astype(np.int64)


class SubsetPlan:
    """Disjoint subsets of the unpruned DCT positions and the permutations of a subset.

    Args:
        subsets: ``(num_subsets, subset_size)`` DCT positions (0..63, ``k = 8u + v``); together
            they must hold every position of ``REMAINING_POSITIONS`` exactly once.
        permutations: ``(num_permutations, subset_size)``, each a permutation of
            ``0..subset_size-1``, all distinct.
        subsets_per_identity: how many subsets each training identity owns (3 in the paper).
        name: a label (``"reference"`` for the preset, ``"generated"`` ...); not part of the id.

    Construction validates everything; a bad plan raises a facelab error naming the problem.
    """

    def __init__(
        self,
        subsets: Sequence[Sequence[int]] | np.ndarray | torch.Tensor,
        permutations: Sequence[Sequence[int]] | np.ndarray | torch.Tensor,
        *,
        subsets_per_identity: int = SUBSETS_PER_IDENTITY,
        name: str = "custom",
    ) -> None:
        sub = _int_matrix(subsets, "subsets")
        perm = _int_matrix(permutations, "permutations")
        n, s = sub.shape
        bad = sorted({int(p) for p in sub.ravel() if not 0 <= p < COEFFS_PER_COLOR})
        if bad:
            raise RangeError(f"subsets: DCT positions must lie in 0..63, got {bad}")
        flat = sub.ravel().tolist()
        dupes = sorted({p for p in flat if flat.count(p) > 1})
        if dupes:
            raise ShapeError(f"subsets: must be disjoint, positions {dupes} occur more than once")
        pruned = sorted(set(flat) & set(PARTIALFACE_PRUNED))
        if pruned:
            raise RangeError(
                f"subsets: positions {pruned} are pruned low frequencies (PARTIALFACE_PRUNED)"
            )
        missing = sorted(set(REMAINING_POSITIONS) - set(flat))
        if missing:
            raise ShapeError(
                f"subsets: must cover all {len(REMAINING_POSITIONS)} unpruned positions; "
                f"{n} x {s} leaves out {missing}"
            )
        if perm.shape[1] != s:
            raise ShapeError(
                f"permutations: expected rows of length subset_size={s}, got shape {perm.shape}"
            )
        ident = list(range(s))
        for i, row in enumerate(perm.tolist()):
            if sorted(row) != ident:
                raise RangeError(
                    f"permutations[{i}]: expected a permutation of 0..{s - 1}, got {row}"
                )
        rows = [tuple(r) for r in perm.tolist()]
        if len(set(rows)) != len(rows):
            raise ShapeError("permutations: rows must be distinct")
        if isinstance(subsets_per_identity, bool) or not isinstance(subsets_per_identity, int):
            raise FacelabTypeError(
                f"subsets_per_identity: expected an int, got {subsets_per_identity!r}"
            )
        if not 1 <= subsets_per_identity <= n:
            raise RangeError(
                f"subsets_per_identity: expected 1..{n} (the number of subsets), got "
                f"{subsets_per_identity}"
            )
        self._subsets = sub
        self._perms = perm
        self.subsets_per_identity = subsets_per_identity
        self.name = str(name)

    # ---- construction
    @classmethod
    def generate(
        cls,
        num_subsets: int = 6,
        num_permutations: int = 3,
        *,
        seed: int | None = None,
        subsets_per_identity: int = SUBSETS_PER_IDENTITY,
    ) -> SubsetPlan:
        """A new random plan: a shuffled split of the 54 positions and distinct permutations.

        Without ``seed`` every draw comes from the OS CSPRNG (``secrets``); with a seed from
        ``numpy.random.default_rng(seed)`` (reproducible, not secret).
        """
        total = len(REMAINING_POSITIONS)
        for nm, v in (("num_subsets", num_subsets), ("num_permutations", num_permutations)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RangeError(f"{nm}: expected a positive int, got {v!r}")
        if total % num_subsets:
            divisors = [d for d in range(1, total + 1) if total % d == 0]
            raise RangeError(
                f"num_subsets: must divide the {total} unpruned positions, got {num_subsets}; "
                f"valid: {divisors}"
            )
        s = total // num_subsets
        max_perms = 1
        for k in range(2, s + 1):
            max_perms *= k
        if num_permutations > max_perms:
            raise RangeError(
                f"num_permutations: subsets of {s} have only {max_perms} orders, got "
                f"{num_permutations}"
            )
        if seed is None:
            rng: Any = secrets.SystemRandom()

            def shuffled(n: int) -> list[int]:
                out = list(range(n))
                rng.shuffle(out)
                return out

            name = "generated"
        else:
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise RangeError(f"seed: expected a non-negative int or None, got {seed!r}")
            gen = np.random.default_rng([seed, 0x9F1A])

            def shuffled(n: int) -> list[int]:
                return gen.permutation(n).tolist()

            name = f"seeded:{seed}"
        order = shuffled(total)
        subsets = [
            [REMAINING_POSITIONS[order[i * s + j]] for j in range(s)] for i in range(num_subsets)
        ]
        perms: list[tuple[int, ...]] = []
        while len(perms) < num_permutations:
            p = tuple(shuffled(s))
            if p not in perms:
                perms.append(p)
        return cls(subsets, perms, subsets_per_identity=subsets_per_identity, name=name)

    @classmethod
    def preset(cls, name: str) -> SubsetPlan:
        """A named plan; ``"reference"`` is TFace's hard-coded one."""
        if name == "reference":
            return reference_plan()
        raise UnknownNameError(f"unknown plan preset {name!r}; valid presets: {list(PRESETS)}")

    # ---- shape
    @property
    def num_subsets(self) -> int:
        return int(self._subsets.shape[0])

    @property
    def subset_size(self) -> int:
        return int(self._subsets.shape[1])

    @property
    def num_permutations(self) -> int:
        return int(self._perms.shape[0])

    @property
    def num_channels(self) -> int:
        """Channels of one challenge: the subset's positions in every colour (27)."""
        return len(COLORS) * self.subset_size

    @property
    def subsets(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(int(v) for v in r) for r in self._subsets)

    @property
    def permutations(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(int(v) for v in r) for r in self._perms)

    @cached_property
    def triples(self) -> tuple[tuple[int, ...], ...]:
        """The subset groups an identity may own, ``itertools.combinations`` order (20 for 6/3)."""
        return tuple(itertools.combinations(range(self.num_subsets), self.subsets_per_identity))

    @property
    def num_triples(self) -> int:
        return len(self.triples)

    # ---- lookups
    def _check_index(self, value: object, n: int, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise FacelabTypeError(f"{name}: expected an int, got {type(value).__name__}")
        if not 0 <= int(value) < n:
            raise RangeError(f"{name}: expected 0..{n - 1}, got {value}")
        return int(value)

    def positions(self, subset: int, permutation: int = 0) -> tuple[int, ...]:
        """The subset's DCT positions in the permuted order (what a challenge asks for)."""
        s = self._check_index(subset, self.num_subsets, "subset")
        p = self._check_index(permutation, self.num_permutations, "permutation")
        return tuple(int(self._subsets[s, j]) for j in self._perms[p])

    def channel_indices(self, subset: int, permutation: int = 0) -> list[int]:
        """The 3 * subset_size indices into the 192-channel spectrum, colour-major."""
        pos = self.positions(subset, permutation)
        return [c * COEFFS_PER_COLOR + k for c in range(len(COLORS)) for k in pos]

    def position_table(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``(num_subsets, num_permutations, subset_size)`` int64: permuted positions, for
        vectorized gathers (``table[s, p] == positions(s, p)``)."""
        idx = self._subsets[:, self._perms]  # (S, P, s)
        return torch.as_tensor(idx, dtype=torch.int64, device=device)

    def triple_table(self, device: torch.device | str | None = None) -> torch.Tensor:
        """``(num_triples, subsets_per_identity)`` int64, row ``t`` = ``triples[t]``."""
        return torch.as_tensor(self.triples, dtype=torch.int64, device=device)

    def locate(self, positions: Sequence[int]) -> tuple[int, int] | None:
        """``(subset, permutation)`` whose permuted positions are ``positions``, else None."""
        want = tuple(int(p) for p in positions)
        for s in range(self.num_subsets):
            for p in range(self.num_permutations):
                if self.positions(s, p) == want:
                    return s, p
        return None

    # ---- identity
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "format_version": PLAN_FORMAT_VERSION,
            "name": self.name,
            "pruned": list(PARTIALFACE_PRUNED),
            "subsets": [list(r) for r in self.subsets],
            "permutations": [list(r) for r in self.permutations],
            "subsets_per_identity": self.subsets_per_identity,
        }

    @cached_property
    def plan_id(self) -> str:
        """SHA-256 (hex, 24 chars) of the plan's content: subsets, permutations, triples size."""
        content = {
            "pruned": list(PARTIALFACE_PRUNED),
            "subsets": [list(r) for r in self.subsets],
            "permutations": [list(r) for r in self.permutations],
            "subsets_per_identity": self.subsets_per_identity,
        }
        data = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(data).hexdigest()[:24]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SubsetPlan) and self.plan_id == other.plan_id

    def __hash__(self) -> int:
        return hash(self.plan_id)

    def __repr__(self) -> str:
        # the positions are the server's secret: never shown in reprs or logs
        return (
            f"SubsetPlan(name={self.name!r}, num_subsets={self.num_subsets}, subset_size="
            f"{self.subset_size}, num_permutations={self.num_permutations}, "
            f"plan_id={self.plan_id!r})"
        )

    # ---- persistence
    @classmethod
    def from_dict(cls, doc: object, source: str = "plan") -> SubsetPlan:
        if not isinstance(doc, dict):
            raise FormatError(f"{source}: expected a JSON object, got {type(doc).__name__}")
        if doc.get("format") != PLAN_FORMAT:
            raise FormatError(
                f"{source}: expected format {PLAN_FORMAT!r}, got {doc.get('format')!r}"
            )
        if doc.get("format_version") != PLAN_FORMAT_VERSION:
            raise FormatError(
                f"{source}: expected format_version {PLAN_FORMAT_VERSION}, got "
                f"{doc.get('format_version')!r}"
            )
        if list(doc.get("pruned", [])) != list(PARTIALFACE_PRUNED):
            raise FormatError(
                f"{source}: the plan was made for pruned positions {doc.get('pruned')!r}, this "
                f"version prunes {list(PARTIALFACE_PRUNED)}"
            )
        for key in ("subsets", "permutations", "subsets_per_identity"):
            if key not in doc:
                raise FormatError(f"{source}: missing key {key!r}")
        return cls(
            doc["subsets"],
            doc["permutations"],
            subsets_per_identity=doc["subsets_per_identity"],
            name=str(doc.get("name", "custom")),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "plan") -> SubsetPlan:
        try:
            doc = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FormatError(f"{source}: not valid JSON ({e})") from None
        return cls.from_dict(doc, source)

    def to_safetensors(self) -> bytes:
        """The plan as safetensors bytes: int64 ``subsets`` and ``permutations``, the rest in
        the metadata."""
        meta = self.to_dict()
        metadata = {
            "format": PLAN_FORMAT,
            "format_version": str(PLAN_FORMAT_VERSION),
            "name": self.name,
            "pruned": json.dumps(meta["pruned"]),
            "subsets_per_identity": str(self.subsets_per_identity),
        }
        tensors = {
            "subsets": torch.as_tensor(self._subsets, dtype=torch.int64),
            "permutations": torch.as_tensor(self._perms, dtype=torch.int64),
        }
        return st_save(tensors, metadata=metadata)

    @classmethod
    def from_safetensors(cls, data: bytes, source: str = "plan") -> SubsetPlan:
        try:
            tensors = st_load(data)
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise FormatError(f"{source}: not a readable safetensors plan ({e})") from None
        # metadata: safetensors.torch.load drops it, so read the header ourselves
        try:
            n = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + n])
            metadata = header.get("__metadata__", {}) or {}
        except (ValueError, UnicodeDecodeError) as e:
            raise FormatError(f"{source}: corrupted safetensors header ({e})") from None
        if set(tensors) != {"subsets", "permutations"}:
            raise FormatError(
                f"{source}: expected tensors ['permutations', 'subsets'], got {sorted(tensors)}"
            )
        try:
            doc = {
                "format": metadata.get("format"),
                "format_version": int(metadata.get("format_version", -1)),
                "name": metadata.get("name", "custom"),
                "pruned": json.loads(metadata.get("pruned", "null")),
                "subsets": tensors["subsets"].tolist(),
                "permutations": tensors["permutations"].tolist(),
                "subsets_per_identity": int(metadata.get("subsets_per_identity", -1)),
            }
        except (ValueError, TypeError) as e:
            raise FormatError(f"{source}: corrupted plan metadata ({e})") from None
        return cls.from_dict(doc, source)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the plan atomically: ``.json`` as JSON, ``.safetensors`` as safetensors."""
        path = Path(path)
        if path.suffix == ".json":
            data = self.to_json().encode()
        elif path.suffix == ".safetensors":
            data = self.to_safetensors()
        else:
            raise FormatError(f"plan file: expected a .json or .safetensors path, got {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SubsetPlan:
        """Read a plan written by :meth:`save` (format chosen by the suffix), validated."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"plan file {path} does not exist")
        data = path.read_bytes()
        if path.suffix == ".json":
            return cls.from_json(data, str(path))
        if path.suffix == ".safetensors":
            return cls.from_safetensors(data, str(path))
        raise FormatError(f"plan file: expected a .json or .safetensors path, got {path}")


def reference_plan() -> SubsetPlan:
    """TFace's hard-coded plan: ``REFERENCE_SELECTION`` mapped to DCT positions, 3 permutations."""
    subsets = [[REMAINING_POSITIONS[i] for i in row] for row in REFERENCE_SELECTION]
    return SubsetPlan(subsets, REFERENCE_PERMUTATIONS, name="reference")


def resolve_plan(
    spec: str | os.PathLike | SubsetPlan | None, seed: int | None = None
) -> SubsetPlan:
    """A plan from a preset name (``"reference"``), ``"generate"`` (CSPRNG, or ``seed``), a
    ``.json`` / ``.safetensors`` file, or a plan object."""
    if isinstance(spec, SubsetPlan):
        return spec
    if spec is None or spec == "generate":
        return SubsetPlan.generate(seed=seed)
    if isinstance(spec, str) and spec in PRESETS:
        return SubsetPlan.preset(spec)
    path = Path(spec)
    if path.suffix in (".json", ".safetensors"):
        return SubsetPlan.load(path)
    raise UnknownNameError(
        f"plan: expected a preset {list(PRESETS)}, 'generate' or a .json/.safetensors file, "
        f"got {str(spec)!r}"
    )
