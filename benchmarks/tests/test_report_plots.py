import json
import math

import numpy as np
import pytest
import torch

from facelab.benchmarks.plots import (
    collect_grids,
    plot_accuracy_vs_leakage,
    plot_rocs,
    roc_from_rates,
)
from facelab.benchmarks.report import SuiteResult, jsonable, markdown_table
from facelab.core.errors import ShapeError

PNG = b"\x89PNG\r\n\x1a\n"


def test_jsonable_turns_non_finite_into_null():
    obj = {
        "a": math.nan,
        "b": [math.inf, 1.5, (2, -math.inf)],
        "c": np.float32(0.5),
        "d": torch.tensor(3),
    }
    assert jsonable(obj) == {"a": None, "b": [None, 1.5, [2, None]], "c": 0.5, "d": 3}
    json.dumps(jsonable(obj), allow_nan=False)  # raises if anything non-finite is left


def test_markdown_table_headers_and_cells():
    rows = [{"m": "a|b", "x": math.nan, "y": 0.123456}, {"m": "c", "x": 2.0}]
    text = markdown_table(["m", "x", "y"], rows, {"x": "X value"})
    assert text.splitlines() == [
        "| m | X value | y |",
        "|---|---|---|",
        "| a/b | n/a | 0.1235 |",
        "| c | 2 |  |",
    ]


def test_suite_result_write(tmp_path):
    res = SuiteResult(
        suite="demo",
        columns=["method", "accuracy"],
        headers={"accuracy": "acc"},
        rows=[{"method": "x", "accuracy": math.nan}],
        settings={"seed": 3, "sizes": (1, 2)},
        notes=["a note"],
        plots=["roc.png"],
        failed=["x"],
        sections=[("Extra", "body text")],
        timings={
            "wall_s": 1.0,
            "cpu_s": 0.5,
            "stages": [{"stage": "s", "wall_s": 1, "cpu_s": 0.5, "status": "ok"}],
        },
        extra={"roc": {"x": {"auc": 0.5}}},
    )
    path = res.write(tmp_path)
    md = path.read_text()
    for text in (
        "# facelab bench demo",
        "| method | acc |",
        "| x | n/a |",
        "**Failed parts:** x",
        "- a note",
        "## Extra",
        "body text",
        '"seed": 3',
        "## Versions",
        "- facelab-core ",
        "## Machine",
        "- s: 1.0 s wall",
        "![roc.png](roc.png)",
    ):
        assert text in md, text
    data = json.loads((tmp_path / "results.json").read_text(), parse_constant=lambda c: 1 / 0)
    assert data["rows"] == [{"method": "x", "accuracy": None}]
    assert data["settings"]["sizes"] == [1, 2] and data["roc"] == {"x": {"auc": 0.5}}
    assert data["failed"] == ["x"] and "facelab-benchmarks" in data["versions"]


def test_roc_from_rates_sorts_and_matches_sklearn_auc():
    from sklearn.metrics import auc

    c = roc_from_rates([1.0, 0.0, 0.2, 0.2], [1.0, 0.0, 0.7, 0.5])
    assert c.fpr.tolist() == [0.0, 0.2, 0.2, 1.0] and c.tpr.tolist() == [0.0, 0.5, 0.7, 1.0]
    assert c.auc == pytest.approx(auc([0, 0.2, 0.2, 1], [0, 0.5, 0.7, 1]))
    with pytest.raises(ShapeError):
        roc_from_rates([0.0], [0.0])
    with pytest.raises(ShapeError):
        roc_from_rates([0.0, 1.0], [0.0, 0.5, 1.0])


def test_plots_write_png_or_nothing(tmp_path):
    assert plot_rocs({}, tmp_path / "r.png", "t") is None
    p = plot_rocs({"a": roc_from_rates([0, 0.01, 1], [0, 0.5, 1])}, tmp_path / "r.png", "t")
    assert p.read_bytes()[:8] == PNG
    rows = [{"method": "a", "accuracy": math.nan, "attack_identity_leakage": 0.3}]
    assert plot_accuracy_vs_leakage(rows, tmp_path / "s.png", title="t") is None
    rows.append({"method": "b", "accuracy": 0.9, "attack_identity_leakage": 0.2})
    p = plot_accuracy_vs_leakage(rows, tmp_path / "s.png", title="t", reference_leakage={"m": 0.4})
    assert p.read_bytes()[:8] == PNG


def test_collect_grids_prefers_row_entries(tmp_path):
    from PIL import Image

    work, out = tmp_path / "work", tmp_path / "out"
    (work / "sub").mkdir(parents=True)
    out.mkdir()
    Image.new("RGB", (4, 4)).save(work / "sub" / "a.png")
    Image.new("RGB", (6, 6)).save(work / "named.png")
    got = collect_grids("m x", [{"grid": str(work / "named.png")}], work, out)
    assert [g.name for g in got] == ["grid_m_x.png"] and Image.open(got[0]).size == (6, 6)
    got = collect_grids("m", [{}], work, out)  # no row entry: every PNG under the workdir
    assert sorted(g.name for g in got) == ["grid_m.png", "grid_m_1.png"]
