import json
import math

import pytest

from facelab.benchmarks import speed
from facelab.benchmarks.cli import main

FAKE_BENCH = """
def run_fakeok_bench(small):
    return [{"benchmark": "fake op", "ours": "a", "reference": "b", "ours/s": 4.0,
             "reference/s": 2.0, "speedup": 2.0, "note": f"small={small}"}]

def run_fakefail_bench(small):
    raise RuntimeError("kaput")

def run_fakemissing_bench(small):
    import facelab.nosuchpackage  # noqa: F401

def run_fakebad_bench(small):
    return [{"benchmark": "no other columns"}]
"""


def test_default_producers_resolve():
    """Every folded-in row producer (written by the method/core owners) imports and is callable;
    each is run by `facelab bench speed` (not here: together they take minutes on a busy CPU)."""
    found = {label: (m, names) for label, m, names in speed._benchmark_functions(small=True)}
    assert {"trainer overhead", "eval", "slerpface"} <= set(found)
    for label, (module, names) in found.items():
        assert callable(speed._resolve(module, names)), label


@pytest.fixture
def fake_producers(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "fake_speed_rows.py").write_text(FAKE_BENCH)
    monkeypatch.syspath_prepend(str(site))
    entries = [
        ("fake ok", "fake_speed_rows", ("run_absent", "run_fakeok_bench")),
        ("fake failing", "fake_speed_rows", ("run_fakefail_bench",)),
        ("fake missing package", "fake_speed_rows", ("run_fakemissing_bench",)),
        ("fake bad rows", "fake_speed_rows", ("run_fakebad_bench",)),
        ("fake no module", "facelab.benchmarks.nosuch_bench", ("run_nosuch_bench",)),
        ("fake no function", "fake_speed_rows", ("run_absent", "run_absent_too")),
    ]
    monkeypatch.setattr(speed, "_benchmark_functions", lambda small: entries)
    yield
    import sys

    sys.modules.pop("fake_speed_rows", None)


def test_speed_suite_small_writes_report(tmp_path, capsys, fake_producers):
    out = tmp_path / "speed"
    assert main(["speed", "--small", "--out", str(out), "--no-progress"]) == 1  # two failures
    data = json.loads((out / "results.json").read_text())
    assert data["suite"] == "speed"
    assert data["failed"] == ["fake failing", "fake bad rows"]
    rows = {r["benchmark"]: r for r in data["rows"]}
    assert rows["fake op"]["note"] == "small=True" and rows["fake op"]["speedup"] == 2.0
    assert rows["fake failing"]["note"] == "failed: RuntimeError: kaput"
    assert "row lacks columns" in rows["fake bad rows"]["note"]
    for name in ("fake missing package", "fake no module", "fake no function"):
        assert rows[name]["note"].startswith("not built"), rows[name]
        assert rows[name]["ours/s"] is None
    # the codec and the iresnet50 step are real, measured here
    codec = [r for r in data["rows"] if r["benchmark"].startswith("codec compact")]
    assert len(codec) == 4 and all(r["ours/s"] > 0 and r["speedup"] > 0 for r in codec)
    ref = [r for r in data["rows"] if r["benchmark"].startswith("codec reference")]
    assert len(ref) == 2 and all(r["ours/s"] > 0 for r in ref)
    assert "peak RSS not measured" in ref[0]["note"]  # --small: measured in this process
    assert float(ref[1]["note"].split("error ")[1]) < 1e-4  # the reference mode is exact
    (step,) = [r for n, r in rows.items() if n.startswith("iresnet50")]
    assert "batch 2" in step["benchmark"] and step["ours/s"] > 0 and step["speedup"] > 0
    gflop = float(step["note"].split(" GFLOP")[0].split("; ")[-1])
    assert 15 < gflop < 60  # iresnet50 at 112 px: ~6.3 GMAC forward, x2 FLOP/MAC, x3 with backward
    stages = [s["stage"] for s in data["timings"]["stages"]]
    assert stages == [
        "codec",
        *[
            n
            for n in [
                "fake ok",
                "fake failing",
                "fake missing package",
                "fake bad rows",
                "fake no module",
                "fake no function",
            ]
        ],
        "iresnet50 training step",
    ]
    md = (out / "report.md").read_text()
    assert "| benchmark |" in md and "## Machine" in md and "**Failed parts:**" in md
    assert math.isfinite(data["timings"]["cpu_s"])
