import math

import numpy as np
import pytest

from facelab.benchmarks.rows import (
    METHOD_KEYS,
    check_method_row,
    failed_row,
    is_finite_row,
    not_built_row,
)
from facelab.core.errors import FacelabTypeError, FormatError


def good_row(**changes):
    row = {
        "method": "m",
        "accuracy": 0.91,
        "accuracy_std": 0.02,
        "tar_at_far_1e-3": 0.4,
        "attack_ssim": math.nan,
        "attack_psnr": math.nan,
        "attack_identity_leakage": math.nan,
        "bytes_per_image": 37632,
        "train_time_s": 3.0,
        "infer_images_per_s": 12.5,
        "notes": "",
    }
    row.update(changes)
    return row


def test_good_row_is_normalized_and_marked_ok():
    row = check_method_row(good_row(accuracy=np.float32(0.5), bytes_per_image=np.int64(7)), "m")
    assert row["status"] == "ok"
    assert set(row) == {*METHOD_KEYS, "status"}
    assert type(row["accuracy"]) is float and row["accuracy"] == 0.5
    assert type(row["bytes_per_image"]) is int and row["bytes_per_image"] == 7
    assert math.isnan(row["attack_ssim"])
    assert is_finite_row(row)


def test_nan_bytes_allowed_and_optional_entries_kept():
    row = check_method_row(
        good_row(bytes_per_image=math.nan, roc={"fpr": [0, 1], "tpr": [0, 1]}, grid="g.png"), "m"
    )
    assert math.isnan(row["bytes_per_image"])
    assert row["roc"] == {"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]}
    assert row["grid"] == "g.png"


@pytest.mark.parametrize(
    "row, error, match",
    [
        (
            {k: v for k, v in good_row().items() if k != "notes"},
            FormatError,
            "missing \\['notes'\\]",
        ),
        (good_row(extra=1), FormatError, "unknown \\['extra'\\]"),
        (good_row(accuracy="0.9"), FacelabTypeError, "accuracy"),
        (good_row(accuracy=True), FacelabTypeError, "accuracy"),
        (good_row(bytes_per_image=1.5), FormatError, "bytes_per_image"),
        (good_row(bytes_per_image=-1), FormatError, "bytes_per_image"),
        (good_row(notes=None), FacelabTypeError, "notes"),
        (good_row(roc={"fpr": [0, 1]}), FormatError, "roc"),
        (good_row(roc={"fpr": [0, 0.5, 1], "tpr": [0, 1]}), FormatError, "same length"),
        (good_row(roc={"fpr": [0, 2], "tpr": [0, 1]}), FormatError, "\\[0, 1\\]"),
        ([1, 2], FacelabTypeError, "dict rows"),
    ],
)
def test_contract_violations_raise(row, error, match):
    with pytest.raises(error, match=match):
        check_method_row(row, "m")


def test_not_built_and_failed_rows_carry_no_numbers():
    nb = not_built_row("x", "package missing")
    fr = failed_row("y", RuntimeError("bad\nthing " + "z" * 400))
    assert nb["status"] == "not built" and nb["notes"] == "package missing"
    assert fr["status"].startswith("failed: RuntimeError: bad thing")
    assert "\n" not in fr["status"] and len(fr["status"]) < 320
    for r in (nb, fr):
        assert set(METHOD_KEYS) <= set(r)
        assert all(math.isnan(r[k]) for k in ("accuracy", "tar_at_far_1e-3", "train_time_s"))
        assert not is_finite_row(r)
