"""The Flower app as a real deployment: a SuperLink, one SuperNode per passive party and
``flwr run`` (separate processes on 127.0.0.1, free ports, no Ray), driven by the repository's
``scripts/flower_deploy.py``, against the in-process run of the same config."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from facelab.vflafe.flower import (
    AppConfig,
    FlowerOutcome,
    node_configs,
    run_local,
    write_app_project,
)

ROOT = Path(__file__).resolve().parents[3]


def _deploy_tool():
    path = ROOT / "scripts" / "flower_deploy.py"
    spec = importlib.util.spec_from_file_location("flower_deploy", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["flower_deploy"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_the_deployed_app_gives_the_in_process_result(tmp_path):
    """Two passive parties as SuperNodes, the active party as the ServerApp; AFE with noise
    on the embeddings and a fixed noise seed (so both runs draw the same noise), 2 rounds. The
    computation is deterministic with one thread per process (OMP_NUM_THREADS=1 in the
    deployment, torch.set_num_threads(1) here): the accuracy is the same and the losses agree
    to float rounding."""
    tool = _deploy_tool()
    cfg = AppConfig(mode="afe", noise_multiplier=1.0, noise_seed=3, epochs=1, batch_size=213)
    app = write_app_project(tmp_path / "app", cfg)
    dep = tool.deploy(app, node_configs(cfg), timeout=600, workdir=tmp_path / "run")
    got = FlowerOutcome.from_dict(dep.result)
    local, _ = run_local(cfg)
    assert len(got.step_times) == len(local.step_times) == 2
    assert got.accuracy == local.accuracy
    assert got.epoch_losses == pytest.approx(local.epoch_losses, rel=1e-5)
    assert got.epsilon == pytest.approx(local.epsilon)
    # the parties ran as ClientApp processes of two SuperNodes: a process per message
    for k in range(cfg.parties):
        log = dep.logs[f"supernode-{k}"]
        assert log.count("Start `flwr-clientapp` process") == 1 + 2 * 2 + 1  # hello, rounds, test
    assert dep.run_id > 0
    assert not [p for p in dep.pids if tool.alive(p)]  # nothing left running
    assert os.getpid() not in dep.pids


def test_the_deploy_tool_rejects_bad_input(tmp_path):
    tool = _deploy_tool()
    with pytest.raises(tool.DeployError, match=r"pyproject\.toml"):
        tool.deploy(tmp_path, [{"party-id": 0}])
    write_app_project(tmp_path / "app")
    with pytest.raises(tool.DeployError, match="at least one SuperNode"):
        tool.deploy(tmp_path / "app", [])
    with pytest.raises(TypeError, match="config value"):
        tool.toml_value([1, 2])


def test_flower_app_command_writes_the_project_flwr_run_reads(tmp_path, capsys):
    import tomllib

    from facelab.core.cli import main as facelab

    assert facelab(["vflafe", "flower-app", "--out", str(tmp_path / "app"), "--epochs", "2"]) == 0
    conf = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())
    assert conf["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "facelab.vflafe.flower:server_app",
        "clientapp": "facelab.vflafe.flower:client_app",
    }
    run_config = conf["tool"]["flwr"]["app"]["config"]
    assert AppConfig.from_run_config(run_config) == AppConfig(epochs=2)
    assert "--node party-id=1" in capsys.readouterr().out
    rc = facelab(["vflafe", "flower-app", "--out", str(tmp_path / "bad"), "--dataset", "toyfaces"])
    assert rc == 2 and not (tmp_path / "bad").exists()
    assert "facelab vflafe" in capsys.readouterr().err
