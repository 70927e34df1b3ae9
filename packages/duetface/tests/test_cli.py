"""``facelab duetface train | embed | eval | attack`` end to end on toyfaces (tiny settings)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from facelab.duetface.cli import main


def stage_flags(prefix: str, out) -> list[str]:
    return [
        f"--{prefix}.output-dir", str(out),
        f"--{prefix}.epochs", "2",
        f"--{prefix}.milestones", "1",
        f"--{prefix}.warmup", "0",
        f"--{prefix}.batch-size", "16",
        f"--{prefix}.no-progress",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    argv = [
        "train", "--preset", "toy",
        "--data.toy-identities", "8", "--data.toy-images-per-identity", "4",
        "--data.eval-identities", "6", "--data.eval-images-per-identity", "4",
        "--data.eval-pairs", "40",
        *stage_flags("client-train", root / "a"),
        *stage_flags("server-train", root / "b"),
        "--output-dir", str(root / "bundle"),
    ]  # fmt: skip
    assert main(argv) == 0
    return root


def test_train_writes_the_bundle_and_metrics(bundle):
    out = bundle / "bundle"
    assert {p.name for p in out.iterdir()} >= {
        "client", "client_masks", "server", "duetface.json", "metrics.json",
    }  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stage_a"]["steps"] == 4 and metrics["stage_b"]["steps"] == 4
    assert "toy-heldout" in metrics["verification"]
    assert metrics["config"]["data"]["image_size"] == 32


def test_embed_eval_attack(bundle, capsys):
    from facelab.core.data.toyfaces import ToyFaces

    folder = ToyFaces(3, 2, size=32, identity_offset=4_000_000).write_folders(bundle / "faces")
    out = bundle / "emb.safetensors"
    payload = bundle / "payload.safetensors"
    argv = ["embed", "--model", str(bundle / "bundle"), "--images", str(folder), "--out", str(out)]
    assert main([*argv, "--payload-out", str(payload), "--payload-dtype", "float16"]) == 0
    t = load_file(str(out))
    assert t["embeddings"].shape == (6, 64) and torch.equal(
        t["labels"], torch.arange(3).repeat_interleave(2)
    )
    from facelab.duetface import ServerPayload

    p = ServerPayload.from_bytes(payload.read_bytes())
    assert p.high_freq.dtype == torch.float16 and p.high_freq.shape == (6, 162, 32, 32)

    assert main(["eval", "--model", str(bundle / "bundle"), "--data.eval-pairs", "40",
                 "--data.eval-identities", "6", "--data.eval-images-per-identity", "4",
                 "--out", str(bundle / "eval.json")]) == 0  # fmt: skip
    rows = json.loads((bundle / "eval.json").read_text())["rows"]
    assert rows[0]["set"] == "toy-heldout" and 0 <= rows[0]["accuracy"] <= 1

    assert main(["attack", "--model", str(bundle / "bundle"), "--train-identities", "4",
                 "--test-identities", "2", "--images-per-identity", "4", "--steps", "3",
                 "--width", "4", "--out", str(bundle / "attack")]) == 0  # fmt: skip
    report = json.loads((bundle / "attack" / "attack.json").read_text())
    assert [r["attack"] for r in report["attacks"]] == [
        "mean image",
        "rgb",
        "payload",
        "high_freq",
        "masks",
    ]
    assert (bundle / "attack" / "attack_grid.png").is_file()
    assert report["idct_views"]["client_only_ssim"] > report["idct_views"]["server_only_ssim"]
    printed = capsys.readouterr().out
    assert "payload" in printed and "bytes per image" in printed


def test_usage_and_errors(bundle, tmp_path, capsys):
    assert main([]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["nope"]) == 2
    from facelab.core.data.toyfaces import ToyFaces

    folder = ToyFaces(1, 2, size=48).write_folders(tmp_path / "big")
    rc = main(["embed", "--model", str(bundle / "bundle"), "--images", str(folder),
               "--out", str(tmp_path / "x.safetensors")])  # fmt: skip
    assert rc == 2
    assert "32x32" in capsys.readouterr().err
    assert main(["train", "--preset", "nope"]) == 2
    assert main(["embed", "--help"]) == 0


def test_stage_folders_follow_output_dir_unless_set(tmp_path):
    from facelab.core.recipe import parse_with_presets
    from facelab.duetface.train import DuetFaceConfig, duetface_presets

    def parse(*argv):
        return parse_with_presets(DuetFaceConfig, duetface_presets(), list(argv), "t", "")

    cfg = parse("--preset", "toy", "--output-dir", str(tmp_path / "run"))
    assert cfg.stage("client_train").output_dir == str(tmp_path / "run" / "stage_a")
    assert cfg.stage("server_train").output_dir == str(tmp_path / "run" / "stage_b")
    explicit = parse(
        "--output-dir", str(tmp_path / "run"), "--client-train.output-dir", "elsewhere"
    )
    assert explicit.stage("client_train").output_dir == "elsewhere"
    assert explicit.stage("server_train").output_dir == str(tmp_path / "run" / "stage_b")
