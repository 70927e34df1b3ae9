import math

from facelab.benchmarks.speed import COLUMNS
from facelab.benchmarks.synth_bench import run_synth_bench


def test_synth_rows_small():
    rows = run_synth_bench(small=True)
    assert [r["benchmark"].split(",")[0] for r in rows] == [
        "synth sampling loop",
        "synth attention logits explicit",
        "synth attention recording",
    ]
    for r in rows:
        assert list(r) == COLUMNS
        assert r["ours/s"] > 0 and r["reference/s"] > 0
        assert math.isclose(r["speedup"], r["ours/s"] / r["reference/s"], rel_tol=1e-9)
