"""End to end on a tiny toy set: `facelab frcsyn run` (train, evaluate, row, GAP, plots),
`eval` on the saved model, the cross-dataset table, the leakage check, and refusals."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from facelab.core.cli import main as facelab
from facelab.frcsyn import (
    TASK1_COLUMNS,
    TASK2_COLUMNS,
    ToyEditionConfig,
    write_manifest,
    write_toy_standin,
)

TINY_RECIPE = [
    "--recipe.image-size", "32", "--recipe.base-width", "8", "--recipe.embedding-size", "32",
    "--recipe.train.epochs", "3", "--recipe.train.milestones", "2", "--recipe.train.warmup", "0",
    "--recipe.train.batch-size", "32", "--recipe.train.no-progress",
]  # fmt: skip
TINY_SETS = [
    "--toy.group-identities", "4", "--toy.group-images", "4", "--toy.group-pairs", "40",
    "--toy.hard-identities", "20", "--toy.hard-pairs", "80",
]  # fmt: skip
TOY = ToyEditionConfig(
    image_size=32,
    group_identities=4,
    group_images=4,
    group_pairs=40,
    hard_identities=20,
    hard_pairs=80,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny run (entry + real-toyfaces baseline) and one tiny cross-dataset table."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("frcsyn")
    syn = write_toy_standin(root / "syn", 30, 8, image_size=32)
    syn2 = write_toy_standin(
        root / "syn2", 30, 8, image_size=32, difficulty="default", identity_offset=600_000
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = facelab(
            ["frcsyn", "run", "--preset", "toy", "--subtask", "1.1", "--train", str(syn),
             "--output-dir", str(root / "run"), *TINY_RECIPE, *TINY_SETS]
        )  # fmt: skip
    table_out = io.StringIO()
    with contextlib.redirect_stdout(table_out):
        rc_table = facelab(
            ["frcsyn", "table", "--preset", "toy", "--datasets", f"easy={syn}", f"default={syn2}",
             "--output-dir", str(root / "table"), *TINY_RECIPE, *TINY_SETS]
        )  # fmt: skip
    return {
        "root": root, "syn": syn, "rc": rc, "stdout": out.getvalue(), "rc_table": rc_table,
        "table_stdout": table_out.getvalue(),
    }  # fmt: skip


def test_run_prints_the_row_and_writes_its_files(runs):
    assert runs["rc"] == 0
    run = runs["root"] / "run"
    header = "| " + " | ".join(TASK1_COLUMNS) + " |"
    lines = runs["stdout"].splitlines()
    row_line = lines[lines.index(header) + 2]
    data = json.loads((run / "frcsyn.json").read_text())
    assert data["columns"] == list(TASK1_COLUMNS) and list(data["row"]) == list(TASK1_COLUMNS)
    cells = [c.strip() for c in row_line.strip("|").split("|")]
    assert cells[0] == "syn"
    assert [float(c) for c in cells[1:]] == pytest.approx(
        [data["row"][c] for c in TASK1_COLUMNS[1:]], abs=0.006
    )
    for s in ("toy-bupt", "toy-cfpfp", "toy-rof", "toy-agedb"):
        assert (run / f"roc-{s}.png").stat().st_size > 1000
    assert (run / "entry" / "model" / "config.json").is_file()
    # the numbers hang together: TO = AVG - SD over the six groups; GAP from the baseline's TO
    ent, base = data["entry"]["task_scores"]["1"], data["baseline"]["task_scores"]["1"]
    groups = list(ent["groups"].values())
    assert len(groups) == 6 and data["row"]["AVG [%]"] == pytest.approx(100 * np.mean(groups))
    assert data["row"]["SD [%]"] == pytest.approx(100 * np.std(groups))
    assert data["row"]["GAP [%]"] == pytest.approx(100 * (base["to"] - ent["to"]) / ent["to"])
    assert data["baseline"]["num_images"] == data["entry"]["num_images"] == 240  # same size
    assert data["check"]["ok"] and data["check"]["synthetic_images"] == 240


def test_eval_of_the_saved_model_gives_the_same_numbers(runs, capsys):
    run = runs["root"] / "run"
    capsys.readouterr()
    rc = facelab(
        ["frcsyn", "eval", "--model", str(run / "entry" / "model"), "--subtask", "1.1", *TINY_SETS]
    )
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    cells = lines[lines.index("| " + " | ".join(TASK1_COLUMNS) + " |") + 2].strip("|").split("|")
    row = json.loads((run / "frcsyn.json").read_text())["row"]
    assert [float(c) for c in cells[1:6]] == pytest.approx(
        [row[c] for c in TASK1_COLUMNS[1:6]], abs=0.006
    )
    assert cells[6].strip() == "n/a"  # no baseline given


def test_cross_dataset_table(runs):
    assert runs["rc_table"] == 0
    data = json.loads((runs["root"] / "table" / "table.json").read_text())
    names = [r["Team"] for r in data["rows"]["2"]]
    assert names == ["real (baseline)", "easy", "default"]
    base_avg = data["baseline"]["task_scores"]["2"]["avg"]
    for row, ent in zip(data["rows"]["2"][1:], data["entries"]):
        avg = ent["task_scores"]["2"]["avg"]
        assert row["AVG [%]"] == pytest.approx(100 * avg)
        assert row["GAP [%]"] == pytest.approx(100 * (base_avg - avg) / avg)
        assert avg == pytest.approx(np.mean([s["accuracy"] for s in ent["sets"].values()]))
    assert data["rows"]["2"][0]["GAP [%]"] == pytest.approx(0.0)
    md = (runs["root"] / "table" / "table.md").read_text()
    task2 = md[md.index("## Task 2") :].splitlines()
    head = next(line for line in task2 if line.startswith("| Dataset"))
    sets = ["toy-bupt", "toy-cfpfp", "toy-rof", "toy-agedb"]
    assert (
        head
        == "| "
        + " | ".join(
            [
                "Dataset",
                "images",
                "identities",
                *[f"{s} acc. [%]" for s in sets],
                *TASK2_COLUMNS[1:],
            ]
        )
        + " |"
    )
    assert "| Dataset" in md[: md.index("## Task 2")]  # task 1 table too: toy-bupt has groups


def test_run_refuses_data_that_break_the_subtask(tmp_path, capsys):
    syn = write_toy_standin(tmp_path / "syn", 4, 2, image_size=32)
    write_manifest(syn / "manifest.json", 8, 4, real_images=3)
    rc = facelab(
        ["frcsyn", "run", "--preset", "toy", "--subtask", "1.1", "--train", str(syn), *TINY_RECIPE]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(
        "facelab frcsyn: error: training data do not satisfy FRCSyn sub-task 1.1"
    )
    assert "declares 3 real images" in err[0]


def test_leakage_flags_copied_evaluation_faces(runs, tmp_path):
    from facelab.frcsyn import leakage_check, toy_eval_sets
    from facelab.frcsyn.leakage import load_model

    model = load_model(runs["root"] / "run" / "entry" / "model")
    sets = toy_eval_sets(TOY)
    syn = write_toy_standin(tmp_path / "syn", 6, 3, image_size=32)
    bupt = sets[0]
    picks = [int(np.flatnonzero(bupt.identities == i)[0]) for i in np.unique(bupt.identities)[:3]]
    for k, j in enumerate(picks):  # three "generated" people that are evaluation images
        u8 = ((bupt.images[j] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        (syn / f"leak{k}").mkdir()
        Image.fromarray(u8).save(syn / f"leak{k}" / "000.png")
    rep = leakage_check(model, syn, sets, images_per_identity=3)
    assert rep.num_identities == 9 and rep.images_used == 6 * 3 + 3
    found = {m.identity: m for m in rep.flagged}
    for k, j in enumerate(picks):
        m = found[f"leak{k}"]
        assert m.cosine > 0.9999 and m.eval_identity == int(bupt.identities[j])
    # each template's best cosine against brute force over every evaluation image
    from facelab.core.data.folders import IdentityFolderDataset
    from facelab.core.eval import embed

    ds = IdentityFolderDataset(syn)
    emb = embed(model, ds).numpy()
    lab = ds.labels.numpy()
    tmpl = np.stack([emb[lab == c][:3].sum(0) for c in range(ds.num_classes)])
    tmpl /= np.linalg.norm(tmpl, axis=1, keepdims=True)
    gallery = np.concatenate([embed(model, s.images).numpy() for s in sets])
    assert rep.max_cosine == pytest.approx((tmpl @ gallery.T).max(1), abs=1e-5)
    # the default threshold: the 99th percentile of evaluation people's best match against
    # the other evaluation people (brute force over identities)
    people = np.concatenate([s.identities for s in sets])
    null = []
    for p in np.unique(people):
        t = gallery[people == p][:3].sum(0)
        null.append(float((gallery[people != p] @ (t / np.linalg.norm(t))).max()))
    assert rep.threshold == pytest.approx(np.quantile(null, 0.99), abs=1e-5)
    assert rep.n_null == len(null) and "99th percentile" in rep.threshold_rule


def test_eval_identities_from_genuine_pairs():
    from facelab.frcsyn import PairSet
    from facelab.frcsyn.leakage import eval_identity_labels

    # images 0-1-2 linked by genuine pairs (a chain), 3-4 linked, 5 alone
    s = PairSet(
        "x",
        torch.zeros(6, 3, 2, 2),
        np.array([0, 1, 3, 0, 2]),
        np.array([1, 2, 4, 5, 3]),
        np.array([True, True, True, False, False]),
    )
    lab = eval_identity_labels(s, 2)
    assert lab[0] == lab[1] == lab[2] and lab[3] == lab[4]
    assert len({lab[0], lab[3], lab[5]}) == 3 and (lab < 0).all()
    assert not set(eval_identity_labels(s, 0)) & set(lab)  # other sets never collide
