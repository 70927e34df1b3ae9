"""ppfr / templates on a tiny identity-folder tree and a tiny .bin (toy presets, 2 steps)."""

import json
import math
import textwrap

import pytest

from facelab.benchmarks.cli import main

TINY = ["--preset", "toy", "--max-steps", "2", "--batch-size", "8", "--image-size", "32"]
TINY += ["--attack-steps", "2", "--small", "--no-progress"]

FAKE_RECIPE = """
from dataclasses import dataclass, field
from types import SimpleNamespace

from facelab.core.recipe import DataConfig
from facelab.core.train import TrainConfig

SEEN = []


@dataclass
class Cfg:
    data: DataConfig = field(default_factory=DataConfig)
    stage: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=20, milestones=(10,), warmup=1))
    output_dir: str = "runs/fake"


def fakerecipe_presets():
    return {"toy": Cfg()}


def train(cfg):
    SEEN.append(cfg)
    v = SimpleNamespace(accuracy=0.75, accuracy_std=0.05, val=0.25)
    return SimpleNamespace(verification={"tiny": v}, wall_time=1.0)
"""


def test_full_suites_need_both_data_paths(capsys, tmp_path):
    for suite in ("ppfr", "templates"):
        with pytest.raises(SystemExit) as e:
            main([suite, "--eval-bins", "x.bin"])
        assert e.value.code == 2
        assert "--train-data PATH" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ppfr", "--train-data", str(tmp_path)])
    assert "--eval-bins" in capsys.readouterr().err
    rc = main(["ppfr", "--train-data", str(tmp_path), "--eval-bins", str(tmp_path / "no.bin")])
    assert rc == 2 and "no such file" in capsys.readouterr().err
    rc = main(["templates", "--train-data", str(tmp_path / "none"), "--eval-bins", "x.bin"])
    assert rc == 2 and "expected an existing folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["quick", "--train-data", str(tmp_path)])
    assert "apply to the ppfr and templates suites only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["speed", "--jobs", "2"])
    assert "--jobs applies to the quick suite only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["quick", "--jobs", "0"])
    assert "--jobs: expected a positive integer" in capsys.readouterr().err


def test_ppfr_tiny(tmp_path, tiny_real_data, monkeypatch):
    root = tmp_path / "site" / "facelab" / "fakerecipe"
    root.mkdir(parents=True)
    (root / "__init__.py").write_text(textwrap.dedent(FAKE_RECIPE))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    tree, bin_path = tiny_real_data
    out = tmp_path / "ppfr"
    args = ["ppfr", "--train-data", str(tree), "--eval-bins", str(bin_path), "--out", str(out)]
    assert main([*args, *TINY, "--methods", "nosuchmethod", "fakerecipe"]) == 0
    res = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in res["rows"]}
    base = rows["arcface [tiny]"]
    assert base["status"] == "ok" and 0 <= base["accuracy"] <= 1
    assert base["bytes_per_image"] == 3 * 32 * 32
    assert all(math.isfinite(base[k]) for k in ("attack_ssim", "attack_identity_leakage"))
    assert rows["nosuchmethod"]["status"] == "not built"
    assert rows["fakerecipe [tiny]"]["accuracy"] == 0.75
    assert rows["fakerecipe [tiny]"]["tar_at_far_1e-3"] == 0.25
    # the generic recipe adapter pointed the preset at the data and the work folder
    import facelab.fakerecipe as fake

    (cfg,) = fake.SEEN
    assert cfg.data.source == str(tree) and cfg.data.eval_bins == (str(bin_path),)
    assert cfg.data.image_size == 32 and cfg.output_dir == str(out / "work" / "fakerecipe")
    st = cfg.stage
    assert (st.max_steps, st.batch_size, st.scheduler, st.milestones) == (2, 8, "cosine", ())
    assert st.warmup == 0 and st.output_dir == str(out / "work" / "fakerecipe" / "stage")
    assert res["settings"]["preset"] == "toy" and res["settings"]["overrides"]["max_steps"] == 2
    assert (out / "roc.png").is_file() and (out / "grid_inversion.png").is_file()
    del __import__("sys").modules["facelab.fakerecipe"]


