import json

from facelab.core.cli import main as facelab


def test_train_command_reports_accuracy_and_epsilon(tmp_path, capsys):
    out = tmp_path / "run.json"
    rc = facelab(
        [
            "vflafe",
            "train",
            "--mode",
            "plain",
            "--target-epsilon",
            "4",
            "--epochs",
            "2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["mode"] == "plain" and 3.98 <= res["epsilon"] <= 4.0 and res["releases"] == 2
    assert res["inference_noise_multiplier"] < res["noise_multiplier"]
    assert "epsilon 3.9" in capsys.readouterr().out


def test_compare_writes_table_json_and_plot(tmp_path):
    rc = facelab(
        ["vflafe", "compare", "--variants", "plain", "afe", "--epsilons", "8", "--seeds", "0",
         "--epochs", "1", "--no-attacks", "--out", str(tmp_path)]
    )  # fmt: skip
    assert rc == 0
    table = (tmp_path / "table.md").read_text()
    assert "| plain | 1 | 8 |" in table and "| afe | 1 | 8 |" in table
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {r["variant"] for r in rows} == {"plain", "afe"}
    assert (tmp_path / "privacy_utility.png").stat().st_size > 1000


def test_bad_input_ends_with_one_error_line(capsys):
    for argv, what in (
        (["vflafe", "train", "--clip-norm", "0"], "clip_norm"),
        (["vflafe", "train", "--mode", "plain", "--noise-multiplier", "-1"], "noise_multiplier"),
        (["vflafe", "train", "--mode", "plain", "--target-epsilon", "1e-9"], "cannot be reached"),
        (["vflafe", "flower", "--dataset", "toyfaces"], "toyfaces"),
    ):
        assert facelab(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("facelab vflafe: error:") and what in err[0]
