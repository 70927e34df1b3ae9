"""The row contract between method packages and the cross-method suites.

Each method package exposes ``facelab.<m>.quick.run_quick(*, small, seed, workdir, progress)``
returning rows with exactly the keys of :data:`METHOD_KEYS` (NaN where a value does not apply).
Two optional keys are understood as well: ``"roc"`` (``{"fpr": [...], "tpr": [...]}``, drawn in
the ROC plot) and ``"grid"`` (the path of a PNG of inversion reconstructions, copied next to the
report). The suite adds ``"status"``: ``"ok"``, ``"not built"`` or ``"failed: <error>"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from facelab.core.errors import FacelabTypeError, FormatError

#: the keys every run_quick row carries (the contract)
METHOD_KEYS: tuple[str, ...] = (
    "method",
    "accuracy",
    "accuracy_std",
    "tar_at_far_1e-3",
    "attack_ssim",
    "attack_psnr",
    "attack_identity_leakage",
    "bytes_per_image",
    "train_time_s",
    "infer_images_per_s",
    "notes",
)
OPTIONAL_KEYS: tuple[str, ...] = ("roc", "grid")
FLOAT_KEYS: tuple[str, ...] = (
    "accuracy",
    "accuracy_std",
    "tar_at_far_1e-3",
    "attack_ssim",
    "attack_psnr",
    "attack_identity_leakage",
    "train_time_s",
    "infer_images_per_s",
)
#: metrics that must be finite in a built method's row (the rest may be NaN = not applicable)
CORE_METRICS: tuple[str, ...] = ("accuracy", "accuracy_std", "tar_at_far_1e-3", "train_time_s")

#: columns of the quick/ppfr/templates tables: (row key, header)
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("method", "method"),
    ("status", "status"),
    ("accuracy", "accuracy"),
    ("tar_at_far_1e-3", "TAR@FAR=1e-3"),
    ("attack_ssim", "inversion SSIM"),
    ("attack_psnr", "inversion PSNR (dB)"),
    ("attack_identity_leakage", "identity leakage"),
    ("bytes_per_image", "bytes/image"),
    ("train_time_s", "train s"),
    ("infer_images_per_s", "infer img/s"),
    ("notes", "notes"),
)

NAN = float("nan")


def empty_row(method: str, status: str, notes: str = "") -> dict[str, Any]:
    """A row with every metric NaN (a method that is not built or failed)."""
    row: dict[str, Any] = {k: NAN for k in METHOD_KEYS}
    row.update(method=method, status=status, notes=notes)
    return row


def not_built_row(method: str, reason: str = "") -> dict[str, Any]:
    return empty_row(method, "not built", reason)


def failed_row(method: str, error: BaseException | str) -> dict[str, Any]:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    text = " ".join(str(text).split())  # one line in the table
    if len(text) > 300:
        text = text[:297] + "..."
    return empty_row(method, f"failed: {text}")


def _number(value: Any, key: str, method: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        # numpy / torch scalars are fine; anything else is a contract violation
        try:
            import numpy as np

            if isinstance(value, np.generic) and np.issubdtype(type(value), np.number):
                return float(value)
        except ImportError:  # pragma: no cover - numpy is always installed with torch
            pass
        raise FacelabTypeError(
            f"{method}: row[{key!r}] must be a number (NaN if not applicable), got "
            f"{type(value).__name__} {value!r}"
        )
    return float(value)


def _roc(value: Any, method: str) -> dict[str, list[float]]:
    if not isinstance(value, Mapping) or "fpr" not in value or "tpr" not in value:
        raise FormatError(f"{method}: row['roc'] must be {{'fpr': [...], 'tpr': [...]}}")
    fpr = [float(v) for v in value["fpr"]]
    tpr = [float(v) for v in value["tpr"]]
    if len(fpr) != len(tpr) or len(fpr) < 2:
        raise FormatError(
            f"{method}: row['roc'] needs fpr and tpr of the same length >= 2, got "
            f"{len(fpr)} and {len(tpr)}"
        )
    if not all(0.0 <= v <= 1.0 for v in fpr + tpr):
        raise FormatError(f"{method}: row['roc'] rates must lie in [0, 1]")
    return {"fpr": fpr, "tpr": tpr}


def check_method_row(row: Any, method: str) -> dict[str, Any]:
    """Validate one ``run_quick`` row; return a normalized copy with ``status="ok"``.

    Missing keys, unknown keys or values of the wrong type raise ``FormatError`` /
    ``FacelabTypeError`` (the suite turns them into a "failed" row).
    """
    if not isinstance(row, Mapping):
        raise FacelabTypeError(
            f"{method}: run_quick must return dict rows, got {type(row).__name__}"
        )
    missing = [k for k in METHOD_KEYS if k not in row]
    unknown = sorted(set(row) - set(METHOD_KEYS) - set(OPTIONAL_KEYS))
    if missing or unknown:
        raise FormatError(
            f"{method}: run_quick row keys differ from the contract: missing {missing}, "
            f"unknown {unknown}"
        )
    out: dict[str, Any] = {"method": str(row["method"]), "status": "ok"}
    for k in FLOAT_KEYS:
        out[k] = _number(row[k], k, method)
    b = row["bytes_per_image"]
    if isinstance(b, float) and math.isnan(b):
        out["bytes_per_image"] = NAN
    else:
        bf = _number(b, "bytes_per_image", method)
        if not (math.isfinite(bf) and bf >= 0 and bf == int(bf)):
            raise FormatError(
                f"{method}: row['bytes_per_image'] must be a non-negative int, got {b!r}"
            )
        out["bytes_per_image"] = int(bf)
    if not isinstance(row["notes"], str):
        raise FacelabTypeError(
            f"{method}: row['notes'] must be a str, got {type(row['notes']).__name__}"
        )
    out["notes"] = row["notes"]
    if "roc" in row and row["roc"] is not None:
        out["roc"] = _roc(row["roc"], method)
    if "grid" in row and row["grid"] is not None:
        out["grid"] = str(row["grid"])
    return out


def is_finite_row(row: Mapping[str, Any], keys: tuple[str, ...] = CORE_METRICS) -> bool:
    return all(isinstance(row.get(k), int | float) and math.isfinite(row[k]) for k in keys)
