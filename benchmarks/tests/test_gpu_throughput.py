"""The GPU throughput script runs end to end on CPU at a tiny size (its numbers mean nothing
here; on a GPU it is `python -m facelab.benchmarks.gpu_throughput`)."""

from __future__ import annotations

import json
import math

import pytest

from facelab.benchmarks import gpu_throughput as gt
from facelab.core.errors import UnknownNameError


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),  # the SXM card's own name
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("Quadro RTX 6000", None),
    ],
)
def test_data_sheet_peak_by_device_name(name, peak):
    assert gt.spec_peak_tflops(name) == peak


def test_rows_on_cpu_at_a_tiny_size(tmp_path, capsys):
    rc = gt.main(
        [
            "--batch-sizes", "4",
            "--variants", "baseline", "+fused",
            "--backbone", "r18", "--input-size", "32", "--classes", "10",
            "--steps", "2", "--warmup", "1",
            "--out", str(tmp_path),
        ]
    )  # fmt: skip
    assert rc == 0
    rows = json.loads((tmp_path / "throughput.json").read_text())
    assert [(r["batch"], r["variant"]) for r in rows] == [(4, "baseline"), (4, "+fused")]
    for r in rows:
        assert r["images/s"] > 0 and r["error"] == ""
        assert math.isclose(r["TFLOP/s"], r["images/s"] * r["GFLOP/image"] / 1e3, rel_tol=1e-9)
        assert 0 < r["MFU (measured matmul)"]
    assert "| 4 | +fused |" in capsys.readouterr().out


def test_unknown_variant_is_an_error():
    with pytest.raises(UnknownNameError, match="variant"):
        gt.trainer_throughput(4, "+magic")
