"""The family suites (``facelab bench fl|tokenizer|iris|synth``): a real run of the federated
learning suite at test size, every family degrading to "not installed" without its packages,
a runner that raises failing its section only, the generators' toy-weights export, and the
summaries' verdicts on hand-made rows."""

import hashlib
import json
import math

import pytest
import torch

from facelab.benchmarks import families, family_fl, family_iris, family_synth, family_tokenizer
from facelab.benchmarks import generators as G
from facelab.benchmarks.cli import main


def load(path):
    def no_constants(name):
        raise AssertionError(f"results.json holds {name}: not valid JSON")

    return json.loads(path.read_text(), parse_constant=no_constants)


@pytest.mark.skipif(
    not (families.installed("facelab.ariba") and families.installed("facelab.vflafe")),
    reason="facelab-ariba / facelab-vflafe not installed",
)
def test_fl_suite_small(tmp_path, capsys):
    out = tmp_path / "fl"
    assert main(["fl", "--small", "--out", str(out), "--no-progress"]) == 0
    assert "report written to" in capsys.readouterr().out
    data = load(out / "results.json")
    assert data["suite"] == "fl" and data["failed"] == []
    assert data["section"]["status"] == "ok"
    ariba = {r["strategy"]: r for r in data["rows"]}
    assert set(ariba) == set(family_fl.ariba_settings("small", 0)["strategies"])
    for r in ariba.values():
        assert r["status"] == "ok" and r["attack"] == "badnets" and r["seeds"] == 1
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["asr"] <= 1
    (vfl,) = data["section"]["tables"][1:]
    vrows = {r["variant"]: r for r in vfl["rows"]}
    assert set(vrows) == {"no-dp", "afe"}
    # the accountant's epsilon meets the target the noise was calibrated for
    assert vrows["afe"]["target_epsilon"] == 8 and 0 < vrows["afe"]["epsilon"] <= 8 * 1.001
    assert vrows["no-dp"]["epsilon"] is None  # infinite: no guarantee
    for r in vrows.values():
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["norm_auc"] <= 1
    md = (out / "report.md").read_text()
    lines = md.splitlines()
    assert lines[2] == "## Summary" and lines[4].startswith("**Federated learning** (ok): ARIBA")
    assert "VFL-AFE at ε = 8" in lines[4]
    for plot in data["plots"]:
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot in md


@pytest.mark.parametrize("key", ["fl", "tokenizer", "iris"])
def test_family_without_packages_is_not_installed(key, tmp_path, monkeypatch, capsys):
    module = {"fl": family_fl, "tokenizer": family_tokenizer, "iris": family_iris}[key]
    monkeypatch.setattr(module, "installed", lambda name: False)
    out = tmp_path / key
    assert main([key, "--out", str(out), "--no-progress"]) == 0
    data = load(out / "results.json")
    assert data["failed"] == [] and data["section"]["status"] == "not installed"
    tables = data["section"]["tables"]
    for t in tables:
        (row,) = t["rows"]
        assert row["status"].startswith("not installed (facelab-")
        assert all(v is None for k, v in row.items() if k not in ("status", t["columns"][0]))
    assert "not installed" in (out / "report.md").read_text().splitlines()[4]


def test_synth_without_weights_or_scorer(tmp_path, monkeypatch):
    """No FRCSyn, no toy weights: every generator row says what is missing, nothing fails."""
    monkeypatch.setattr(family_synth, "installed", lambda name: False)
    monkeypatch.setattr(G.GeneratorSpec, "is_installed", lambda self: self.name == "base")
    out = tmp_path / "synth"
    empty = tmp_path / "weights"
    empty.mkdir()
    rc = main(["synth", "--small", "--out", str(out), "--no-progress", "--toy-weights", str(empty)])
    assert rc == 0
    data = load(out / "results.json")
    rows = {r["dataset"]: r["status"] for r in data["rows"]}
    assert rows["synthesis base (core)"].startswith("no toy weights")
    assert "make_toy_weights.py --generators base" in rows["synthesis base (core)"]
    assert rows["UIFace"] == "not installed (facelab-uiface)"
    assert data["section"]["status"].startswith("not installed")


def test_runner_bug_fails_the_section_only(tmp_path, fake_families, capsys):
    section = families.run_family(
        "fakefamfail", level="small", seed=0, workdir=tmp_path / "w", out=tmp_path, progress=False
    )
    assert section.failed == ["fakefamfail"] and section.status.startswith("failed: RuntimeError")
    ok = families.run_suite("fakefam", small=True, out=tmp_path / "ok", progress=False)
    assert ok.rows[1] == {"name": "fake-b", "value": 2} and ok.failed == []
    assert ok.settings["level"] == "small" and "fake summary 3 rows" in ok.summary


