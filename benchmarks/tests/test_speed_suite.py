import json
import math

from facelab.benchmarks.cli import main


def test_speed_suite_small_writes_report(tmp_path, capsys):
    out = tmp_path / "speed"
    assert main(["speed", "--small", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["suite"] == "speed"
    names = [r["benchmark"] for r in data["rows"]]
    assert any("compact" in n for n in names) and any("reference" in n for n in names)
    for row in data["rows"]:
        assert math.isfinite(row["ours/s"]) and row["ours/s"] > 0
    assert "| benchmark |" in (out / "report.md").read_text()
