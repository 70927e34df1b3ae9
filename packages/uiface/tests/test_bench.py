"""The seed aggregation of the FR claim: statistics vs NumPy, the per-seed gain, the table and
the flat rows; bad arguments of ``fr_claim`` fail before any work."""

from __future__ import annotations

import numpy as np
import pytest

from facelab.core.errors import RangeError
from facelab.uiface.bench import aggregate, fr_claim, markdown, quality_rows


def _per_seed():
    rng = np.random.default_rng(0)
    out = {}
    for seed in (0, 1, 2):
        out[seed] = {
            v: {
                "fr_accuracy": float(rng.uniform(0.6, 0.9)),
                "pixel_diversity": float(rng.uniform(0.1, 0.3)),
                "genuine_cos": float("nan") if v == "single-stage" and seed == 1 else 0.5,
            }
            for v in ("single-stage", "uiface")
        }
    return out


def test_aggregate_matches_numpy_and_reports_the_gain():
    per = _per_seed()
    res = aggregate(per)
    for v in ("single-stage", "uiface"):
        vals = np.array([per[s][v]["fr_accuracy"] for s in (0, 1, 2)])
        row = res["rows"][v]["fr_accuracy"]
        assert row["values"] == vals.tolist()
        assert row["mean"] == pytest.approx(vals.mean())
        assert row["std"] == pytest.approx(vals.std(ddof=1))
    # a metric with a NaN on one seed is left out of that row, kept in the other
    assert "genuine_cos" not in res["rows"]["single-stage"]
    assert res["rows"]["uiface"]["genuine_cos"]["std"] == 0.0
    gain = [per[s]["uiface"]["fr_accuracy"] - per[s]["single-stage"]["fr_accuracy"] for s in per]
    assert res["claim"]["fr_gain"]["values"] == pytest.approx(gain)
    assert res["claim"]["holds_every_seed"] == all(g > 0 for g in gain)
    md = markdown(res)
    assert md.count("\n| ") == 2 and "FR gain uiface - single-stage" in md
    rows = quality_rows(res)
    assert [r["variant"] for r in rows] == ["single-stage", "uiface"]
    assert rows[1]["fr_accuracy_mean"] == pytest.approx(
        np.mean([per[s]["uiface"]["fr_accuracy"] for s in per])
    )


def test_fr_claim_refuses_bad_arguments(tmp_path):
    with pytest.raises(RangeError, match="seeds"):
        fr_claim(tmp_path, tmp_path / "o", seeds=())
    with pytest.raises(RangeError, match="variants"):
        fr_claim(tmp_path, tmp_path / "o", variants=("nope",))
    assert not (tmp_path / "o").exists()
