"""The dataset writer (layout, manifest, resume after a kill, other runs refused, RecordIO),
identity sources and the synthetic-data metrics against brute-force references."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("diffusers")

from facelab.core.diffusion import (
    IdentitySampler,
    filter_identities,
    generate_dataset,
    identity_consistency,
    inter_class_separability,
    intra_class_diversity,
    random_identities,
    virtual_identities,
)
from facelab.core.diffusion.metrics import attribute_spread
from facelab.core.errors import KeyMismatchError, RangeError


class Toy(nn.Module):
    """A deterministic 'denoiser' whose samples depend on the context and the noise."""

    context_width = 8

    def __init__(self, scale: float = 0.1):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(scale))

    def forward(self, x, t, context=None, condition_flag=None, extra_context=None):
        c = torch.zeros(x.shape[0]) if context is None else context[:, 0]
        return self.w * x + 0.3 * c.view(-1, 1, 1, 1)


def _sampler(scale=0.1):
    return IdentitySampler(Toy(scale), image_size=8, num_steps=3)


def _files(root: Path):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_manifest_and_resume_skips_finished(tmp_path):
    ctx = random_identities(3, 8, 0)
    out = tmp_path / "ds"
    res = generate_dataset(
        _sampler(), ctx, out, images_per_identity=4, batch_size=3, image_size=16, progress=False
    )
    assert res.identities_written == 3 and res.images_written == 12
    assert sorted(p.name for p in out.iterdir()) == [
        "000000",
        "000001",
        "000002",
        "contexts.safetensors",
        "manifest.json",
    ]
    meta = json.loads((out / "000001" / "meta.json").read_text())
    assert meta["context_index"] == 1 and [r["image"] for r in meta["images"]] == [0, 1, 2, 3]
    top = json.loads((out / "manifest.json").read_text())
    assert top["source"] == "synthetic"  # what FRCSyn's checker reads
    man = top["run"]
    assert (
        man["num_identities"] == 3
        and man["images_per_identity"] == 4
        and man["sampler"]["num_steps"] == 3
    )
    from PIL import Image

    assert Image.open(out / "000000" / "0003.png").size == (16, 16)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = generate_dataset(
        _sampler(), ctx, out, images_per_identity=4, batch_size=2, image_size=16, progress=False
    )
    assert again.identities_written == 0 and again.identities_skipped == 3
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps
    # the folder is a training set for the core recipe
    from facelab.core.data.folders import IdentityFolderDataset

    ds = IdentityFolderDataset(out)
    assert ds.num_classes == 3 and len(ds) == 12


def test_other_runs_are_refused_and_nothing_is_touched(tmp_path):
    ctx = random_identities(2, 8, 0)
    out = tmp_path / "ds"
    generate_dataset(_sampler(), ctx, out, images_per_identity=2, image_size=8, progress=False)
    before = _files(out)
    with pytest.raises(KeyMismatchError, match="model_sha256"):
        generate_dataset(
            _sampler(0.2), ctx, out, images_per_identity=2, image_size=8, progress=False
        )
    with pytest.raises(KeyMismatchError, match="seed"):
        generate_dataset(
            _sampler(), ctx, out, images_per_identity=2, image_size=8, seed=1, progress=False
        )
    assert _files(out) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(KeyMismatchError, match="not empty"):
        generate_dataset(
            _sampler(), ctx, other, images_per_identity=2, image_size=8, progress=False
        )
    with pytest.raises(RangeError, match="unit"):
        generate_dataset(_sampler(), ctx * 2, tmp_path / "x", images_per_identity=2, progress=False)


SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    from torch import nn
    sys.path.insert(0, {here!r})
    from test_diffusion_generate import _sampler
    from facelab.core.diffusion import generate_dataset, random_identities
    kill_at = int(sys.argv[2])
    def on_batch(k):
        if k == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    generate_dataset(_sampler(), random_identities(4, 8, 0), sys.argv[1], images_per_identity=3,
                     batch_size=2, image_size=8, progress=False, on_batch=on_batch)
    """
)


