"""`facelab minusface train | protect | embed | eval | attack` end to end on toyfaces."""

import json

import pytest
import torch
from safetensors.torch import load_file

from facelab.minusface.cli import main
from facelab.minusface.protocol import ProtectedImages

TINY = [
    "--preset",
    "toy",
    "--data.toy-identities",
    "6",
    "--data.toy-images-per-identity",
    "4",
    "--data.eval-identities",
    "6",
    "--data.eval-images-per-identity",
    "4",
    "--data.eval-pairs",
    "40",
    "--generator-widths",
    "4",
    "8",
    "--base-width",
    "4",
    "--embedding-size",
    "8",
    "--stage1.max-steps",
    "2",
    "--stage1.batch-size",
    "8",
    "--stage1.warmup",
    "0",
    "--stage2.max-steps",
    "2",
    "--stage2.batch-size",
    "8",
    "--stage2.warmup",
    "0",
    "--stage1.no-progress",
    "--stage2.no-progress",
]


def test_cli_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--output-dir", str(run), "--n-duplicates", "2"]) == 0
    for sub in ("generator", "stage1_recognizer", "recognizer", "baseline/model"):
        assert (run / sub / "config.json").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["verification"]) == {"stage1", "minusface", "baseline"}

    pngs = tmp_path / "png"
    payload = tmp_path / "payload.safetensors"
    assert (
        main(
            [
                "protect",
                "--model",
                str(run),
                "--out",
                str(pngs),
                "--payload",
                str(payload),
                "--n-duplicates",
                "2",
                "--toy-identities",
                "3",
                "--toy-images-per-identity",
                "2",
            ]
        )
        == 0
    )
    files = sorted(pngs.rglob("*.png"))
    assert len(files) == 6
    sent = ProtectedImages.load(payload)
    assert sent.n_duplicates == 2 and len(sent) == 6
    assert torch.equal(ProtectedImages.from_pngs(files, 2).images, sent.images)

    assert (
        main(
            [
                "embed",
                "--model",
                str(run),
                "--protected",
                str(pngs),
                "--out",
                str(tmp_path / "a.safetensors"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "embed",
                "--model",
                str(run / "recognizer"),
                "--protected",
                str(payload),
                "--out",
                str(tmp_path / "b.safetensors"),
            ]
        )
        == 0
    )
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a["embeddings"].shape == (6, 8)
    torch.testing.assert_close(a["embeddings"], b["embeddings"])

    assert (
        main(
            [
                "eval",
                "--run",
                str(run),
                "--eval-identities",
                "6",
                "--eval-images-per-identity",
                "3",
                "--eval-pairs",
                "20",
                "--out",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "minusface" in table and "stage1 (residue)" in table and "baseline" in table
    assert set(json.loads((tmp_path / "eval.json").read_text())) == {
        "minusface",
        "stage1 (residue)",
        "baseline (RGB ArcFace)",
    }

    assert (
        main(
            [
                "attack",
                "--run",
                str(run),
                "--train-identities",
                "4",
                "--train-images-per-identity",
                "2",
                "--test-identities",
                "3",
                "--test-images-per-identity",
                "2",
                "--steps",
                "2",
                "--width",
                "4",
                "--depth",
                "1",
                "--far",
                "0.5",
                "--out",
                str(tmp_path / "attack.json"),
                "--grid",
                str(tmp_path / "grid.png"),
            ]
        )
        == 0
    )
    rows = json.loads((tmp_path / "attack.json").read_text())["rows"]
    assert [r["attack"] for r in rows] == ["mean image", "X_p (shuffled)", "X_p without shuffling"]
    assert all(r["observation"] != "none" for r in rows[1:])
    assert (tmp_path / "grid.png").is_file()


def test_cli_errors(tmp_path, capsys):
    assert main([]) == 0
    assert "protect" in capsys.readouterr().out
    assert main(["unknown"]) == 2
    assert main(["protect", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "expected a run directory" in capsys.readouterr().err
    assert main(["train", "--preset", "nope"]) == 2
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
