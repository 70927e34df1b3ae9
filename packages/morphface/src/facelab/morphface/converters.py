"""Converters from public 3DMM file formats to :class:`~facelab.morphface.morphable.
MorphableModel`.

* Basel Face Model 2009 in the Deep3DFaceRecon layout (``BFM_model_front.mat``, MATLAB v5,
  read with ``scipy.io.loadmat``, which executes nothing): ``meanshape`` (1, 3V) or (3V, 1),
  ``idBase`` (3V, 80), ``exBase`` (3V, 64), ``meantex`` (0..255), ``texBase`` (3V, 80),
  ``tri`` (F, 3) 1-based, ``keypoints`` (68,) 1-based. :func:`bfm_from_mat`.
* FLAME (``generic_model.pkl``, a Python pickle): read by :func:`flame_from_pkl` with a
  restricted unpickler (:func:`safe_load_pickle`) that builds only numpy arrays / dtypes /
  scalars, scipy sparse matrices (``J_regressor``) and plain containers; any other global
  (chumpy's ``Ch`` objects of the original release, or anything executable) is refused with a
  :class:`~facelab.core.errors.FormatError` naming it. Used: ``v_template`` (V, 3), ``shapedirs``
  (V, 3, K; the first ``num_shape`` identity modes, the rest expression: FLAME 2020 has 300 +
  100), ``f`` (F, 3, 0-based). A chumpy file has to be re-saved with plain arrays first.

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


# globals a FLAME pickle may name: numpy's array / dtype / scalar reconstruction (numpy 1.x and
# 2.x module paths), scipy's sparse matrix classes, and copyreg's reconstructor of new-style
# objects (checked again: it may only rebuild an allowed class)
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy")
_NUMPY_NAMES = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
_SPARSE_CLASSES = ("csc_matrix", "csr_matrix", "coo_matrix", "csc_array", "csr_array", "coo_array")
_SPARSE_MODULES = (
    "scipy.sparse",
    "scipy.sparse.csc",
    "scipy.sparse._csc",
    "scipy.sparse.csr",
    "scipy.sparse._csr",
    "scipy.sparse.coo",
    "scipy.sparse._coo",
    "scipy.sparse._arrays",
)


def _allowed_global(module: str, name: str):
    """The object an allowed pickle global names, or None."""
    import importlib

    if name == "object" and module in ("builtins", "__builtin__"):  # copyreg's base argument
        return object
    if (module, name) == ("_codecs", "encode"):  # bytes in protocol 0-2 pickles of Python 3
        import codecs

        return codecs.encode
    if (module, name) in _NUMPY_NAMES:
        mod = importlib.import_module(module)
        return getattr(mod, name)
    if module in _SPARSE_MODULES and name in _SPARSE_CLASSES:
        import scipy.sparse as sp

        return getattr(sp, name)
    if module.startswith("numpy") and name.endswith("DType") and module.endswith("dtypes"):
        mod = importlib.import_module(module)  # numpy 2's dtype classes (numpy.dtypes.Float64DType)
        return getattr(mod, name)
    return None


def safe_load_pickle(path: str | os.PathLike, *, what: str = "pickle") -> object:
    """Unpickle ``path`` allowing only numpy arrays / dtypes / scalars, scipy sparse matrices and
    plain containers (dict, list, tuple, str, numbers); anything else -> FormatError naming the
    global it asked for. Python 2 pickles are read with ``encoding="latin1"``."""
    import copyreg
    import pickle

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: {p} does not exist")
    allowed_classes: set[type] = set()

    def reconstructor(cls, base, state):
        if cls not in allowed_classes or base is not object:
            raise FormatError(
                f"{p}: refuses to rebuild {getattr(cls, '__name__', cls)!r} from a {what} "
                "(only numpy arrays, scipy sparse matrices and plain containers are read)"
            )
        return copyreg._reconstructor(cls, base, state)

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) in (("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor")):
                return reconstructor
            obj = _allowed_global(module, name)
            if obj is None:
                hint = ""
                if module.split(".")[0] == "chumpy":
                    hint = (
                        " (chumpy objects, as in the original FLAME release: re-save the file "
                        "with plain numpy arrays first)"
                    )
                raise FormatError(
                    f"{p}: the {what} asks for {module}.{name}, which is not unpickled; only "
                    f"numpy arrays, scipy sparse matrices and plain containers are read{hint}"
                )
            if isinstance(obj, type):
                allowed_classes.add(obj)
            return obj

    try:
        with p.open("rb") as fh:
            return Restricted(fh, encoding="latin1").load()
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"{p}: not a readable {what} ({type(exc).__name__}: {exc})") from None


def flame_from_pkl(
    path: str | os.PathLike, *, num_shape: int = 300, normalize: bool = True
) -> MorphableModel:
    """A FLAME ``generic_model.pkl`` (plain numpy arrays) -> MorphableModel: mean
    ``v_template``, the first ``num_shape`` modes of ``shapedirs`` as the identity basis and the
    rest as the expression basis, ``f`` as faces (no albedo, no landmarks: FLAME keeps those in
    other files). Faces are oriented outwards (positive signed volume: FLAME is a head)."""
    p = Path(path)
    doc = safe_load_pickle(p, what="FLAME pickle")
    if not isinstance(doc, dict):
        raise FormatError(f"{p}: expected a dict of FLAME arrays, got {type(doc).__name__}")
    missing = [k for k in ("v_template", "shapedirs", "f") if k not in doc]
    if missing:
        raise FormatError(f"{p}: missing FLAME arrays {missing}; found {sorted(doc)}")

    def arr(key: str) -> np.ndarray:
        a = doc[key]
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "uif":
            raise FormatError(
                f"{p}: {key!r} must be a numeric numpy array, got {type(a).__name__}"
                + (f" of {a.dtype}" if isinstance(a, np.ndarray) else "")
            )
        return a

    v = arr("v_template")
    dirs = arr("shapedirs")
    f = arr("f")
    if v.ndim != 2 or v.shape[1] != 3:
        raise FormatError(f"{p}: 'v_template' must be (V, 3), got {v.shape}")
    nv = v.shape[0]
    if dirs.ndim != 3 or dirs.shape[:2] != (nv, 3):
        raise FormatError(f"{p}: 'shapedirs' must be ({nv}, 3, K), got {dirs.shape}")
    k = dirs.shape[2]
    if not 1 <= num_shape < k:
        raise FormatError(
            f"num_shape: expected 1 <= num_shape < {k} (shapedirs has {k} modes: identity "
            f"then expression), got {num_shape}"
        )
    mean = torch.from_numpy(v.astype(np.float32))
    basis = torch.from_numpy(dirs.astype(np.float32).reshape(nv * 3, k))
    shape_basis, expr_basis = basis[:, :num_shape], basis[:, num_shape:]
    faces = torch.from_numpy(f.astype(np.int64))
    if normalize:
        mean, shape_basis, expr_basis = _normalize(mean, shape_basis, expr_basis)
    model = MorphableModel(
        mean_shape=mean,
        shape_basis=shape_basis.contiguous(),
        expression_basis=expr_basis.contiguous(),
        faces=faces,
        name=p.stem,
        meta={"source": "flame-pkl", "normalized": str(bool(normalize))},
    )
    tri = model.mean_shape.double()[model.faces]
    volume = float((tri[:, 0] * torch.linalg.cross(tri[:, 1], tri[:, 2], dim=-1)).sum())
    if volume < 0:
        model.faces = model.faces[:, [0, 2, 1]]
    return model


def _normalize(mean: torch.Tensor, *bases: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Centre on the bounding-box centre, scale the vertical half extent to 1 (bases alike)."""
    lo, hi = mean.min(0).values, mean.max(0).values
    scale = 2.0 / float(hi[1] - lo[1])
    return ((mean - 0.5 * (lo + hi)) * scale, *(b * scale for b in bases))


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
        mean, shape_basis, expr_basis = _normalize(mean, shape_basis, expr_basis)
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


__all__ = ["BFM_KEYS", "bfm_from_mat", "flame_from_pkl", "safe_load_pickle"]