def test_resume_after_kill_gives_the_uninterrupted_dataset(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(here=str(Path(__file__).parent)))
    out = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # batches of 2 over 4 identities x 3 images: batch 3 (images 6-7) leaves identities 0 and 1
    # finished and identity 2 half written when the process is killed
    p = subprocess.run([sys.executable, str(script), str(out), "3"], env=env, capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()[-2000:]
    assert sorted(x.name for x in out.iterdir() if x.is_dir()) == [
        ".partial-000002",
        "000000",
        "000001",
    ]
    done = {x: (x.stat().st_ino, x.stat().st_mtime_ns) for x in out.glob("00000[01]/*")}
    res = generate_dataset(
        _sampler(),
        random_identities(4, 8, 0),
        out,
        images_per_identity=3,
        batch_size=2,
        image_size=8,
        progress=False,
    )
    assert res.identities_written == 2 and res.identities_skipped == 2
    assert {x: (x.stat().st_ino, x.stat().st_mtime_ns) for x in out.glob("00000[01]/*")} == done
    clean = tmp_path / "clean"
    generate_dataset(
        _sampler(),
        random_identities(4, 8, 0),
        clean,
        images_per_identity=3,
        batch_size=3,
        image_size=8,
        progress=False,
    )
    a, b = _files(out), _files(clean)
    assert sorted(a) == sorted(b)
    for k in a:
        if k.endswith(".png") or k.endswith("meta.json"):
            assert a[k] == b[k], k


def test_recordio_output(tmp_path):
    out = tmp_path / "rec"
    generate_dataset(
        _sampler(),
        random_identities(3, 8, 0),
        out,
        images_per_identity=2,
        image_size=16,
        format="recordio",
        progress=False,
    )
    from facelab.core.data.recordio import MXFaceDataset

    ds = MXFaceDataset(out, image_size=(16, 16))
    assert len(ds) == 6 and int(ds.num_classes) == 3
    again = generate_dataset(
        _sampler(),
        random_identities(3, 8, 0),
        out,
        images_per_identity=2,
        image_size=16,
        format="recordio",
        progress=False,
    )
    assert again.identities_skipped == 3 and again.images_written == 0


# ------------------------------------------------------------------ identities


def _greedy_loop(x, th):
    kept = []
    for i in range(x.shape[0]):
        if all(float(x[i] @ x[j]) < th for j in kept):
            kept.append(i)
    return kept


def test_filter_identities_matches_a_plain_greedy_loop():
    x = random_identities(300, 6, 3)
    for th in (0.2, 0.5, 0.9):
        assert filter_identities(x, th, block=64).tolist() == _greedy_loop(x, th)
    assert filter_identities(x, 0.5, max_count=7).tolist() == _greedy_loop(x, 0.5)[:7]


def test_virtual_identities_are_unit_and_separated():
    v = virtual_identities(50, threshold=0.4, dim=32, seed=1)
    assert v.shape == (50, 32)
    assert torch.allclose(v.norm(dim=1), torch.ones(50), atol=1e-5)
    g = v @ v.T
    assert float(g[~torch.eye(50, dtype=torch.bool)].max()) < 0.4
    with pytest.raises(RangeError):
        virtual_identities(100, threshold=-0.9, dim=4, seed=0, max_candidates=200)


# ------------------------------------------------------------------ metrics vs brute force


def _brute(emb, labels):
    e = torch.nn.functional.normalize(emb.double(), dim=1).numpy()
    lab = labels.numpy()
    gen, imp = [], []
    for i in range(len(e)):
        for j in range(len(e)):
            if i != j:
                (gen if lab[i] == lab[j] else imp).append(e[i] @ e[j])
    return np.mean(gen), np.mean(imp)


def test_identity_metrics_match_pairwise_loops():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    emb = torch.randn(9, 5, generator=g) + 2 * torch.nn.functional.one_hot(labels, 5).float()
    m = identity_consistency(emb, labels)
    gen, imp = _brute(emb, labels)
    assert m["genuine_cos"] == pytest.approx(gen, abs=1e-9)
    assert m["impostor_cos"] == pytest.approx(imp, abs=1e-9)
    e = torch.nn.functional.normalize(emb.double(), dim=1)
    cents = {k: torch.nn.functional.normalize(e[labels == k].sum(0), dim=0) for k in range(3)}
    want_div = np.mean([1 - float(e[i] @ cents[int(labels[i])]) for i in range(9)])
    assert intra_class_diversity(emb, labels)["centroid_distance"] == pytest.approx(
        want_div, abs=1e-9
    )
    sep = inter_class_separability(emb, labels)
    c = torch.stack([cents[k] for k in range(3)])
    off = [float(c[a] @ c[b]) for a in range(3) for b in range(3) if a != b]
    assert sep["centroid_cos"] == pytest.approx(np.mean(off), abs=1e-9)
    # references: closed-set identification of every generated image
    ref = identity_consistency(emb, labels, references=emb, reference_labels=labels)
    sims = e @ c.T
    assert ref["identification_accuracy"] == pytest.approx(
        float((sims.argmax(1) == labels).double().mean())
    )
    assert ref["reference_cos"] == pytest.approx(
        float(sims[torch.arange(9), labels].mean()), abs=1e-9
    )


def test_attribute_spread_is_within_identity_std():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    vals = torch.tensor([1.0, 3.0, 0.0, 1.0, 2.0, 9.0])
    want = np.mean([np.std([1, 3], ddof=1), np.std([0, 1, 2], ddof=1)])  # identity 2: one image
    assert float(attribute_spread(vals, labels)) == pytest.approx(want)


def test_embed_identities_and_fr_training_on_a_generated_set(tmp_path):
    from facelab.core.backbones import get_backbone
    from facelab.core.diffusion import embed_identities
    from facelab.core.diffusion.metrics import train_on_synthetic
    from facelab.core.eval import embed
    from facelab.core.recipe import DataConfig
    from facelab.core.train import TrainConfig

    out = tmp_path / "ds"
    generate_dataset(
        _sampler(),
        random_identities(3, 8, 0),
        out,
        images_per_identity=4,
        image_size=32,
        progress=False,
    )
    torch.manual_seed(0)
    rec = get_backbone("r18", input_size=32, embedding_size=16, base_width=8).eval()
    names, means = embed_identities(rec, out)
    from facelab.core.data.folders import IdentityFolderDataset

    ds = IdentityFolderDataset(out)
    emb = embed(rec, torch.stack([ds[i][0] for i in range(len(ds))]), flip=True)
    want = torch.nn.functional.normalize(
        torch.stack(
            [torch.nn.functional.normalize(emb[ds.labels == k], dim=1).sum(0) for k in range(3)]
        ),
        dim=1,
    )
    assert names == ["000000", "000001", "000002"]
    assert torch.allclose(means, want, atol=1e-5)
    res = train_on_synthetic(
        out,
        output_dir=tmp_path / "fr",
        data=DataConfig(
            image_size=32, eval_identities=10, eval_images_per_identity=3, eval_pairs=40
        ),
        train=TrainConfig(max_steps=2, batch_size=4, lr=0.01, progress=False, log_every=1),
        backbone="r18",
        base_width=8,
        embedding_size=16,
    )
    assert "toy-heldout-real" in res and 0.0 <= res["toy-heldout-real"].accuracy <= 1.0
