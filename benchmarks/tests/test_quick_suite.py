"""The reduced quick suite end to end (through the CLI), and its reproducibility."""

import dataclasses
import json
import math

import pytest

from facelab.benchmarks import quick
from facelab.benchmarks.cli import main
from facelab.benchmarks.methods import PPFR_METHODS
from facelab.benchmarks.rows import TABLE_COLUMNS


def strict_json(path):
    def no_constants(name):
        raise AssertionError(f"results.json holds {name}: not valid JSON")

    return json.loads(path.read_text(), parse_constant=no_constants)


def finite(v):
    return isinstance(v, int | float) and math.isfinite(v)


def test_quick_small_report(tmp_path, fake_methods, fake_families, capsys):
    out = tmp_path / "quick"
    methods = [*PPFR_METHODS, "nosuchmethod", "fakefail", "fakeok"]
    families = ["fakefam", "fakefamfail"]
    # --jobs 1: every method in this process (a spawned worker per method would add its start-up
    # to the test's time; test_same_seed_same_numbers covers the worker processes)
    args = ["quick", "--small", "--out", str(out), "--no-progress", "--jobs", "1"]
    rc = main([*args, "--methods", *methods, "--families", *families])
    assert rc == 1  # fakefail raised: the suite finishes, then exits non-zero
    printed = capsys.readouterr()
    assert "report written to" in printed.out and "FAILED: fakefamfail, fakefail" in printed.err

    data = strict_json(out / "results.json")
    assert data["suite"] == "quick"
    assert data["columns"] == [k for k, _ in TABLE_COLUMNS]
    assert data["failed"] == ["fakefamfail", "fakefail"]
    assert {"facelab-core", "facelab-benchmarks"} <= set(data["versions"])
    assert data["settings"]["seed"] == 0 and data["settings"]["quick"] == dataclasses.asdict(
        quick.SMALL
    )
    assert data["machine"]["cpu_count"] >= 1
    assert data["settings"]["jobs"] == 1 and data["settings"]["torch_threads"] == 1
    stages = [s["stage"] for s in data["timings"]["stages"]]
    assert any("arcface baseline: train" in s for s in stages) and "fakeok: run_quick" in stages
    rows = {r["method"]: r for r in data["rows"]}

    # our own rows: every number finite and in range; bytes from the sizes, computed here
    s = quick.SMALL
    groups = math.ceil(s.image_size / 16) ** 2  # iresnet: stem stride 1, four stride-2 stages
    expect_bytes = {
        quick.BASELINE: 3 * s.image_size**2,
        quick.EMBEDDING: 4 * s.embedding_size,
        "slerpface templates (unprotected)": 4 * 16 * groups,
        "slerpface": 4 * 16 * groups,
        "biohashing": min(256, 16 * groups),  # one uint8 per bit
        "ironmask": 4 * (16 * groups) ** 2 + 32,  # float32 rotation + SHA-256 digest
    }
    for name, nbytes in expect_bytes.items():
        r = rows[name]
        assert r["status"] == "ok", r
        assert r["bytes_per_image"] == nbytes, name
        for k in ("accuracy", "tar_at_far_1e-3", "attack_ssim", "attack_identity_leakage"):
            assert finite(r[k]) and -1 <= r[k] <= 1, (name, k, r[k])
        assert 0 <= r["accuracy"] <= 1 and r["accuracy_std"] >= 0
        assert finite(r["attack_psnr"]) and r["attack_psnr"] > 0
        assert r["train_time_s"] > 0 and r["infer_images_per_s"] > 0
    ref = rows[quick.MEAN_IMAGE]
    assert ref["accuracy"] is None and finite(ref["attack_ssim"])

    # methods: built ones have a row with finite numbers, missing ones a "not built" row
    for m in PPFR_METHODS:
        mine = [r for r in data["rows"] if r["method"].startswith(m)]
        assert mine, m
        if mine[0]["status"] == "not built":
            assert len(mine) == 1
            continue
        assert all(r["status"] == "ok" for r in mine), mine
        assert any(
            all(finite(r[k]) for k in ("accuracy", "tar_at_far_1e-3", "train_time_s")) for r in mine
        ), mine
    assert rows["nosuchmethod"]["status"] == "not built"
    assert rows["fakefail"]["status"] == "failed: RuntimeError: boom in training"
    assert rows["fakeok"]["status"] == "ok" and rows["fakeok (ablation)"]["accuracy"] is None
    assert data["roc"]["fakeok"]["tpr"] == [0.0, 0.6, 1.0]
    assert 0.5 <= data["roc"][quick.BASELINE]["auc"] <= 1

    # the report and the plots
    md = (out / "report.md").read_text()
    header = "| " + " | ".join(h for _, h in TABLE_COLUMNS) + " |"
    lines = md.splitlines()
    # the first section summarizes every family, one bullet each, before the table
    assert lines[2] == "## Summary" and lines.index(header) > lines.index("## Results")
    bullets = [ln for ln in lines[3 : lines.index("## Results")] if ln.startswith("- **")]
    assert [b.split("**")[1] for b in bullets] == [
        "Privacy-preserving recognition",
        "Template protection",
        "Fake family",
        "Failing family",
    ]
    base = rows[quick.BASELINE]
    assert f"accuracy {base['accuracy']:.3f}" in bullets[0]
    assert "fakeok accuracy 0.900, leakage 0.200" in bullets[0]
    assert "nosuchmethod not built" in bullets[0]
    assert "(ok): fake summary 3 rows" in bullets[2] and "failed" in bullets[3]
    assert "## Fake family (family)" in md and "| fake-a | 1 |" in md
    assert "![fakefam.png](fakefam.png)" in md
    assert [f["key"] for f in data["families"]] == families
    for section in (
        "## Notes",
        "## Settings and seeds",
        "## Timings",
        "## Versions",
        "## Machine",
        "## Plots",
    ):
        assert section in md
    assert md.count("| not built |") >= 1 and "| failed: RuntimeError: boom in training |" in md
    for plot in ("roc.png", "accuracy_vs_leakage.png", "grid_inversion.png", "grid_fakeok.png"):
        assert plot in data["plots"]
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


