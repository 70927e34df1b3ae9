import math

import pytest

from facelab.benchmarks.methods import MethodRunner, load_entry, run_method
from facelab.core.errors import RangeError


def test_missing_package_is_not_built(tmp_path):
    out = run_method("nosuchmethod", small=True, seed=0, workdir=tmp_path, progress=False)
    assert out.status == "not built" and not out.failed
    (row,) = out.rows
    assert row["method"] == "nosuchmethod" and row["status"] == "not built"
    assert "not installed" in row["notes"]
    assert math.isnan(row["accuracy"])


def test_package_without_quick_or_run_quick_is_not_built(fake_methods, tmp_path):
    for name, reason in [
        ("fakenoquick", "does not exist"),
        ("fakenorun", "has no run_quick"),
        ("fakeimporterror", "ModuleNotFoundError"),
    ]:
        fn, why = load_entry(name, "run_quick")
        assert fn is None and reason in why
        out = run_method(name, small=True, seed=0, workdir=tmp_path / name, progress=False)
        assert out.status == "not built" and out.rows[0]["status"] == "not built"
        assert reason in out.rows[0]["notes"]


def test_raising_method_is_a_failed_row(fake_methods, tmp_path):
    logs = []
    out = run_method(
        "fakefail", small=True, seed=0, workdir=tmp_path, progress=False, log=logs.append
    )
    assert out.failed and "boom in training" in out.error
    assert out.rows[0]["status"] == "failed: RuntimeError: boom in training"
    assert "Traceback" in out.traceback
    assert any("FAILED" in line for line in logs)


def test_contract_violation_is_a_failed_row(fake_methods, tmp_path):
    out = run_method("fakebadrow", small=True, seed=0, workdir=tmp_path, progress=False)
    assert out.failed and "missing" in out.rows[0]["status"]


def test_good_method_rows_are_validated_and_arguments_passed(fake_methods, tmp_path):
    out = run_method("fakeok", small=True, seed=7, workdir=tmp_path / "w", progress=False)
    assert out.status == "ok"
    assert [r["method"] for r in out.rows] == ["fakeok", "fakeok (ablation)"]
    assert all(r["status"] == "ok" for r in out.rows)
    assert out.rows[0]["roc"]["tpr"] == [0.0, 0.6, 1.0]
    import facelab.fakeok.quick as q

    assert q.CALLS == [dict(small=True, seed=7, workdir=str(tmp_path / "w"), progress=False)]


def test_runner_in_process_and_bad_jobs(fake_methods, tmp_path):
    with MethodRunner(["fakeok"], jobs=1, workdir_root=tmp_path, small=True, progress=False) as r:
        ((out, stage),) = list(r.results())
    assert out.status == "ok" and stage.where == "main" and r.pool is None
    import facelab.fakeok.quick as q

    assert q.CALLS[-1]["workdir"] == str(tmp_path / "fakeok")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(RangeError, match="jobs"):
            MethodRunner(["fakeok"], jobs=bad)
