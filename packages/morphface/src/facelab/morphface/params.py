"""Style parameters of images: what a 3DMM fitter says about each training image.

One image's style (DECA's parametrization, which MorphFace uses) is

* ``shape`` (Ks): identity-shape coefficients of the 3DMM;
* ``expression`` (Ke): expression coefficients;
* ``pose`` (3): head rotation as Euler angles ``(yaw, pitch, roll)`` in radians (``geometry``);
* ``camera`` (3): weak-perspective ``(s, tx, ty)``;
* ``light`` (27): spherical-harmonics light, 9 coefficients x RGB (``shading``);
* ``albedo`` (Ka): albedo / texture coefficients (may be empty).

``StyleParams`` holds a batch; ``to_vector`` / ``StyleLayout.split`` map it to and from one flat
vector per image (the order above), which the style prior models.

Per-image parameter files (``facelab morphface fit-prior --params FILE``) come from any
external fitter (DECA, EMOCA, 3DDFA, ...) or from :mod:`facelab.morphface.toy`. Format: a
``.safetensors`` or ``.npz`` file with

* ``shape`` (N, Ks), ``expression`` (N, Ke), ``pose`` (N, 3 | 6 | 9 | 12), ``camera`` (N, 3),
  optional ``light`` (N, 27) or (N, 9, 3) (default: a frontal white light), optional ``albedo``
  (N, Ka) (default: none), ``labels`` (N,) integer subject ids (needed to fit a prior);
  DECA's names ``exp``, ``cam``, ``tex`` are accepted for ``expression``, ``camera``,
  ``albedo``;
* the pose convention in the safetensors metadata ``pose_convention`` (npz: a 0-d string array
  of that name): ``"euler"`` (ours, (N, 3)), ``"axis-angle"`` (FLAME / DECA / EMOCA rotation
  vectors; a (N, 6) DECA pose is global rotation + jaw, the jaw is dropped), or ``"matrix"``
  ((N, 3, 3), (N, 9), or 3DDFA's (N, 12) = a 3 x 4 camera matrix whose scale is divided out).
  Rotations must be given in the model axes (x image right, y up, z towards the camera);
* optional ``images``: JSON list of image paths in metadata (npz: a string array).

Nothing is unpickled (npz is read with ``allow_pickle=False``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from facelab.core.errors import FormatError, NonFiniteError, ShapeError, UnknownNameError
from facelab.morphface.geometry import axis_angle_to_matrix, matrix_to_euler

FORMAT = "facelab.morphface.style-params"
POSE_CONVENTIONS = ("euler", "axis-angle", "matrix")
_ALIASES = {"exp": "expression", "cam": "camera", "tex": "albedo"}


@dataclass
class StyleParams:
    """A batch of per-image style parameters (see the module docstring)."""

    shape: torch.Tensor
    expression: torch.Tensor
    pose: torch.Tensor
    camera: torch.Tensor
    light: torch.Tensor
    albedo: torch.Tensor

    def __post_init__(self) -> None:
        b = self.shape.shape[0] if self.shape.dim() == 2 else -1
        if self.light.dim() == 3:
            self.light = self.light.reshape(self.light.shape[0], -1)
        want = {"pose": 3, "camera": 3, "light": 27}
        for f in fields(self):
            t = getattr(self, f.name)
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] != b:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ShapeError(f"style {f.name}: expected ({max(b, 0)}, K) rows, got {got}")
            if f.name in want and t.shape[1] != want[f.name]:
                raise ShapeError(
                    f"style {f.name}: expected {want[f.name]} values per image, got {t.shape[1]}"
                )
            if not bool(torch.isfinite(t).all()):
                raise NonFiniteError(f"style {f.name}: expected finite values, got NaN/Inf")

    def __len__(self) -> int:
        return int(self.shape.shape[0])

    @property
    def layout(self) -> StyleLayout:
        return StyleLayout(self.shape.shape[1], self.expression.shape[1], self.albedo.shape[1])

    def to_vector(self) -> torch.Tensor:
        """(B, D) in the order shape, expression, pose, camera, light, albedo."""
        return torch.cat([getattr(self, f.name).float() for f in fields(self)], 1)

    def index(self, idx) -> StyleParams:
        return StyleParams(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def to(self, device=None, dtype=None) -> StyleParams:
        return StyleParams(
            **{f.name: getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)}
        )

    @staticmethod
    def cat(items: list[StyleParams]) -> StyleParams:
        return StyleParams(
            **{f.name: torch.cat([getattr(p, f.name) for p in items]) for f in fields(StyleParams)}
        )

    def save(
        self,
        path: str | os.PathLike,
        labels: torch.Tensor | None = None,
        images: list[str] | None = None,
    ) -> Path:
        """Write a parameter file (safetensors, pose convention "euler"; ``images``: the
        relative image path of every row)."""
        from safetensors.torch import save_file

        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f.name: getattr(self, f.name).float().contiguous() for f in fields(self)}
        if labels is not None:
            tensors["labels"] = labels.long().contiguous()
        tmp = p.with_name(f".{p.name}.tmp")
        meta = {"format": FORMAT, "pose_convention": "euler"}
        if images is not None:
            if len(images) != len(self):
                raise ShapeError(f"images: expected {len(self)} names, got {len(images)}")
            meta["images"] = json.dumps([str(n) for n in images])
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, p)
        return p


@dataclass(frozen=True)
class StyleLayout:
    """Sizes of a style vector's parts (shape, expression, albedo; pose 3, camera 3, light 27)."""

    num_shape: int
    num_expression: int
    num_albedo: int

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.num_shape, self.num_expression, 3, 3, 27, self.num_albedo)

    @property
    def dim(self) -> int:
        return sum(self.sizes)

    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for f, n in zip(fields(StyleParams), self.sizes):
            out[f.name] = slice(start, start + n)
            start += n
        return out

    def split(self, vectors: torch.Tensor) -> StyleParams:
        if vectors.dim() != 2 or vectors.shape[1] != self.dim:
            raise ShapeError(
                f"style vectors: expected (B, {self.dim}) for layout {self.sizes}, got "
                f"{tuple(vectors.shape)}"
            )
        return StyleParams(**{k: vectors[:, s] for k, s in self.slices().items()})

    def to_dict(self) -> dict[str, int]:
        return {
            "num_shape": self.num_shape,
            "num_expression": self.num_expression,
            "num_albedo": self.num_albedo,
        }


