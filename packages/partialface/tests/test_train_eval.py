"""The recipe end to end on toyfaces: one tiny PartialFace model and one RGB baseline with the
same budget, shared by every test of this module."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from facelab.core.errors import KeyMismatchError
from facelab.core.eval import verify
from facelab.core.hub import from_pretrained
from facelab.core.recipe import (
    ArcFaceConfig,
    DataConfig,
    HeadConfig,
    build_eval_sets,
    evaluate_sets,
    train_arcface,
)
from facelab.core.train import TrainConfig
from facelab.partialface.cli import main
from facelab.partialface.model import PartialFaceModel
from facelab.partialface.plan import SubsetPlan, reference_plan
from facelab.partialface.protocol import PartialFaceClient, PartialFaceServer
from facelab.partialface.train import load_trained, partialface_presets, train

SIZE = 32
STEPS = 150  # the RGB baseline: enough to reach its plateau on this data
#: PartialFace learns one backbone for six disjoint frequency subsets and needs about four times
#: the baseline's steps to approach it on toyfaces (cross-subset 0.68 at 150 steps, 0.74 at 300,
#: 0.79 at 600; the baseline 0.88 at 150)
PF_STEPS = 600


def data_config() -> DataConfig:
    return DataConfig(
        image_size=SIZE,
        toy_identities=60,
        toy_images_per_identity=6,
        eval_identities=40,
        eval_images_per_identity=5,
        eval_pairs=300,
        toy_difficulty="easy",
        repeat=3,
    )


SEED = 7  # the tests' training seed (scripts/calibrate_claims.py reruns others)


def train_config(out, steps: int = STEPS, seed: int = SEED) -> TrainConfig:
    return TrainConfig(
        output_dir=str(out),
        max_steps=steps,
        batch_size=32,
        lr=0.1,
        scheduler="cosine",
        warmup=10,
        warmup_unit="step",
        seed=seed,
        log_every=50,
        progress=False,
        save_on_exit=False,
    )


def train_run(out, seed: int = SEED):
    """The tests' PartialFace model (``seed``: the training seed)."""
    cfg = dataclasses.replace(
        partialface_presets()["toy"],
        data=data_config(),
        plan="reference",
        embedding_size=64,
        base_width=8,
        eval_challenges=3,
        train=train_config(out, PF_STEPS, seed),
    )
    return train(cfg)


def train_baseline(out, seed: int = SEED) -> float:
    """The RGB baseline through the same recipe, data and batch size (at its own plateau):
    its held-out accuracy."""
    cfg = ArcFaceConfig(
        data=data_config(),
        backbone="r18",
        embedding_size=64,
        base_width=8,
        head=HeadConfig(s=32.0),
        train=train_config(out, STEPS, seed),
    )
    rr = train_arcface(cfg)
    return rr.verification["toy-heldout"].accuracy


def measure_matching(run, baseline: float) -> dict[str, float]:
    """What the claim tests assert on (also measured by scripts/calibrate_claims.py)."""
    res = run.verification["toy-heldout"]
    same, cross = res["same_subset"].accuracy, res["cross_subset"].accuracy
    # the protocol: gallery and probe from two different challenges
    model, plan = run.model.eval(), run.plan
    eval_set = build_eval_sets(data_config())[0]
    server = PartialFaceServer(model, plan)
    client = PartialFaceClient()
    gallery_ch, probe_ch = server.challenge(0, 0), server.challenge(4, 2)
    g = server.embed(client.respond(eval_set.images[0::2], gallery_ch), gallery_ch)
    p = server.embed(client.respond(eval_set.images[1::2], probe_ch), probe_ch)
    protocol = verify(g, p, eval_set.issame, nfolds=10).accuracy
    # embeddings of one image under two subsets vs two people's
    from facelab.partialface.evaluate import embed_under

    e = embed_under(model, plan, eval_set.images[:80], [(1, 0), (3, 1)])
    same_image = float((e[0] * e[1]).sum(1).mean())
    other = float((e[0] * e[1].roll(1, 0)).sum(1).mean())
    return {
        "baseline": baseline,
        "same": same,
        "cross": cross,
        "cross_gap": baseline - cross,
        "same_gap": baseline - same,
        "cross_min_challenge": min(res["cross_subset"].per_challenge),
        "protocol": protocol,
        "same_image_cos": same_image,
        "other_cos": other,
        "cos_margin": same_image - other,
    }


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("pf-run"))


@pytest.fixture(scope="session")
def baseline(tmp_path_factory):
    return train_baseline(tmp_path_factory.mktemp("rgb-run"))


@pytest.fixture(scope="session")
def measured(run, baseline):
    return measure_matching(run, baseline)


def test_cross_subset_matching_works_near_the_rgb_baseline(run, measured):
    m = measured
    print({k: round(v, 3) for k, v in m.items()})
    # Calibration (`uv run python scripts/calibrate_claims.py partialface-run`; the test's seed
    # and seeds 1-4 x torch threads 1 and 2, 8 of the 10 runs finished), min..max:
    #   baseline 0.853..0.890, same 0.821..0.864, cross 0.750..0.810, cross_gap 0.043..0.140,
    #   same_gap -0.011..0.062, cross_min_challenge 0.723..0.793, protocol 0.767..0.810.
    # Bounds sit >= 0.05 below (above for the gaps) the worst run; chance is 0.5 and 900 pooled
    # pairs give a std of ~0.015 on one accuracy.
    assert m["baseline"] > 0.7  # the budget is enough to learn toyfaces at all
    assert m["same"] > 0.75 and m["cross"] > 0.68
    assert m["cross_gap"] < 0.2 and m["same_gap"] < 0.12  # cross_gap was < 0.15: 0.010 margin
    assert m["cross_min_challenge"] > 0.65
    # the subsets really differ in the cross-subset pairs
    res = run.verification["toy-heldout"]
    assert all(g[0] != p[0] for g, p in res["cross_subset"].challenges)


