"""``facelab eval`` end to end on tiny files, checked against a direct computation."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from facelab.core import cli as facelab_cli
from facelab.core.eval import verify
from facelab.core.eval.cli import evaluate_bins, main

SIZE = 32


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _faces(n, seed):
    """n pairs of smooth random 32x32 images; genuine pairs share a base image."""
    rng = np.random.default_rng(seed)
    issame = np.tile([True, False], n // 2)
    imgs = []
    for s in issame:
        a = rng.integers(0, 256, (SIZE // 4, SIZE // 4, 3)).repeat(4, 0).repeat(4, 1)
        b = a if s else rng.integers(0, 256, (SIZE // 4, SIZE // 4, 3)).repeat(4, 0).repeat(4, 1)
        b = np.clip(b + rng.integers(-20, 21, b.shape), 0, 255)
        imgs += [a.astype(np.uint8), b.astype(np.uint8)]
    return imgs, issame


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from facelab.core.backbones import get_backbone
    from facelab.core.hub import save_pretrained

    torch.manual_seed(0)
    model = get_backbone("r18", base_width=4, input_size=SIZE, embedding_size=16).eval()
    d = tmp_path_factory.mktemp("model")
    save_pretrained(model, d)
    return d, model


def _reference_accuracy(model, imgs, issame, nfolds):
    x = torch.from_numpy(np.stack(imgs).transpose(0, 3, 1, 2).astype(np.float32)) / 127.5 - 1
    with torch.no_grad():
        f = model(x) + model(torch.flip(x, dims=[3]))
    f = f / f.norm(dim=1, keepdim=True)
    return verify(f[0::2], f[1::2], issame, nfolds)


def test_evaluate_bins_and_cli(tmp_path, tiny_model_dir, capsys):
    from facelab.core.data.verification import write_bin

    model_dir, model = tiny_model_dir
    imgs, issame = _faces(20, seed=0)
    write_bin(tmp_path / "toy.bin", [_png(a) for a in imgs], issame.tolist())
    ref = _reference_accuracy(model, imgs, issame, 10)

    rep = evaluate_bins(model, [tmp_path / "toy.bin"], image_size=(SIZE, SIZE), batch_size=7)
    row = rep.rows[0]
    assert row["dataset"] == "toy" and row["pairs"] == 20
    assert row["accuracy"] == pytest.approx(ref.accuracy, abs=1e-12)
    assert row["VAL@FAR=0.001"] == pytest.approx(ref.val, abs=1e-12)

    out = tmp_path / "out"
    argv = ["eval", "--model", str(model_dir), "--bin", str(tmp_path / "toy.bin")]
    argv += ["--image-size", str(SIZE), "--out", str(out)]
    assert facelab_cli.main(argv) == 0  # through the registered entry point
    text = capsys.readouterr().out
    assert "| toy |" in text and f"{100 * ref.accuracy:.2f}" in text
    doc = json.loads((out / "report.json").read_text())
    assert doc["rows"][0]["accuracy"] == pytest.approx(ref.accuracy, abs=1e-12)
    for name in ("roc.png", "det.png", "report.md"):
        assert (out / name).stat().st_size > 0


def test_cli_pair_list(tmp_path, tiny_model_dir, capsys):
    model_dir, model = tiny_model_dir
    imgs, issame = _faces(8, seed=1)
    root = tmp_path / "lfw"
    lines = ["2\t2"]  # 2 folds of 2 genuine + 2 impostor pairs
    for k, s in enumerate(issame):
        a, b = f"p{k}", (f"p{k}" if s else f"q{k}")
        for name, num, arr in ((a, 1, imgs[2 * k]), (b, 2 if s else 1, imgs[2 * k + 1])):
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(root / name / f"{name}_{num:04d}.png")
        lines.append(f"{a}\t1\t2" if s else f"{a}\t1\t{b}\t1")
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    ref = _reference_accuracy(model, imgs, issame, 2)
    argv = ["--model", str(model_dir), "--pairs", str(tmp_path / "pairs.txt")]
    argv += ["--pairs-root", str(root), "--pairs-ext", "png", "--image-size", str(SIZE)]
    argv += ["--nfolds", "2", "--json"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rows"][0]["dataset"] == "pairs"
    assert doc["rows"][0]["accuracy"] == pytest.approx(ref.accuracy, abs=1e-12)


def test_cli_errors(tmp_path, tiny_model_dir, capsys):
    model_dir, _ = tiny_model_dir
    assert main(["--model", str(model_dir)]) == 2
    assert "at least one of --bin" in capsys.readouterr().err
    assert main(["--bin", str(tmp_path / "x.bin")]) == 2
    assert "exactly one of --model" in capsys.readouterr().err
    assert main(["--model", str(model_dir), "--bin", str(tmp_path / "missing.bin")]) == 2
    assert "missing.bin" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--insightface" in capsys.readouterr().out


def test_load_model_from_an_insightface_checkpoint(tmp_path):
    from facelab.core.backbones import IResNet, get_backbone
    from facelab.core.eval.cli import load_model

    torch.manual_seed(1)
    ref = get_backbone("r18")
    torch.save(ref.state_dict(), tmp_path / "backbone.pth")
    model = load_model(insightface=tmp_path / "backbone.pth", backbone="r18")
    assert isinstance(model, IResNet) and not model.training
    for (k, a), (k2, b) in zip(ref.state_dict().items(), model.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_cli_ijb_end_to_end(tmp_path, tiny_model_dir, capsys):
    """A tiny IJB-C folder: the CLI's TAR@FAR equals embedding + insightface's loops by hand."""
    from sklearn.metrics import roc_curve

    from facelab.core.eval import IJBImages, load_ijb_meta

    model_dir, model = tiny_model_dir
    rng = np.random.default_rng(5)
    root = tmp_path / "IJBC"
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    # landmarks: the 112 ArcFace template scaled to the 64 px crops, jittered
    template = np.array(
        [
            [38.2946, 51.6963],
            [73.5318, 51.5014],
            [56.0252, 71.7366],
            [41.5493, 92.3655],
            [70.7299, 92.2041],
        ]
    )
    tm, lm, subj_of_t = [], [], []
    k = 0
    bases = rng.integers(0, 256, (4, 16, 16, 3))
    for t in range(8):
        s = t % 4
        subj_of_t.append(s)
        for m in range(2):
            k += 1
            img = np.clip(
                bases[s].repeat(4, 0).repeat(4, 1) + rng.integers(-30, 31, (64, 64, 3)), 0, 255
            )
            Image.fromarray(img.astype(np.uint8)).save(root / "loose_crop" / f"{k}.png")
            pts = template * 64 / 112 + rng.normal(0, 0.5, (5, 2))
            tm.append(f"{k}.png {t + 1} {100 + 2 * t + m}")
            lm.append(" ".join([f"{k}.png", *(f"{v:.2f}" for v in pts.ravel()), "0.9"]))
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(tm) + "\n")
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(lm) + "\n")
    p1, p2 = np.triu_indices(8, 1)
    labels = (np.array(subj_of_t)[p1] == np.array(subj_of_t)[p2]).astype(int)
    pairs = np.stack([p1 + 1, p2 + 1, labels], 1)
    np.savetxt(root / "meta" / "ijbc_template_pair_label.txt", pairs, fmt="%d")

    # by hand: aligned crops -> flip-sum embeddings -> per-template mean of the two media
    meta = load_ijb_meta(root)
    x = torch.stack([IJBImages(meta, size=SIZE)[i] for i in range(meta.num_images)])
    with torch.no_grad():
        f = model(x) + model(torch.flip(x, dims=[3]))
    f = (f / f.norm(dim=1, keepdim=True)).double().numpy()
    tmpl = f.reshape(8, 2, -1).sum(1)  # one image per media, two media per template
    tmpl /= np.linalg.norm(tmpl, axis=1, keepdims=True)
    scores = np.sum(tmpl[p1] * tmpl[p2], 1)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    expected = {}
    for far in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1):
        _, i = min(zip(abs(fpr - far), range(len(fpr))))
        expected[far] = tpr[i]

    argv = ["--model", str(model_dir), "--ijb", str(root), "--image-size", str(SIZE), "--json"]
    assert main(argv) == 0
    row = json.loads(capsys.readouterr().out)["rows"][0]
    assert row["dataset"] == "IJBC" and row["pairs"] == 28
    for far, tar in expected.items():
        key = "TAR@FAR=" + (f"1e{round(np.log10(far))}" if far < 1e-3 else f"{far:g}")
        assert row[key] == pytest.approx(tar, abs=1e-12)
    # the scores themselves: the ROC thresholds are the distinct template-pair scores
    from facelab.core.eval.cli import evaluate_ijb

    curves = {}
    evaluate_ijb(model, root, image_size=SIZE, curves=curves)
    np.testing.assert_allclose(curves["IJBC"].thresholds[1:], np.sort(scores)[::-1], atol=1e-5)
