"""The recipes end to end through ``facelab glotok`` on tiny settings: train (with the
histogram loss, the residual module and the GAN on), exact resume, tokenize, train-ar, sample,
eval; and bad input ending with one error line and exit status 2."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from facelab.core.cli import main as facelab
from facelab.glotok.histogram import TeacherHistogram

TINY = [
    "--model.base-channels", "8", "--model.z-channels", "8", "--model.semantic-codes", "16",
    "--model.visual-codes", "16", "--model.residual-width", "16", "--model.residual-heads", "2",
    "--data.toy-identities", "4", "--data.toy-images-per-identity", "4",
    "--loss.perceptual", "none", "--loss.disc-start", "1", "--loss.disc-channels", "8",
    "--train.batch-size", "8", "--train.no-progress", "--eval-images", "8",
]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("glotok")
    TeacherHistogram(torch.full((40,), 1 / 40), 40, 190.125, "uniform").save(
        root / "teacher.safetensors"
    )
    argv = ["glotok", "train", "--preset", "toy", *TINY, "--teacher.histogram", str(root / "teacher.safetensors"),
            "--train.max-steps", "2", "--train.output-dir", str(root / "tok")]  # fmt: skip
    assert facelab(argv) == 0
    return root


def test_train_writes_tokenizer_and_metrics(run):
    doc = json.loads((run / "tok" / "metrics.json").read_text())
    assert doc["steps"] == 2
    assert {"rec", "q", "res", "hist", "g_adv", "d"} <= set(doc["losses"])  # every term was on
    assert doc["teacher"]["bins"] == 40 and doc["teacher"]["source"] == "uniform"
    assert {
        "psnr",
        "ssim",
        "usage_semantic",
        "perplexity_visual",
        "uniformity_latent",
        "hist_kl",
    } <= set(doc["metrics"])
    assert (run / "tok" / "tokenizer" / "model.safetensors").is_file()


def test_exact_resume(tmp_path):
    from facelab.glotok.train import presets, toy_model_config, train

    def recipe(out, steps):
        r = presets()["toy"]
        r.model = toy_model_config(
            base_channels=8,
            z_channels=8,
            semantic_codes=16,
            visual_codes=16,
            residual_width=16,
            residual_heads=2,
        )
        r.data = dataclasses.replace(r.data, toy_identities=4, toy_images_per_identity=4)
        r.loss = dataclasses.replace(
            r.loss, perceptual="none", disc_start=2, disc_channels=8, hist_weight=0.0
        )
        r.train = dataclasses.replace(
            r.train,
            output_dir=str(out),
            max_steps=steps,
            batch_size=8,
            progress=False,
            checkpoint_every=2,
        )
        r.eval_images = 8
        return r

    straight = train(recipe(tmp_path / "a", 4)).model.state_dict()
    train(recipe(tmp_path / "b", 2))
    with pytest.warns(UserWarning, match="max_steps"):  # the longer run is the only change
        resumed = train(recipe(tmp_path / "b", 4))
    assert resumed.train.step == 4
    for k, v in straight.items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_tokenize_train_ar_sample_eval(run, tmp_path, capsys):
    from facelab.core.backbones import get_backbone
    from facelab.core.hub import save_pretrained

    tok = str(run / "tok" / "tokenizer")
    data = ["--data.toy-identities", "4", "--data.toy-images-per-identity", "4"]
    assert (
        facelab(
            [
                "glotok",
                "tokenize",
                "--tokenizer",
                tok,
                *data,
                "--out",
                str(tmp_path / "tokens.safetensors"),
            ]
        )
        == 0
    )
    t = load_file(str(tmp_path / "tokens.safetensors"))
    assert (
        t["semantic"].shape == (16, 8, 8)
        and t["visual"].shape == (16, 8, 8)
        and t["labels"].max() == 3
    )
    argv = ["glotok", "train-ar", "--preset", "toy", "--tokenizer", tok, "--tokens", str(tmp_path / "tokens.safetensors"),
            "--dim", "16", "--depth", "1", "--heads", "2", "--train.max-steps", "2", "--train.batch-size", "8",
            "--train.warmup", "0", "--train.no-progress", "--train.output-dir", str(tmp_path / "ar")]  # fmt: skip
    assert facelab(argv) == 0
    gen = str(tmp_path / "ar" / "generator")
    argv = ["glotok", "sample", "--generator", gen, "--tokenizer", tok, "--classes", "0", "3", "--per-class", "2",
            "--out", str(tmp_path / "samples")]  # fmt: skip
    assert facelab(argv) == 0
    s = load_file(str(tmp_path / "samples" / "samples.safetensors"))
    assert s["images"].shape == (4, 3, 32, 32) and s["labels"].tolist() == [0, 0, 3, 3]
    assert (tmp_path / "samples" / "samples.png").is_file()
    torch.manual_seed(0)
    save_pretrained(
        get_backbone("r18", input_size=32, embedding_size=8, base_width=4), tmp_path / "rec"
    )
    argv = ["glotok", "eval", "--tokenizer", tok, *data, "--num-images", "8", "--feature-extractor", str(tmp_path / "rec"),
            "--generator", gen, "--out", str(tmp_path / "eval.json")]  # fmt: skip
    assert facelab(argv) == 0
    doc = json.loads((tmp_path / "eval.json").read_text())
    assert doc["fid_features"] == "toy-recognizer" and {"rfid", "gfid", "psnr"} <= set(
        doc["metrics"]
    )


def test_bad_input_ends_with_one_error_line(run, tmp_path, capsys):
    tok = str(run / "tok" / "tokenizer")
    capsys.readouterr()
    assert (
        facelab(
            ["glotok", "eval", "--tokenizer", tok, "--data.image-size", "64", "--num-images", "4"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and err[0].startswith("facelab glotok eval: error:")
        and "(B, 3, 32, 32)" in err[0]
    )
    TeacherHistogram(torch.full((20,), 1 / 20), 20, 5.0).save(tmp_path / "t20.safetensors")
    argv = ["glotok", "train", *TINY, "--teacher.histogram", str(tmp_path / "t20.safetensors"),
            "--train.max-steps", "1", "--train.output-dir", str(tmp_path / "x")]  # fmt: skip
    assert facelab(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bins=20" in err[0] and "bins=40" in err[0]
    assert (
        facelab(["glotok", "sample", "--generator", str(tmp_path / "nope"), "--tokenizer", tok])
        == 2
    )