TINY = dataclasses.replace(
    quick.SMALL,
    identities=16,
    images_per_identity=4,
    eval_identities=12,
    eval_images_per_identity=3,
    eval_pairs=60,
    batch_size=16,
    baseline_steps=8,
    group_steps=6,
    attack_identities=8,
    attack_images_per_identity=3,
    victim_identities=6,
    attack_steps=4,
)
NUMBERS = (
    "accuracy",
    "accuracy_std",
    "tar_at_far_1e-3",
    "attack_ssim",
    "attack_psnr",
    "attack_identity_leakage",
)


def numbers(result):
    """The numbers of each row, NaN as None (NaN != NaN would fail an equality)."""
    return {
        r["method"]: tuple(None if r[k] != r[k] else r[k] for k in NUMBERS) for r in result.rows
    }


@pytest.mark.slow
def test_same_seed_same_numbers(tmp_path, fake_methods):
    """Same seed: same numbers, whether the methods run in this process (jobs=1) or in worker
    processes (jobs=3: two at a time); another seed: other numbers. A worker process that dies
    fails its own method only."""
    runs = [
        quick.run(
            seed=seed,
            out=tmp_path / f"run{i}",
            progress=False,
            methods=methods,
            settings=TINY,
            jobs=jobs,
            families=(),
        )
        for i, (seed, methods, jobs) in enumerate(
            [(5, ("fakeok",), 1), (5, ("fakeexit", "fakeok"), 3), (6, (), 1)]
        )
    ]
    first, again, other = (numbers(r) for r in runs)
    assert "fakeok" in first and quick.BASELINE in first
    assert first == {k: v for k, v in again.items() if k != "fakeexit"}
    assert all(
        v is not None and math.isfinite(v)
        for k, vals in first.items()
        if k not in (quick.MEAN_IMAGE, "fakeok (ablation)")
        for v in vals
    )
    # another seed is other data and other weights: the check above could fail
    assert first[quick.BASELINE] != other[quick.BASELINE]

    par = runs[1]
    (dead,) = [r for r in par.rows if r["method"] == "fakeexit"]
    assert "exited with code 3 before returning rows" in dead["status"]
    assert par.failed == ["fakeexit"] and runs[0].failed == []
    where = {s["stage"]: s["where"] for s in par.timings["stages"]}
    assert where["fakeok: run_quick"] == "worker" and where["arcface baseline: verify"] == "main"
    assert par.timings["cpu_s_workers"] > 0 and "cpu_s_workers" not in runs[0].timings
    assert runs[0].settings["jobs"] == 1 and par.settings["jobs"] == 3
    assert (tmp_path / "run1" / "work" / "fakeexit").is_dir()  # workdir = <work>/<method>
