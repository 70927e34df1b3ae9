import math

from facelab.ariba.bench import model_shapes, speed_rows

COLUMNS = ["benchmark", "ours", "reference", "ours/s", "reference/s", "speedup", "note"]


def test_speed_rows_small():
    rows = speed_rows(small=True)
    assert len(rows) == 2
    for r in rows:
        assert list(r) == COLUMNS
        assert r["ours/s"] > 0 and r["reference/s"] > 0 and math.isfinite(r["speedup"])
    # the full-size layout is the advertised 1M parameters
    n = sum(math.prod(s) for s in model_shapes(1_000_000).values())
    assert 1_000_000 <= n < 1_001_000
