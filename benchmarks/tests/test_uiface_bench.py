import math

from facelab.benchmarks.speed import COLUMNS
from facelab.benchmarks.uiface_bench import run_uiface_bench


def test_uiface_rows_small():
    rows = run_uiface_bench(small=True)
    assert [r["benchmark"].split(",")[0] for r in rows] == [
        "uiface two-stage + injection",
        "uiface two-stage adaptive (no injection)",
    ]
    for r in rows:
        assert list(r) == COLUMNS
        assert r["ours/s"] > 0 and r["reference/s"] > 0
        assert math.isclose(r["speedup"], r["ours/s"] / r["reference/s"], rel_tol=1e-9)
    # both rows are measured against the same single-stage reference run
    assert rows[0]["reference/s"] == rows[1]["reference/s"]