def test_protocol_matches_gallery_and_probe_from_different_subsets(measured):
    assert measured["protocol"] > 0.7


def test_saved_model_and_plan_reload(run):
    model, plan = load_trained(run.output_dir)
    assert plan == reference_plan() and model.plan_id == plan.plan_id
    again = from_pretrained(run.output_dir / "model")
    assert isinstance(again, PartialFaceModel)
    x = torch.randn(2, 27, SIZE, SIZE)
    pos = torch.tensor(plan.positions(3, 1))
    torch.testing.assert_close(again(x, pos), run.model.eval()(x, pos))
    assert torch.equal(again.position_std, run.model.position_std)
    assert not torch.equal(again.position_std, torch.ones(3, 64))  # estimated from data
    metrics = json.loads((run.output_dir / "metrics.json").read_text())
    assert metrics["plan_id"] == plan.plan_id
    assert "cross_subset" in metrics["verification"]["toy-heldout"]
    with pytest.raises(KeyMismatchError):
        PartialFaceServer(model, SubsetPlan.generate(seed=0))


def test_the_model_embeds_every_subset_into_one_space(measured):
    """Embeddings of one image under two subsets agree far better than two people do."""
    assert measured["cos_margin"] > 0.3


def test_rgb_baseline_evaluation_is_the_shared_one(run):
    # the PartialFace numbers come from the same held-out set and protocol as evaluate_sets
    sets = build_eval_sets(data_config())
    from facelab.partialface.model import SubsetView

    view = SubsetView(run.model.eval(), run.plan.positions(0, 0))
    acc = evaluate_sets(view, sets)["toy-heldout"].accuracy
    assert acc == pytest.approx(run.verification["toy-heldout"]["same_subset"].per_challenge[0])


def test_cli_end_to_end(run, tmp_path, capsys):
    from facelab.core.data.toyfaces import ToyFaces

    # train (tiny), then embed / eval / attack
    out = tmp_path / "cli-run"
    rc = main(
        [
            "train",
            "--preset",
            "toy",
            "--train.output-dir",
            str(out),
            "--train.max-steps",
            "3",
            "--train.warmup",
            "1",
            "--train.batch-size",
            "16",
            "--train.no-progress",
            "--data.toy-identities",
            "12",
            "--data.toy-images-per-identity",
            "2",
            "--data.eval-identities",
            "6",
            "--data.eval-pairs",
            "20",
            "--eval-challenges",
            "2",
        ]
    )
    assert rc == 0
    assert (out / "model" / "config.json").is_file() and (out / "plan.json").is_file()
    faces = ToyFaces(3, 2, size=SIZE, seed=9, identity_offset=5000)
    faces.write_folders(tmp_path / "faces")
    rc = main(
        [
            "embed",
            "--run",
            str(run.output_dir),
            "--images",
            str(tmp_path / "faces"),
            "--out",
            str(tmp_path / "emb.safetensors"),
            "--payload-out",
            str(tmp_path / "payload.safetensors"),
            "--subset",
            "2",
        ]
    )
    assert rc == 0
    emb = load_file(str(tmp_path / "emb.safetensors"))
    assert emb["embeddings"].shape == (6, 64) and emb["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    payload_bytes = (tmp_path / "payload.safetensors").stat().st_size
    assert 6 * 27 * SIZE * SIZE * 4 <= payload_bytes < 6 * 27 * SIZE * SIZE * 4 + 1024
    rc = main(
        [
            "eval",
            "--run",
            str(run.output_dir),
            "--data.eval-identities",
            "10",
            "--data.eval-pairs",
            "40",
            "--challenges",
            "2",
            "--out",
            str(tmp_path / "eval.json"),
        ]
    )
    assert rc == 0
    assert "cross subset" in capsys.readouterr().out
    rc = main(
        [
            "attack",
            "--out",
            str(tmp_path / "attack"),
            "--plan",
            str(run.output_dir / "plan.json"),
            "--train-identities",
            "8",
            "--test-identities",
            "3",
            "--images-per-identity",
            "4",
            "--steps",
            "3",
            "--width",
            "4",
            "--depth",
            "1",
        ]
    )
    assert rc == 0
    rows = json.loads((tmp_path / "attack" / "attacks.json").read_text())["rows"]
    assert [r["attack"] for r in rows] == ["mean image", "subset", "pruned", "duetface", "full"]
    assert (tmp_path / "attack" / "pruned_spectrum.png").is_file()
    # bad input: a plan that is not the model's
    SubsetPlan.generate(seed=3).save(tmp_path / "other" / "plan.json")
    (tmp_path / "other" / "model").symlink_to(run.output_dir / "model")
    rc = main(["eval", "--run", str(tmp_path / "other")])
    assert rc == 2
    assert "plan" in capsys.readouterr().err
    assert main(["nope"]) == 2
    assert main(["--help"]) == 0
