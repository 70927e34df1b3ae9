import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from facelab.ariba.app import SimConfig, config_from_run_config
from facelab.ariba.attacks import AttackConfig
from facelab.ariba.data import DataConfig, Trigger, dirichlet_split, load
from facelab.core.cli import main as facelab
from facelab.core.errors import FacelabError


def test_dirichlet_split_is_a_partition_and_skews_with_small_alpha():
    labels = np.repeat(np.arange(10), 50)
    parts = dirichlet_split(labels, 8, alpha=0.3, seed=1, min_size=10)
    allidx = np.sort(np.concatenate(parts))
    np.testing.assert_array_equal(allidx, np.arange(500))  # every sample once
    assert min(len(p) for p in parts) >= 10

    def classes_per_client(ps):
        return np.mean([(np.bincount(labels[p], minlength=10) > 5).sum() for p in ps])

    iid = dirichlet_split(labels, 8, alpha=float("inf"), seed=1)
    assert classes_per_client(parts) < classes_per_client(iid) - 2
    with pytest.raises(FacelabError, match="samples"):
        dirichlet_split(labels, 60, alpha=1.0, min_size=10)
    with pytest.raises(FacelabError, match="alpha"):
        dirichlet_split(labels, 4, alpha=0.0)


def test_digits_split_and_trigger_parts():
    split = load(DataConfig())
    assert split.x_train.shape[1:] == (1, 8, 8) and split.num_classes == 10
    assert len(split.x_train) + len(split.x_test) == 1797
    full = Trigger().mask(8, 8)
    parts = [Trigger((p,)).mask(8, 8) for p in range(4)]
    assert int(full.sum()) == 8 and all(int(p.sum()) == 2 for p in parts)
    assert torch.equal(parts[0] | parts[1] | parts[2] | parts[3], full)
    x = split.x_test[:3]
    xt = Trigger().apply(x, 1.0)
    assert torch.equal(xt[:, :, ~full], x[:, :, ~full]) and bool((xt[:, :, full] == 1.0).all())
    assert Trigger().mask(32, 32).sum() == 8 * 16  # cells of 4x4 pixels at 32 px
    assert AttackConfig("dba", 4).trigger_for(6) == Trigger((2,))


def test_configs_reject_bad_values():
    with pytest.raises(FacelabError, match="strategy"):
        SimConfig(strategy="trimmed")  # type: ignore[arg-type]
    with pytest.raises(FacelabError, match="num_attackers"):
        SimConfig(num_clients=4, attack=AttackConfig("badnets", num_attackers=4))
    with pytest.raises(FacelabError, match=r"attack\.kind"):
        AttackConfig("label_flip")  # type: ignore[arg-type]
    with pytest.raises(FacelabError, match="unknown keys"):
        config_from_run_config({"rounds": 3, "lr": 0.1})
    cfg = config_from_run_config(
        {"rounds": 3, "attack": "dba", "num-attackers": 4, "num-prune": -1}
    )
    assert cfg.rounds == 3 and cfg.attack.kind == "dba" and cfg.num_prune is None


def test_cli_detect_and_its_bad_input(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    paths = []
    for i in range(6):
        scale = 8.0 if i == 4 else 1.0
        u = {
            "w": scale * (torch.ones(8, 5) + torch.randn(8, 5, generator=g)),
            "b": torch.randn(8, generator=g),
        }
        paths.append(str(tmp_path / f"c{i}.safetensors"))
        save_file(u, paths[-1])
    assert facelab(["ariba", "detect", "--updates", *paths, "--num-prune", "2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["pruned"] == [4] and out["excluded"] == [4] and len(out["counts"]) == 6

    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    rc = facelab(["ariba", "detect", "--updates", paths[0], str(tmp_path / "junk.safetensors")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("facelab ariba: error:")
    rc = facelab(["ariba", "detect", "--updates", *paths[:3], "--num-prune", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "num_prune" in err[-1]