def default_light(n: int, intensity: float = 1.0) -> torch.Tensor:
    """(n, 27): a uniform white ambient light of the given irradiance (band 0 only)."""
    from facelab.morphface.shading import SH_CONST

    light = torch.zeros(n, 9, 3)
    light[:, 0] = intensity / SH_CONST[0]
    return light.reshape(n, 27)


def pose_to_euler(pose: torch.Tensor, convention: str) -> torch.Tensor:
    """Rotations in one of ``POSE_CONVENTIONS`` -> (N, 3) Euler angles (yaw, pitch, roll)."""
    if convention == "euler":
        if pose.dim() != 2 or pose.shape[1] != 3:
            raise ShapeError(f"pose (euler): expected (N, 3), got {tuple(pose.shape)}")
        return pose.float()
    if convention == "axis-angle":
        if pose.dim() != 2 or pose.shape[1] not in (3, 6):
            raise ShapeError(
                f"pose (axis-angle): expected (N, 3) or DECA's (N, 6), got {tuple(pose.shape)}"
            )
        return matrix_to_euler(axis_angle_to_matrix(pose[:, :3].double())).float()
    if convention == "matrix":
        n = pose.shape[0]
        if pose.dim() == 2 and pose.shape[1] in (9, 12):
            pose = pose.reshape(n, 3, -1)
        if pose.dim() != 3 or pose.shape[1] != 3 or pose.shape[2] not in (3, 4):
            raise ShapeError(
                f"pose (matrix): expected (N, 3, 3), (N, 9) or (N, 12), got {tuple(pose.shape)}"
            )
        r = pose[:, :, :3].double()
        scale = r.norm(dim=2, keepdim=True).clamp(min=1e-12)
        return matrix_to_euler(r / scale).float()
    raise UnknownNameError(
        f"pose_convention: expected one of {POSE_CONVENTIONS}, got {convention!r}"
    )


