"""``facelab uiface sample | eval`` end to end on a tiny generator: layout, manifest, per-image
switch records, resume without rewriting, refusal of another run's folder, released-checkpoint
loading errors, context files, bad input ending with one line and exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import tiny_unet
from PIL import Image

from facelab.core import cli
from facelab.core.diffusion import AutoencoderConfig, SynthDataConfig, SynthTrainConfig
from facelab.core.diffusion.train import save_generator
from facelab.uiface import load_contexts, read_switches
from facelab.uiface.generate import load_released

FAST = ["--steps", "4", "--image-size", "16", "--batch-size", "4", "--no-progress"]


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    cfg = SynthTrainConfig(
        data=SynthDataConfig(source="toyfaces", image_size=16, contexts="identity"),
        autoencoder=AutoencoderConfig(kind="pixel"),
    )
    save_generator(root / "generator", tiny_unet(0), cfg)
    return root


def _run(argv, capsys):
    rc = cli.main(["uiface", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, [ln for ln in cap.err.splitlines() if ln.strip()]


def _files(root):
    return {p.relative_to(root): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_sample_writes_resumes_and_refuses_other_runs(generator, tmp_path, capsys):
    out = tmp_path / "set"
    argv = [
        "sample",
        "--generator",
        str(generator),
        "--out",
        str(out),
        "--identities",
        "3",
        "--images-per-identity",
        "2",
        "--mse-th",
        "0.05",
        *FAST,
    ]
    rc, text, err = _run(argv, capsys)
    assert rc == 0, err
    assert "3 identities written" in text
    names = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert names == ["000000", "000001", "000002"]
    for n in names:
        assert sorted(p.name for p in (out / n).iterdir()) == ["0000.png", "0001.png", "meta.json"]
        assert Image.open(out / n / "0000.png").size == (16, 16)
    man = json.loads((out / "manifest.json").read_text())
    method = man["run"]["method"]
    assert method["method"] == "uiface" and method["mse_th"] == 0.05
    assert (method["mode"], method["adaptive"], method["injection"]) == ("two-stage", True, True)
    sw = read_switches(out)
    assert sw["switch_step"].numel() == 6
    # 4 steps (750, 500, 250, 0): stage 1 = 750, 500; the boundary is step 2
    assert set(sw["switch_step"].tolist()) <= {2}
    assert set(sw["switch_timestep"].tolist()) <= {250}

    # rerun: nothing is rewritten
    before = _files(out)
    rc, text, _ = _run(argv, capsys)
    assert rc == 0 and "0 identities written, 3 already there" in text
    assert _files(out) == before

    # an identity lost mid-run is redone, the others are untouched, the images are the same up
    # to 8-bit rounding: the redone identity is sampled in a smaller batch (2 images, not 4), and
    # CPU kernels chosen by batch size and instruction set (AVX-512 here) may differ in the last
    # float bits, which can move a value across a rounding boundary (measured: one value of one
    # image, by one level)
    def pixels(k):
        return np.asarray(Image.open(out / "000001" / f"000{k}.png")).astype(np.int16)

    first = [pixels(k) for k in (0, 1)]
    import shutil

    shutil.rmtree(out / "000001")
    rc, text, _ = _run(argv, capsys)
    assert rc == 0 and "1 identities written, 2 already there" in text
    after = _files(out)
    assert {k: v for k, v in after.items() if k.parts[0] != "000001"} == {
        k: v for k, v in before.items() if k.parts[0] != "000001"
    }
    for k, before_k in enumerate(first):
        diff = np.abs(pixels(k) - before_k)
        assert int(diff.max()) <= 1 and int((diff > 0).sum()) <= 4, (k, int(diff.max()))

    # the same folder with another threshold is another run: refused, nothing touched
    before = _files(out)
    rc, _, err = _run([*argv[: -len(FAST) - 2], "--mse-th", "0.01", *FAST], capsys)
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("facelab uiface sample: error:") and "different run" in err[0]
    assert _files(out) == before


def test_eval_dataset_reports_switch_statistics(generator, tmp_path, capsys):
    out = tmp_path / "set"
    rc, _, err = _run(
        [
            "sample",
            "--generator",
            str(generator),
            "--out",
            str(out),
            "--identities",
            "2",
            "--images-per-identity",
            "3",
            "--variant",
            "single-stage",
            *FAST,
        ],
        capsys,
    )
    assert rc == 0, err
    rc, _, err = _run(["eval", "--dataset", str(out), "--out", str(tmp_path / "r")], capsys)
    assert rc == 0, err
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["histogram"] == {"0": 6}  # single-stage: the identity context from step 0
    assert m["images"] == 6 and m["identities"] == 2 and m["pixel_diversity"] > 0


def test_context_files(tmp_path):
    good = torch.randn(5, 512) * 3
    np.save(tmp_path / "ids.npy", good.numpy())
    ctx = load_contexts(tmp_path / "ids.npy", 4)
    torch.testing.assert_close(ctx, torch.nn.functional.normalize(good[:4], dim=1))
    from facelab.core.errors import FormatError, ShapeError, ZeroVectorError

    with pytest.raises(ShapeError, match="at least 6 ID vectors"):
        load_contexts(tmp_path / "ids.npy", 6)
    np.save(tmp_path / "w.npy", np.ones((3, 128), np.float32))
    with pytest.raises(ShapeError, match=r"\(N, 512\)"):
        load_contexts(tmp_path / "w.npy")
    z = good.clone()
    z[1] = 0
    np.save(tmp_path / "z.npy", z.numpy())
    with pytest.raises(ZeroVectorError):
        load_contexts(tmp_path / "z.npy")
    (tmp_path / "x.txt").write_text("1 2 3")
    with pytest.raises(FormatError):
        load_contexts(tmp_path / "x.txt")


def test_released_checkpoint_of_another_architecture(tmp_path):
    from facelab.core.errors import KeyMismatchError

    ck = tmp_path / "uiface.ckpt"
    torch.save({f"module.eps_model.{k}": v for k, v in tiny_unet(0).state_dict().items()}, ck)
    for name in ("enc.pt", "dec.pt"):
        torch.save({}, tmp_path / name)
    with pytest.raises(KeyMismatchError, match="missing keys"):
        load_released(ck, tmp_path / "enc.pt", tmp_path / "dec.pt")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["sample", "--generator", "{gen}", "--out", "{tmp}/o", "--step-th", "1000"], "step_th"),
        (["sample", "--generator", "{gen}", "--out", "{tmp}/o", "--mse-th", "-0.1"], "mse_th"),
        (
            ["sample", "--generator", "{gen}", "--out", "{tmp}/o", "--contexts", "{tmp}/w.npy"],
            "(N, 512)",
        ),
        (
            [
                "sample",
                "--generator",
                "{gen}",
                "--out",
                "{tmp}/o",
                "--contexts",
                "{tmp}/c.npy",
                "--identities",
                "5",
            ],
            "at least 5",
        ),
        (
            ["sample", "--generator", "{gen}", "--checkpoint", "{tmp}/c.npy", "--out", "{tmp}/o"],
            "exactly one",
        ),
        (
            [
                "sample",
                "--checkpoint",
                "{tmp}/ck.pt",
                "--encoder",
                "{tmp}/ck.pt",
                "--decoder",
                "{tmp}/ck.pt",
                "--out",
                "{tmp}/o",
            ],
            "missing keys",
        ),
        (["eval", "--out", "{tmp}/r"], "exactly one"),
        (["eval", "--generator", "{gen}", "--out", "{tmp}/r", "--preset", "paper"], "toy"),
    ],
)
def test_bad_input_one_line_exit_2(generator, tmp_path, capsys, argv, needle):
    np.save(tmp_path / "w.npy", np.ones((3, 128), np.float32))
    np.save(tmp_path / "c.npy", np.ones((3, 512), np.float32))
    torch.save({"x": torch.zeros(2)}, tmp_path / "ck.pt")
    args = [a.replace("{gen}", str(generator)).replace("{tmp}", str(tmp_path)) for a in argv]
    rc, _, err = _run([*args, *FAST] if args[0] == "sample" else args, capsys)
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith(f"facelab uiface {args[0]}: error:"), err
    assert needle in err[0]
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def test_clip_sample_reaches_the_sampler(generator, tmp_path, capsys):
    """``--clip-sample`` (core's x0 clipping) changes what an untrained generator draws for the
    same seed; without the flag the draw is the reference sampler's, reproduced exactly."""

    def draw(name, *extra):
        out = tmp_path / name
        argv = ["sample", "--generator", str(generator), "--out", str(out), "--identities", "1"]
        argv += ["--images-per-identity", "2", "--variant", "single-stage", *extra, *FAST]
        rc, _, err = _run(argv, capsys)
        assert rc == 0, err
        return [(out / "000000" / f"000{i}.png").read_bytes() for i in range(2)]

    plain, again, clipped = draw("plain"), draw("again"), draw("clipped", "--clip-sample")
    assert plain == again
    assert clipped != plain
