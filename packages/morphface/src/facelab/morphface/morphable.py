"""A linear 3D morphable model (3DMM): mean shape, identity-shape and expression bases, optional
albedo, triangles, landmark vertices.

    vertices(shape, expression) = mean_shape + shape_basis @ shape + expression_basis @ expression
    albedo(coeffs)              = albedo_mean + albedo_basis @ coeffs           (per vertex, RGB)

Tensors: ``mean_shape`` (V, 3); ``shape_basis`` (V, 3, Ks); ``expression_basis`` (V, 3, Ke);
``albedo_mean`` (V, 3) in [0, 1] (default: a uniform 0.7 grey); ``albedo_basis`` (V, 3, Ka)
(optional, Ka may be 0); ``faces`` (F, 3) int, counter-clockwise seen from outside;
``landmarks`` (L,) vertex indices (optional). Model space: x image right, y up, z towards the
camera (FLAME and BFM use the same axes).

Files: ``save`` writes safetensors (these tensor names plus ``metadata["format"] =
"facelab.morphface.3dmm"``); ``load`` reads such a file or an ``.npz`` with the same array names
(``allow_pickle=False``: nothing in it is executed). :mod:`facelab.morphface.converters` reads
the Deep3DFaceRecon BFM ``.mat``; FLAME's ``.pkl`` is not read (export its arrays to ``.npz``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from facelab.core.errors import FormatError, NonFiniteError, RangeError, ShapeError
from facelab.morphface.raster import check_mesh

FORMAT = "facelab.morphface.3dmm"
REQUIRED = ("mean_shape", "shape_basis", "expression_basis", "faces")
OPTIONAL = ("albedo_mean", "albedo_basis", "landmarks")
DEFAULT_ALBEDO = 0.7


@dataclass
class MorphableModel:
    """A linear 3DMM (see the module docstring). Checked on construction."""

    mean_shape: torch.Tensor
    shape_basis: torch.Tensor
    expression_basis: torch.Tensor
    faces: torch.Tensor
    albedo_mean: torch.Tensor | None = None
    albedo_basis: torch.Tensor | None = None
    landmarks: torch.Tensor | None = None
    name: str = ""
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ---------------------------------------------------------------- checks

    def validate(self) -> None:
        """Consistent basis shapes, faces and landmarks in range, finite values."""
        m = self.mean_shape
        if not isinstance(m, torch.Tensor) or m.dim() != 2 or m.shape[1] != 3 or m.shape[0] < 3:
            raise ShapeError(
                f"3DMM mean_shape: expected (V, 3) with V >= 3, got "
                f"{tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__}"
            )
        nv = m.shape[0]
        self.mean_shape = m.float()
        for name in ("shape_basis", "expression_basis", "albedo_basis"):
            t = getattr(self, name)
            if t is None:
                if name == "albedo_basis":
                    continue
                raise ShapeError(f"3DMM {name}: missing")
            if t.dim() == 2 and t.shape[0] == nv * 3:  # (3V, K), the BFM / FLAME-flat layout
                t = t.reshape(nv, 3, -1)
            if t.dim() != 3 or t.shape[0] != nv or t.shape[1] != 3:
                raise ShapeError(
                    f"3DMM {name}: expected ({nv}, 3, K) to match mean_shape ({nv}, 3), got "
                    f"{tuple(t.shape)}"
                )
            setattr(self, name, t.float())
        if self.albedo_mean is None:
            self.albedo_mean = torch.full((nv, 3), DEFAULT_ALBEDO)
        if self.albedo_mean.shape != (nv, 3):
            raise ShapeError(
                f"3DMM albedo_mean: expected ({nv}, 3), got {tuple(self.albedo_mean.shape)}"
            )
        self.albedo_mean = self.albedo_mean.float()
        if self.albedo_basis is None:
            self.albedo_basis = torch.zeros(nv, 3, 0)
        self.faces = check_mesh(self.faces, nv, "3DMM faces")
        if self.landmarks is not None:
            lm = self.landmarks
            if lm.is_floating_point() or lm.dim() != 1:
                raise ShapeError(
                    f"3DMM landmarks: expected (L,) integer vertex indices, got {lm.dtype} "
                    f"{tuple(lm.shape)}"
                )
            if lm.numel() and (int(lm.min()) < 0 or int(lm.max()) >= nv):
                raise RangeError(
                    f"3DMM landmarks: vertex indices must lie in [0, {nv}), got "
                    f"[{int(lm.min())}, {int(lm.max())}]"
                )
            self.landmarks = lm.long()
        for f in fields(self):
            t = getattr(self, f.name)
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                if not bool(torch.isfinite(t).all()):
                    raise NonFiniteError(f"3DMM {f.name}: expected finite values, got NaN/Inf")

    # ---------------------------------------------------------------- sizes

    @property
    def num_vertices(self) -> int:
        return int(self.mean_shape.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def num_shape(self) -> int:
        return int(self.shape_basis.shape[2])

    @property
    def num_expression(self) -> int:
        return int(self.expression_basis.shape[2])

    @property
    def num_albedo(self) -> int:
        return int(self.albedo_basis.shape[2])  # type: ignore[union-attr]

    def to(self, device=None, dtype=None) -> MorphableModel:
        """A copy on ``device`` (float tensors in ``dtype`` when given)."""
        kw = {}
        for f in fields(self):
            t = getattr(self, f.name)
            if isinstance(t, torch.Tensor):
                t = t.to(device=device, dtype=dtype if t.is_floating_point() else None)
            kw[f.name] = t
        return MorphableModel(**kw)

    # ---------------------------------------------------------------- evaluation

    def _coeffs(self, c: torch.Tensor | None, k: int, b: int, name: str) -> torch.Tensor:
        if c is None:
            return self.mean_shape.new_zeros(b, k)
        if c.dim() != 2 or c.shape[1] != k:
            raise ShapeError(f"{name}: expected (B, {k}) coefficients, got {tuple(c.shape)}")
        if not bool(torch.isfinite(c).all()):
            raise NonFiniteError(f"{name}: expected finite coefficients, got NaN/Inf")
        return c.to(self.mean_shape.dtype)

    def vertices(
        self, shape: torch.Tensor | None = None, expression: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, V, 3) model-space vertices for coefficients (B, Ks) and (B, Ke)."""
        b = next((c.shape[0] for c in (shape, expression) if c is not None), 1)
        s = self._coeffs(shape, self.num_shape, b, "shape")
        e = self._coeffs(expression, self.num_expression, b, "expression")
        nv = self.num_vertices
        v = self.mean_shape.view(1, -1) + s @ self.shape_basis.reshape(nv * 3, -1).T
        return v.view(b, nv, 3) + self.expression_offsets(e)

    def expression_offsets(self, expression: torch.Tensor) -> torch.Tensor:
        """(B, V, 3) the displacement the expression coefficients (B, Ke) add to the mesh
        (``vertices(shape, expression) - vertices(shape, 0)`` for any shape)."""
        e = self._coeffs(expression, self.num_expression, expression.shape[0], "expression")
        nv = self.num_vertices
        return (e @ self.expression_basis.reshape(nv * 3, -1).T).view(-1, nv, 3)

    @property
    def expression_scale(self) -> float:
        """The mean over expression modes of the largest vertex displacement one unit of the
        mode causes (model units; 1.0 for a model without expression modes)."""
        if self.num_expression == 0:
            return 1.0
        per_mode = self.expression_basis.norm(dim=1).amax(0)  # (Ke,)
        scale = float(per_mode.mean())
        return scale if scale > 0 else 1.0

    def albedo(self, coeffs: torch.Tensor | None = None, batch: int = 1) -> torch.Tensor:
        """(B, V, 3) per-vertex albedo, clamped to [0, 1]."""
        b = coeffs.shape[0] if coeffs is not None else batch
        a = self._coeffs(coeffs, self.num_albedo, b, "albedo")
        nv = self.num_vertices
        out = self.albedo_mean.view(1, -1) + a @ self.albedo_basis.reshape(nv * 3, -1).T  # type: ignore[union-attr]
        return out.view(b, nv, 3).clamp(0.0, 1.0)

    # ---------------------------------------------------------------- files

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {name: getattr(self, name) for name in REQUIRED}
        for name in OPTIONAL:
            t = getattr(self, name)
            if t is not None:
                out[name] = t
        return {k: v.contiguous() for k, v in out.items()}

    def save(self, path: str | os.PathLike) -> Path:
        """Write safetensors (atomic rename)."""
        import json

        from safetensors.torch import save_file

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp")
        meta = {"format": FORMAT, "version": "1", "name": self.name, "meta": json.dumps(self.meta)}
        save_file(self.tensors(), str(tmp), metadata=meta)
        os.replace(tmp, p)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> MorphableModel:
        """Read a 3DMM from ``.safetensors`` (written by :meth:`save`) or ``.npz`` (arrays named
        as the fields; no pickled objects)."""
        import json

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"3DMM: {p} does not exist")
        meta: dict[str, str] = {}
        if p.suffix == ".npz":
            try:
                with np.load(p, allow_pickle=False) as z:
                    arrays = {k: torch.from_numpy(_plain(z[k])) for k in z.files}
            except ValueError as exc:
                raise FormatError(f"{p}: not a plain .npz of arrays ({exc})") from None
            except Exception as exc:
                raise FormatError(f"{p}: not a readable .npz file ({exc})") from None
        else:
            from safetensors import safe_open

            try:
                with safe_open(str(p), framework="pt") as f:
                    meta = dict(f.metadata() or {})
                    arrays = {k: f.get_tensor(k) for k in f.keys()}
            except Exception as exc:
                raise FormatError(f"{p}: not a readable safetensors file ({exc})") from None
            if meta.get("format") != FORMAT:
                raise FormatError(
                    f"{p}: expected a 3DMM file (metadata format {FORMAT!r}), got "
                    f"{meta.get('format')!r}"
                )
        missing = [k for k in REQUIRED if k not in arrays]
        if missing:
            raise FormatError(f"{p}: missing 3DMM arrays {missing}; found {sorted(arrays)}")
        extra = {k: arrays[k] for k in OPTIONAL if k in arrays}
        try:
            info = json.loads(meta.get("meta", "{}"))
        except json.JSONDecodeError:
            info = {}
        return cls(
            **{k: arrays[k] for k in REQUIRED},
            **extra,
            name=meta.get("name", p.stem),
            meta=info if isinstance(info, dict) else {},
        )


def _plain(a: np.ndarray) -> np.ndarray:
    """int64 for integer arrays (torch lacks most uint32 ops), float32 for floats."""
    if a.dtype.kind in "ui":
        return np.ascontiguousarray(a, dtype=np.int64)
    if a.dtype.kind == "f":
        return np.ascontiguousarray(a, dtype=np.float32)
    raise FormatError(f"3DMM arrays: expected numbers, got dtype {a.dtype}")


__all__ = ["FORMAT", "MorphableModel"]