def load_params(path: str | os.PathLike) -> tuple[StyleParams, torch.Tensor | None, dict]:
    """Read a per-image parameter file -> (params, labels or None, info with ``images``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"style parameters: {p} does not exist")
    meta: dict[str, str] = {}
    images: list[str] | None = None
    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                raw = {k: np.array(z[k]) for k in z.files}
        except ValueError as exc:
            raise FormatError(f"{p}: not a plain .npz of arrays ({exc})") from None
        except Exception as exc:
            raise FormatError(f"{p}: not a readable .npz file ({exc})") from None
        if "pose_convention" in raw:
            meta["pose_convention"] = str(raw.pop("pose_convention"))
        if "images" in raw:
            images = [str(s) for s in raw.pop("images").reshape(-1)]
        arrays = {}
        for k, a in raw.items():
            if a.dtype.kind not in "uif":
                raise FormatError(f"{p}: array {k!r} has dtype {a.dtype}; expected numbers")
            arrays[k] = torch.from_numpy(a.astype(np.int64 if a.dtype.kind in "ui" else np.float32))
    else:
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                meta = dict(f.metadata() or {})
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise FormatError(f"{p}: not a readable safetensors file ({exc})") from None
        if meta.get("format") not in (None, FORMAT):
            raise FormatError(
                f"{p}: expected a style-parameter file, got format {meta['format']!r}"
            )
        if "images" in meta:
            try:
                images = [str(s) for s in json.loads(meta["images"])]
            except (json.JSONDecodeError, TypeError):
                raise FormatError(f"{p}: metadata 'images' is not a JSON list") from None
    arrays = {_ALIASES.get(k, k): v for k, v in arrays.items()}
    missing = [k for k in ("shape", "expression", "pose", "camera") if k not in arrays]
    if missing:
        raise FormatError(f"{p}: missing style arrays {missing}; found {sorted(arrays)}")
    n = arrays["shape"].shape[0]
    for k, v in arrays.items():
        if v.dim() == 0 or v.shape[0] != n:
            raise ShapeError(f"{p}: array {k!r} has {tuple(v.shape)}; expected {n} rows")
    conv = meta.get("pose_convention", "euler")
    pose = pose_to_euler(arrays["pose"].float(), conv)
    light = arrays.get("light")
    light = default_light(n) if light is None else light.float().reshape(n, -1)
    albedo = arrays.get("albedo")
    albedo = torch.zeros(n, 0) if albedo is None else albedo.float().reshape(n, -1)
    params = StyleParams(
        shape=arrays["shape"].float().reshape(n, -1),
        expression=arrays["expression"].float().reshape(n, -1),
        pose=pose,
        camera=arrays["camera"].float().reshape(n, -1),
        light=light,
        albedo=albedo,
    )
    labels = arrays.get("labels")
    if labels is not None:
        if labels.is_floating_point() or labels.dim() != 1:
            raise ShapeError(
                f"{p}: 'labels' must be (N,) integers, got {labels.dtype} {tuple(labels.shape)}"
            )
        labels = labels.long()
    if images is not None and len(images) != n:
        raise ShapeError(f"{p}: {len(images)} image names for {n} parameter rows")
    return params, labels, {"images": images, "pose_convention": conv}


__all__ = [
    "FORMAT",
    "POSE_CONVENTIONS",
    "StyleLayout",
    "StyleParams",
    "default_light",
    "load_params",
    "pose_to_euler",
]
