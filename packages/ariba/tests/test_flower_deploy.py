"""The Flower app as a real deployment: a SuperLink, one SuperNode per client and
``flwr run`` (separate processes on 127.0.0.1, free ports, no Ray), driven by the repository's
``scripts/flower_deploy.py``, against the in-process grid on the same config."""

import importlib.util
import sys
from pathlib import Path

import pytest

from facelab.ariba.app import (
    SimConfig,
    config_from_run_config,
    node_configs,
    run_config_of,
    write_app_project,
)
from facelab.ariba.attacks import AttackConfig, LocalConfig
from facelab.ariba.simulate import simulate_summary
from facelab.core.errors import RangeError, UnknownNameError

ROOT = Path(__file__).resolve().parents[3]


def _deploy_tool():
    path = ROOT / "scripts" / "flower_deploy.py"
    spec = importlib.util.spec_from_file_location("flower_deploy", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["flower_deploy"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


TINY = SimConfig(
    strategy="ariba",
    num_clients=3,
    rounds=2,
    attack=AttackConfig("badnets", num_attackers=1),
    local=LocalConfig(local_epochs=1),
)


def test_the_deployed_app_gives_the_in_process_result(tmp_path):
    """Three SuperNodes (one BadNets attacker), ARIBA, 2 rounds. Local training is seeded by
    (seed, round, partition id) and runs with one thread in every process, so the clients'
    updates are the same in both runs; only the order in which the replies arrive differs
    (Flower's node ids are random in a deployment), which moves the aggregate by float
    rounding. Tolerance: 1 point of accuracy and ASR; the detections must be the same."""
    tool = _deploy_tool()
    app = write_app_project(tmp_path / "app", TINY)
    dep = tool.deploy(app, node_configs(TINY), timeout=600, workdir=tmp_path / "run")
    local = simulate_summary(TINY)
    got = dep.result
    assert [r["round"] for r in got["rounds"]] == [1, 2]
    for g, loc in zip(got["rounds"], local["rounds"], strict=True):
        assert g["replies"] == loc["replies"] == 3
        assert g["accuracy"] == pytest.approx(loc["accuracy"], abs=0.01)
        assert g["asr"] == pytest.approx(loc["asr"], abs=0.01)
        assert g["pruned"] == loc["pruned"]
        assert g["confusion"] == loc["confusion"]
    assert got["initial"] == pytest.approx(local["initial"])
    for k in range(TINY.num_clients):  # one ClientApp process per round on every SuperNode
        assert dep.logs[f"supernode-{k}"].count("Start `flwr-clientapp` process") == 2
    assert dep.run_id > 0
    assert not [p for p in dep.pids if tool.alive(p)]  # nothing left running


def test_the_run_config_round_trips_and_rejects_what_the_app_cannot_read(tmp_path):
    rc = run_config_of(TINY)
    assert config_from_run_config(rc) == TINY
    assert node_configs(TINY) == [{"partition-id": i, "num-partitions": 3} for i in range(3)]
    with pytest.raises(RangeError, match="width"):
        run_config_of(SimConfig(width=8))
    with pytest.raises(UnknownNameError, match="unknown keys"):
        config_from_run_config({**rc, "rounds-per-epoch": 1})
    text = (write_app_project(tmp_path / "app", TINY) / "pyproject.toml").read_text()
    assert 'serverapp = "facelab.ariba.app:server_app"' in text
    assert 'result-file = ""' in text and "num-clients = 3" in text


def test_flower_app_command(tmp_path, capsys):
    from facelab.core.cli import main as facelab

    out = tmp_path / "app"
    assert facelab(["ariba", "flower-app", "--out", str(out), "--cfg.rounds", "2"]) == 0
    assert "rounds = 2" in (out / "pyproject.toml").read_text()
    assert "partition-id=9 num-partitions=10" in capsys.readouterr().out
    rc = facelab(["ariba", "flower-app", "--out", str(tmp_path / "bad"), "--cfg.width", "8"])
    assert rc == 2 and not (tmp_path / "bad").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("facelab ariba") and "width" in err[0]
