"""Converters from public 3DMM file formats to :class:`~facelab.morphface.morphable.
MorphableModel`.

* Basel Face Model 2009 in the Deep3DFaceRecon layout (``BFM_model_front.mat``, MATLAB v5,
  read with ``scipy.io.loadmat``, which executes nothing): ``meanshape`` (1, 3V) or (3V, 1),
  ``idBase`` (3V, 80), ``exBase`` (3V, 64), ``meantex`` (0..255), ``texBase`` (3V, 80),
  ``tri`` (F, 3) 1-based, ``keypoints`` (68,) 1-based. :func:`bfm_from_mat`.
* FLAME's ``.pkl`` holds chumpy objects; unpickling it safely needs a restricted unpickler that
  is not written yet: export FLAME's arrays (``v_template``, ``shapedirs``, ``f``) to the
  documented ``.npz`` instead.

``normalize`` (default): centre the mean shape on its bounding-box centre and scale it (and the
bases) so the vertical half extent is 1, the unit of the procedural head and of
``project``'s camera. Faces are reoriented so that, summed over the mesh, their normals point
towards +z (the camera) - a front-face model is not closed, so the volume test of closed meshes
does not apply.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from facelab.core.errors import FormatError
from facelab.morphface.morphable import MorphableModel

BFM_KEYS = ("meanshape", "idBase", "exBase", "tri")


def _orient_front(mean: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    tri = mean[faces]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    if float(n[:, 2].sum()) < 0:
        faces = faces[:, [0, 2, 1]]
    return faces


def bfm_from_mat(path: str | os.PathLike, *, normalize: bool = True) -> MorphableModel:
    """A Deep3DFaceRecon-layout BFM ``.mat`` file -> MorphableModel (see the module docstring)."""
    from scipy.io import loadmat

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"BFM: {p} does not exist")
    try:
        m = loadmat(str(p))
    except Exception as exc:
        raise FormatError(f"{p}: not a readable MATLAB .mat file ({exc})") from None
    missing = [k for k in BFM_KEYS if k not in m]
    if missing:
        raise FormatError(f"{p}: missing BFM arrays {missing}; found {sorted(m)}")

    def arr(key: str) -> np.ndarray:
        a = np.asarray(m[key])
        if a.dtype.kind not in "uif":
            raise FormatError(f"{p}: {key!r} has dtype {a.dtype}; expected numbers")
        return a

    mean = torch.from_numpy(arr("meanshape").astype(np.float32).reshape(-1, 3))
    nv = mean.shape[0]
    shape_basis = torch.from_numpy(arr("idBase").astype(np.float32))
    expr_basis = torch.from_numpy(arr("exBase").astype(np.float32))
    faces = torch.from_numpy(arr("tri").astype(np.int64)) - 1
    albedo_mean = albedo_basis = landmarks = None
    if "meantex" in m:
        albedo_mean = torch.from_numpy(arr("meantex").astype(np.float32).reshape(-1, 3)) / 255.0
    if "texBase" in m:
        albedo_basis = torch.from_numpy(arr("texBase").astype(np.float32)) / 255.0
    if "keypoints" in m:
        landmarks = torch.from_numpy(arr("keypoints").astype(np.int64).reshape(-1)) - 1
    if normalize:
        lo, hi = mean.min(0).values, mean.max(0).values
        scale = 2.0 / float(hi[1] - lo[1])
        mean = (mean - 0.5 * (lo + hi)) * scale
        shape_basis = shape_basis * scale
        expr_basis = expr_basis * scale
    model = MorphableModel(
        mean_shape=mean,
        shape_basis=shape_basis,
        expression_basis=expr_basis,
        faces=faces,
        albedo_mean=albedo_mean,
        albedo_basis=albedo_basis,
        landmarks=landmarks,
        name=p.stem,
        meta={"source": "bfm-mat", "normalized": str(bool(normalize))},
    )
    model.faces = _orient_front(model.mean_shape, model.faces)
    if nv != model.num_vertices:  # pragma: no cover - MorphableModel checks this
        raise FormatError(f"{p}: vertex count changed")
    return model


__all__ = ["BFM_KEYS", "bfm_from_mat"]