def test_templates_tiny(tmp_path, tiny_real_data):
    tree, bin_path = tiny_real_data
    out = tmp_path / "templates"
    args = ["templates", "--train-data", str(tree), "--eval-bins", str(bin_path), "--out", str(out)]
    assert main([*args, *TINY]) == 0
    res = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in res["rows"]}
    groups = (32 // 16) ** 2  # a 32 px iresnet ends on a 2 x 2 map: 4 groups of 16
    expect = {"slerpface [tiny]": 4 * 16 * groups, "biohashing [tiny]": 16 * groups}
    expect["ironmask [tiny]"] = 4 * (16 * groups) ** 2 + 32
    expect["arcface embedding (unprotected) [tiny]"] = 4 * 128
    for name, nbytes in expect.items():
        r = rows[name]
        assert r["status"] == "ok" and r["bytes_per_image"] == nbytes, r
        assert 0 <= r["accuracy"] <= 1 and math.isfinite(r["attack_identity_leakage"])
    assert "| slerpface [tiny] | ok |" in (out / "report.md").read_text()


def test_verification_leaves_of_nested_results():
    from types import SimpleNamespace

    from facelab.benchmarks.full import _verification_leaves

    v = SimpleNamespace(accuracy=0.9, accuracy_std=0.1)
    nested = {"lfw": {"same_subset": v, "cross_subset": v}, "meta": {"note": "x"}}
    assert [p for p, _ in _verification_leaves(nested)] == [
        ("lfw", "same_subset"),
        ("lfw", "cross_subset"),
    ]
    assert _verification_leaves({"lfw": v}) == [(("lfw",), v)]
    assert _verification_leaves({}) == []


def test_ppfr_on_toy_data_without_paths(tmp_path, capsys):
    """No data paths: toyfaces folders + a .bin are written and the toy preset runs."""
    from facelab.benchmarks import toydata
    from facelab.core.data.verification import load_bin

    out = tmp_path / "ppfr"
    tiny = ["--max-steps", "2", "--batch-size", "8", "--attack-steps", "2", "--small"]
    assert main(["ppfr", "--out", str(out), "--no-progress", "--methods", *tiny]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["settings"]["toy_data"] is True and data["settings"]["preset"] == "toy"
    assert data["notes"][0].startswith("toy data")
    assert data["summary"].startswith("- RGB ArcFace baseline on toy_eval: accuracy")
    (row,) = [r for r in data["rows"] if r["method"].startswith("arcface")]
    assert row["status"] == "ok" and 0 <= row["accuracy"] <= 1
    (folder,) = (out / "work" / "toydata").iterdir()
    s = toydata.SMALL
    people = sorted(p for p in (folder / "train").iterdir() if p.is_dir())
    assert len(people) == s.identities
    assert all(len(list(p.glob("*.png"))) == s.images_per_identity for p in people)
    size = (s.image_size, s.image_size)
    images, issame = load_bin(folder / "toy_eval.bin", image_size=size)
    assert images.shape == (2 * s.eval_pairs, 3, *size)
    assert len(issame) == s.eval_pairs and int(issame.sum()) == s.eval_pairs // 2
    assert issame[:4].tolist() == [True, False, True, False]  # alternating: every fold holds both


def test_ppfr_claims_and_paper_shape_sizes():
    from facelab.benchmarks import toydata
    from facelab.benchmarks.full import CLAIM_DROP_POINTS, ppfr_claims
    from facelab.core.recipe import paper_shape_data

    rows = [
        {"method": "arcface [lfw]", "status": "ok", "accuracy": 0.95},
        {"method": "duetface [lfw]", "status": "ok", "accuracy": 0.931},
        {"method": "partialface [lfw/full]", "status": "ok", "accuracy": 0.90},
        {"method": "minusface", "status": "not built", "accuracy": math.nan},
    ]
    lines = ppfr_claims(rows, ["duetface", "partialface", "minusface"], "lfw").splitlines()
    assert lines[0] == "- RGB ArcFace baseline on lfw: accuracy 0.9500"
    assert CLAIM_DROP_POINTS == 2.0
    assert lines[1].startswith("- DuetFace") and lines[1].endswith(": holds here")
    assert "accuracy 0.9310, 1.9 points below the baseline" in lines[1]
    assert "5.0 points below" in lines[2] and lines[2].endswith(
        "does not hold at this size or budget"
    )
    assert lines[3].endswith("not checked (not built)")
    assert "no claim" in ppfr_claims(rows[1:], ["duetface"], "lfw")
    # a method above the baseline: "points above", and the claim holds
    above = [rows[0], {"method": "duetface [lfw]", "status": "ok", "accuracy": 0.983}]
    line = ppfr_claims(above, ["duetface"], "lfw").splitlines()[1]
    assert "accuracy 0.9830, 3.3 points above the baseline" in line and "-3.3" not in line
    assert line.endswith(": holds here")
    # the paper-shape toy data is the presets' own data (core's paper_shape_data)
    d, s = paper_shape_data(), toydata.sizes_for("paper-shape", small=False)
    assert (s.image_size, s.identities, s.images_per_identity, s.difficulty) == (
        d.image_size,
        d.toy_identities,
        d.toy_images_per_identity,
        d.toy_difficulty,
    )
    assert (s.eval_identities, s.eval_images_per_identity, s.eval_pairs) == (
        d.eval_identities,
        d.eval_images_per_identity,
        d.eval_pairs,
    )
    assert toydata.sizes_for("toy", small=True) == toydata.SMALL


@pytest.mark.parametrize(
    "preset, toy, small, steps, want_steps, want_width",
    [
        ("paper-shape", True, False, None, 300, 16),  # the CPU-hour budget
        ("paper-shape", True, False, 2000, 2000, 16),  # --attack-steps wins
        ("paper-shape", False, False, None, 2000, 32),  # real data: the full attack
        ("toy", True, False, None, 2000, 32),
        (None, True, False, None, 2000, 32),  # toy data, the toy preset by default
        ("paper-shape", True, True, None, 20, 8),  # --small
    ],
)
def test_attack_budget_per_run(
    tmp_path, monkeypatch, preset, toy, small, steps, want_steps, want_width
):
    from facelab.benchmarks import full, toydata

    folder, bin_file = tmp_path / "train", tmp_path / "eval.bin"
    folder.mkdir()
    bin_file.write_bytes(b"")
    written = []

    def fake_write(root, sizes, seed):  # the toy data itself is tested above
        written.append(sizes)
        return folder, bin_file

    monkeypatch.setattr(toydata, "write_toy_data", fake_write)
    data = (None, None) if toy else (folder, [bin_file])
    a = full._check_args(*data, preset, None, None, None, steps, 0, small, False, tmp_path)
    assert a.toy is toy and bool(written) is toy
    assert a.attack_steps == want_steps
    assert a.attack_config().width == want_width
    notes = " ".join(full._notes(a))
    assert ("CPU-hour budget" in notes) is (preset == "paper-shape" and toy and not small)
    assert full._settings(a, [])["attack_width"] == want_width
