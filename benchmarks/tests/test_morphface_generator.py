"""MorphFace in the synthesis suite: its package's ``train_toy_generator`` / ``write_toy_dataset``
are found by the generator spec, its weights go through the float16 export, and the suite's
dataset step writes identity folders whose styles come from the toy style prior (2 training
steps: the contract, not the quality)."""

import json

import pytest
import torch

from facelab.benchmarks import family_synth
from facelab.benchmarks import generators as G

pytest.importorskip("facelab.morphface")


def test_morphface_toy_weights_and_dataset(tmp_path):
    from facelab.morphface import bench

    spec = G.get_generator("morphface")
    assert spec.is_installed()
    assert spec.trainer() is bench.train_toy_generator
    assert spec.writer() is bench.write_toy_dataset
    root = tmp_path / "weights"
    dest = G.make_toy_weights("morphface", root, tmp_path / "work", steps=2, progress=False)
    info = G.read_info(dest)
    assert info["steps"] == 2 and info["contexts"]["kind"] == "identity"
    assert info["contexts"]["count"] == 24 and info["styles"]["images_per_identity"] == 40
    from safetensors.torch import load_file

    enc = load_file(str(dest / "extra_conditioner.safetensors"))
    assert all(v.dtype == torch.float16 for v in enc.values())
    # the suite's dataset step (level settings of a tiny run)
    s = {"identities": 3, "images_per_identity": 2, "seed": 0, "image_size": 32, "num_steps": 2}
    status, stats = family_synth._generate(spec, root, s, tmp_path / "ds", progress=False)
    assert status == "ok" and stats["images"] == 6
    folders = sorted(p for p in (tmp_path / "ds").iterdir() if p.is_dir())
    assert len(folders) == 3
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert "morphface" in json.dumps(manifest)
    # each image's style is a draw of the prior fitted on the training styles: a new subject's
    # images share its subject mean, so they differ from each other but stay in the data's range
    prior = bench.toy_style_prior(dest)
    styles = []
    for f in folders:
        meta = json.loads((f / "meta.json").read_text())
        assert len(meta["images"]) == 2
        styles += [rec["style"] for rec in meta["images"]]
        pngs = sorted(f.glob("*.png"))
        assert len(pngs) == 2
    styles = torch.tensor(styles)
    assert styles.shape == (6, prior.layout.dim) and torch.isfinite(styles).all()
    assert not torch.equal(styles[0], styles[1])
    # pose, expression, camera and light: the prior's draw; shape and albedo: the identity's own
    # (its mean over its real training images, which the ID vector stands for)
    from facelab.morphface.toy import StyledToyFaces

    drawn, labels = prior.sample(3, 2, seed=0)
    got = prior.layout.split(styles)
    for name in ("pose", "expression", "camera", "light"):
        torch.testing.assert_close(
            getattr(got, name), getattr(drawn, name).float(), atol=1e-5, rtol=0
        )
    toy = StyledToyFaces(24, 40, size=32, seed=0, difficulty="easy")  # the toy preset's data
    real = toy.style_params()
    for name in ("shape", "albedo"):
        for c in range(3):
            own = getattr(real, name)[toy.labels == c].mean(0)
            for row in torch.nonzero(labels == c).flatten():
                torch.testing.assert_close(getattr(got, name)[row], own.float(), atol=1e-5, rtol=0)
        assert not torch.allclose(getattr(got, name), getattr(drawn, name).float(), atol=1e-3)
    with pytest.raises(G.FormatError, match="knows 24 identities"):
        bench.write_toy_dataset(
            dest,
            tmp_path / "ds2",
            identities=25,
            images_per_identity=1,
            seed=0,
            image_size=32,
            num_steps=2,
            progress=False,
        )


def test_the_packages_shipped_weights_are_the_fallback(tmp_path):
    """MorphFace ships its toy weights in its package: the suites use them unless the weights
    root has its own ``morphface/`` folder; generators without shipped weights still need one."""
    from facelab.morphface import bench

    assert G.shipped_weights("morphface") == bench.TOY_WEIGHTS
    assert G.read_info(bench.TOY_WEIGHTS)["generator"] == "morphface"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert G.weights_dir("morphface", empty) == bench.TOY_WEIGHTS
    assert G.weights_dir("morphface", None) == bench.TOY_WEIGHTS
    own = G.export_fp16(bench.TOY_WEIGHTS, tmp_path / "root" / "morphface", {"note": "copy"})
    assert G.weights_dir("morphface", tmp_path / "root") == own
    assert G.shipped_weights("uiface") is None and G.shipped_weights("nope") is None
    with pytest.raises(G.MissingWeightsError, match="generators uiface"):
        G.weights_dir("uiface", empty)
