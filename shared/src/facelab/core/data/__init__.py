"""Datasets and data formats: toyfaces, identity folders, MXNet RecordIO, verification sets,
face alignment.

Names are re-exported lazily (PEP 562) so that importing one format never imports another's
dependencies (facenet-pytorch stays optional: only ``detect_and_align`` needs it).
"""

from __future__ import annotations

import importlib

_EXPORTS: dict[str, str] = {
    "ToyFaces": "toyfaces",
    "make_pairs": "toyfaces",
    "IdentityFolderDataset": "folders",
    "MXFaceDataset": "recordio",
    "MXRecordReader": "recordio",
    "MXRecordWriter": "recordio",
    "IRHeader": "recordio",
    "pack": "recordio",
    "unpack": "recordio",
    "load_bin": "verification",
    "write_bin": "verification",
    "read_pairs": "verification",
    "align_faces": "align",
    "detect_and_align": "align",
    "AlignResult": "align",
    "FaceDetector": "align",
    "ARCFACE_TEMPLATE": "align",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'facelab.core.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"facelab.core.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