def test_export_fp16_and_weights_dir(tmp_path):
    from safetensors.torch import load_file, save_file

    gen = tmp_path / "trained" / "generator"
    (gen / "denoiser").mkdir(parents=True)
    (gen / "generator.json").write_text('{"kind": "fake"}')
    w = torch.randn(64, 32)
    save_file(
        {"w": w, "steps": torch.arange(3)},
        str(gen / "denoiser" / "model.safetensors"),
        metadata={"format": "fake-format"},
    )
    dest = G.export_fp16(gen, tmp_path / "toy" / "fake", {"generator": "fake"})
    half = load_file(str(dest / "denoiser" / "model.safetensors"))
    from safetensors import safe_open

    with safe_open(str(dest / "denoiser" / "model.safetensors"), framework="pt") as fh:
        assert fh.metadata() == {"format": "fake-format"}  # file formats survive the export
    assert half["w"].dtype == torch.float16 and half["steps"].dtype == torch.int64
    assert torch.allclose(half["w"].float(), w, atol=2e-3, rtol=1e-3)
    info = G.read_info(dest)
    f = info["files"]["denoiser/model.safetensors"]
    data = (dest / "denoiser" / "model.safetensors").read_bytes()
    assert f["sha256"] == hashlib.sha256(data).hexdigest() and f["bytes"] == len(data)
    assert f["bytes"] < w.numel() * 4  # half the float32 size, plus headers
    assert G.weights_dir("fake", tmp_path / "toy") == dest
    with pytest.raises(G.MissingWeightsError, match=r"make_toy_weights\.py --generators other"):
        G.weights_dir("other", tmp_path / "toy")
    with pytest.raises(G.MissingWeightsError, match="--toy-weights"):
        G.weights_dir("fake", None)
    (dest / G.INFO_FILE).write_text("[1, 2]")
    with pytest.raises(G.FormatError, match="expected a JSON object"):
        G.read_info(dest)


def test_summaries_judge_the_paper_claims():
    def tok(rfids):
        names = ("baseline", "+hist", "+hist+res")
        return [
            {"variant": v, "rfid": x, "hist_kl": 0.5, "paper_rfid": 1.0}
            for v, x in zip(names, rfids, strict=True)
        ]

    cfg = {"steps": 10, "seeds": (0,)}
    assert "as in the paper" in family_tokenizer._summary(tok([3.0, 2.0, 1.0]), cfg)
    assert "not reproduced" in family_tokenizer._summary(tok([3.0, 1.0, 2.0]), cfg)

    def fl(asr_ariba, acc_ariba):
        return [
            {
                "attack": "badnets",
                "strategy": "fedavg",
                "status": "ok",
                "asr": 0.9,
                "accuracy": 0.8,
            },
            {
                "attack": "badnets",
                "strategy": "ariba",
                "status": "ok",
                "asr": asr_ariba,
                "accuracy": acc_ariba,
            },
        ]

    s = {"num_clients": 10, "rounds": 5, "data": "digits", "seeds": (0,)}
    assert "as the paper claims" in family_fl._ariba_summary(fl(0.1, 0.79), s)
    assert "not shown" in family_fl._ariba_summary(fl(0.6, 0.79), s)  # backdoor kept
    assert "not shown" in family_fl._ariba_summary(fl(0.1, 0.70), s)  # accuracy lost
    key = f"frr@{family_iris.FAR:g}"
    rows = [
        {"method": m, "protocol": p, "eye": "left", "status": "ok", key: v}
        for m, p, v in [
            ("NormFree", "Control", 0.1),
            ("classical (oracle)", "Control", 0.2),
            ("NormFree", "Gaze", 0.3),
            ("classical (oracle)", "Gaze", 0.2),
        ]
    ]
    assert "better on 0 of 1 off-axis protocols" in family_iris._summary(rows)
    assert "not shown" in family_iris._summary(rows)
    rows[2][key] = 0.05
    done = family_iris._summary(rows)
    assert "beats the classical pipeline on every off-axis protocol" in done
    assert "stays better on" not in done  # NormFree also wins Control here
    rows[0][key] = 0.25
    assert "the classical pipeline stays better on Control" in family_iris._summary(rows)
    assert "not tested" in family_iris._summary(rows[:2])
    assert math.isnan(families.missing_row("X", "facelab.x", family_iris.COLUMNS)[key])


@pytest.mark.skipif(not families.installed("facelab.immeriris"), reason="facelab-immeriris absent")
def test_iris_quick_loads_the_shipped_network_instead_of_training():
    from facelab.core.errors import UnknownNameError

    assert family_iris.settings("quick", 0)["train"] == "shipped"
    assert family_iris.settings("suite", 0)["train"] == {}  # the suite trains the toy preset
    net = family_iris.shipped_network("normfree")
    assert net.paradigm == "normfree" and not net.training
    with pytest.raises(UnknownNameError, match="normkeep"):
        family_iris.shipped_network("normkeep")


@pytest.mark.skipif(not families.installed("facelab.frcsyn"), reason="facelab-frcsyn absent")
def test_generated_manifest_readable_by_frcsyn(tmp_path):
    """A dataset core's generate_dataset writes (shape under 'run', source on top) is counted
    and called synthetic by FRCSyn's own reader, with no rewrite of the manifest."""
    from facelab.frcsyn import read_manifest

    core_layout = {"contexts_file": "c.safetensors", "source": "synthetic", "run": {}}
    core_layout["run"].update(num_identities=4, images_per_identity=3)
    (tmp_path / "manifest.json").write_text(json.dumps(core_layout))
    before = (tmp_path / "manifest.json").read_text()
    m = read_manifest(tmp_path / "manifest.json")
    assert m.num_images == 12 and m.num_identities == 4 and m.declares_real is False
    assert (tmp_path / "manifest.json").read_text() == before
