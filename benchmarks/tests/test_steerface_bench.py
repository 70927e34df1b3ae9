"""The SteerFace speed rows: columns and consistent ratios (no timing thresholds)."""

import math

import pytest

pytest.importorskip("facelab.steerface")

from facelab.benchmarks.speed import COLUMNS
from facelab.benchmarks.steerface_bench import steer_rows


def test_steer_rows_columns_and_ratios():
    rows = steer_rows(256, d=64, repeat=1)
    assert [r["benchmark"] for r in rows] == [
        "steerface steer vs least work",
        "steerface steer vs core sphere",
    ]
    for r in rows:
        assert set(COLUMNS) <= set(r)
        assert r["ours/s"] > 0 and r["reference/s"] > 0
        assert math.isclose(r["speedup"], r["ours/s"] / r["reference/s"])
