"""The Flower app: a ServerApp and a ClientApp built from one ``SimConfig``.

``make_client_app(cfg)`` trains each node's Dirichlet share of the data (its behaviour, benign
or attacker, from its partition id); ``make_server_app(cfg)`` runs a strategy from
``build_strategy`` with a server-side evaluation of main-task accuracy and attack success
rate. The same objects run in Flower's simulation (``run_simulation``, Ray), in a deployment
(``flower-superlink``, one ``flower-supernode --node-config "partition-id=K"`` per client,
``flwr run`` of the project ``write_app_project`` writes; ``client_app`` / ``server_app``
below read ``context.run_config``) and in the in-process grid of ``facelab.ariba.simulate``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    Bulyan,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)

from facelab.ariba._checks import checks_deferred
from facelab.ariba.attacks import AttackConfig, LocalConfig, client_update
from facelab.ariba.data import DataConfig, Split, Trigger, dirichlet_split, load
from facelab.ariba.detect import DetectorConfig
from facelab.ariba.model import SmallCNN
from facelab.ariba.strategy import ARIBA, DeltaStrategy, NormClipping, NormDetection
from facelab.core.errors import RangeError, UnknownNameError

# nothing of ours may phone home: Flower's telemetry is off unless the user turns it on
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

STRATEGIES = (
    "fedavg",
    "krum",
    "multikrum",
    "fedmedian",
    "fedtrimmedavg",
    "bulyan",
    "normclip",
    "normdetect",
    "ariba",
)


@dataclass
class SimConfig:
    """One federated run: data, clients, attack, local training and the server's strategy."""

    strategy: Literal[
        "fedavg",
        "krum",
        "multikrum",
        "fedmedian",
        "fedtrimmedavg",
        "bulyan",
        "normclip",
        "normdetect",
        "ariba",
    ] = "ariba"
    num_clients: int = 10
    rounds: int = 10
    alpha: float = 0.5
    """Dirichlet concentration of the non-IID split (inf: IID)."""
    width: int = 16
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    memory: float = 0.5
    """ARIBA: weight of a node's past outlier counts (0: every round on its own)."""
    num_prune: int | None = None
    """ARIBA / norm detection: at most this many pruned per round (None: fewer than half)."""
    num_malicious: int | None = None
    """f of Krum / MultiKrum / Bulyan (None: the number of attackers, at least 1)."""
    trimmed_beta: float = 0.2
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        if not checks_deferred():
            self.validate()

    def validate(self) -> None:
        """Raise a FacelabError on a bad value (see ``_checks``)."""
        if self.strategy not in STRATEGIES:
            raise UnknownNameError(f"strategy: expected one of {STRATEGIES}, got {self.strategy!r}")
        if self.num_clients < 3:
            raise RangeError(f"num_clients: expected >= 3, got {self.num_clients}")
        if self.rounds < 1:
            raise RangeError(f"rounds: expected >= 1, got {self.rounds}")
        if self.attack.num_attackers >= self.num_clients:
            raise RangeError(
                f"attack.num_attackers: expected fewer than num_clients ({self.num_clients}), "
                f"got {self.attack.num_attackers}"
            )

    @property
    def f(self) -> int:
        return (
            self.num_malicious
            if self.num_malicious is not None
            else max(1, self.attack.num_attackers)
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=4)
def dataset(data: DataConfig) -> Split:
    return load(data)


@functools.lru_cache(maxsize=16)
def partitions(data: DataConfig, num_clients: int, alpha: float, seed: int) -> list[np.ndarray]:
    return dirichlet_split(dataset(data).y_train, num_clients, alpha, seed=seed)


def build_model(cfg: SimConfig) -> SmallCNN:
    split = dataset(cfg.data)
    torch.manual_seed(cfg.seed)
    return SmallCNN(split.image_shape[0], split.num_classes, width=cfg.width)


def initial_arrays(cfg: SimConfig) -> ArrayRecord:
    return ArrayRecord(build_model(cfg).state_dict())


# ---------------------------------------------------------------------------- strategies


def build_strategy(cfg: SimConfig) -> Strategy:
    """The server strategy of ``cfg.strategy``, all nodes sampled every round, no federated
    evaluation (the server evaluates the global model)."""
    n = cfg.num_clients
    common: dict[str, Any] = dict(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=n,
        min_available_nodes=n,
    )
    name = cfg.strategy
    if name == "fedavg":
        return FedAvg(**common)
    if name == "krum":
        return Krum(num_malicious_nodes=cfg.f, **common)
    if name == "multikrum":
        return MultiKrum(num_malicious_nodes=cfg.f, num_nodes_to_select=n - cfg.f, **common)
    if name == "fedmedian":
        return FedMedian(**common)
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(beta=cfg.trimmed_beta, **common)
    if name == "bulyan":
        f = min(cfg.f, (n - 3) // 4)
        return Bulyan(num_malicious_nodes=f, **common)
    if name == "normclip":
        return NormClipping(clip_norm=cfg.clip_norm, **common)
    if name == "normdetect":
        return NormDetection(num_prune=cfg.num_prune, detector=cfg.detector, memory=0.0, **common)
    return ARIBA(num_prune=cfg.num_prune, detector=cfg.detector, memory=cfg.memory, **common)


# ---------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_arrays(cfg: SimConfig, arrays: ArrayRecord) -> dict[str, float]:
    """Main-task accuracy on the test split and attack success rate: the share of test images
    of other classes that the full trigger sends to the target label."""
    split = dataset(cfg.data)
    model = build_model(cfg)
    model.load_state_dict(arrays.to_torch_state_dict())
    model.eval()
    pred = model(split.x_test).argmax(1)
    acc = float((pred == split.y_test).double().mean())
    other = split.y_test != cfg.attack.target_label
    xt = Trigger().apply(split.x_test[other], split.value_range[1])
    asr = float((model(xt).argmax(1) == cfg.attack.target_label).double().mean())
    return {"accuracy": acc, "asr": asr}


# ---------------------------------------------------------------------------- the apps


def train_message(cfg: SimConfig, msg: Message, partition_id: int) -> Message:
    """A ClientApp's answer to a train message: local training as the node's behaviour says."""
    split = dataset(cfg.data)
    idx = torch.from_numpy(partitions(cfg.data, cfg.num_clients, cfg.alpha, cfg.seed)[partition_id])
    model = build_model(cfg)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    server_round = int(msg.content["config"].get("server-round", 0))
    seed = (cfg.seed * 1_000_003 + server_round * 1_009 + partition_id) % (2**31)
    state, loss, attacker = client_update(
        model,
        split.x_train[idx],
        split.y_train[idx],
        partition_id,
        cfg.attack,
        cfg.local,
        seed,
        split.value_range[1],
        cfg.num_clients,
    )
    metrics = MetricRecord(
        {"num-examples": int(idx.numel()), "train-loss": loss, "attacker": int(attacker)}
    )
    return Message(
        RecordDict({"arrays": ArrayRecord(dict(state)), "metrics": metrics}), reply_to=msg
    )


def make_client_app(cfg: SimConfig) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return train_message(cfg, msg, int(context.node_config["partition-id"]))

    return app


def run_server(
    cfg: SimConfig,
    grid: Grid,
    strategy: Strategy | None = None,
    marks: list[float] | None = None,
) -> tuple[Strategy, Any]:
    """Run ``cfg.rounds`` rounds on ``grid``; returns the strategy and Flower's ``Result``.
    ``marks`` (optional) gets ``time.perf_counter()`` at every server-side evaluation (round 0
    = the initial model, then after each round): round ``r`` took ``marks[r] - marks[r-1]``
    (send, local training, replies, aggregation and the evaluation)."""
    strategy = strategy if strategy is not None else build_strategy(cfg)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        out = MetricRecord(evaluate_arrays(cfg, arrays))
        if marks is not None:
            marks.append(time.perf_counter())
        return out

    result = strategy.start(
        grid=grid,
        initial_arrays=initial_arrays(cfg),
        num_rounds=cfg.rounds,
        evaluate_fn=evaluate,
    )
    return strategy, result


def make_server_app(cfg: SimConfig, sink: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp running ``cfg``; the strategy and Flower's ``Result`` go into ``sink``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy, result = run_server(cfg, grid)
        if sink is not None:
            sink["strategy"], sink["result"] = strategy, result

    return app


def run_summary(cfg: SimConfig, strategy: Strategy, result: Any, marks: list[float]) -> dict:
    """A run as plain data (what a deployed ServerApp writes to ``result-file``): per round the
    server's accuracy and ASR, the round's wall time and, for a defending strategy, how many
    replies it saw and pruned and the (tp, fp, fn) of its exclusions against the attackers."""
    evals = result.evaluate_metrics_serverapp
    history = strategy.history if isinstance(strategy, DeltaStrategy) else []
    rounds = []
    for r in range(1, cfg.rounds + 1):
        ev = evals.get(r, {})
        rep = next((h for h in history if h.server_round == r), None)
        conf = rep.confusion() if rep is not None else None
        rounds.append(
            {
                "round": r,
                "accuracy": float(ev.get("accuracy", math.nan)),
                "asr": float(ev.get("asr", math.nan)),
                "seconds": marks[r] - marks[r - 1] if r < len(marks) else math.nan,
                "replies": len(rep.node_ids) if rep is not None else None,
                "pruned": len(rep.pruned) if rep is not None else None,
                "confusion": list(conf) if conf is not None else None,
            }
        )
    init = evals.get(0, {})
    return {
        "strategy": cfg.strategy,
        "initial": {k: float(v) for k, v in dict(init).items()},
        "rounds": rounds,
    }


# ---------------------------------------------------------------------------- deployment


def run_config_of(cfg: SimConfig) -> dict[str, Any]:
    """The Flower run config of ``cfg`` (the keys ``config_from_run_config`` reads; the rest
    of ``cfg`` must be at its defaults)."""
    rc = {
        "strategy": cfg.strategy,
        "num-clients": cfg.num_clients,
        "rounds": cfg.rounds,
        "alpha": cfg.alpha,
        "seed": cfg.seed,
        "dataset": cfg.data.name,
        "attack": cfg.attack.kind,
        "num-attackers": cfg.attack.num_attackers,
        "local-epochs": cfg.local.local_epochs,
        "num-prune": -1 if cfg.num_prune is None else cfg.num_prune,
        "result-file": "",
    }
    back = config_from_run_config(rc)
    if back != cfg:
        diff = [
            f.name for f in dataclasses.fields(cfg) if getattr(back, f.name) != getattr(cfg, f.name)
        ]
        raise RangeError(
            f"run config: the Flower app reads {sorted(rc)}; cfg differs from their defaults "
            f"in {diff}"
        )
    return rc


def write_app_project(out_dir: str | Path, cfg: SimConfig | None = None) -> Path:
    """Write the Flower app project that ``flwr run`` deploys: ``out_dir/pyproject.toml`` with
    ``[tool.flwr.app.components]`` (``server_app`` / ``client_app`` below) and the run config
    of ``cfg`` under ``[tool.flwr.app.config]`` (``flwr run --run-config`` overrides only keys
    listed there). The apps are imported from the environment the SuperLink / SuperNodes run
    in (facelab-ariba installed there). Returns the project folder."""
    from facelab.core.flower_app import write_flower_app

    return write_flower_app(
        out_dir,
        distribution="facelab-ariba",
        server_app="facelab.ariba.app:server_app",
        client_app="facelab.ariba.app:client_app",
        run_config=run_config_of(cfg if cfg is not None else SimConfig()),
        description="ARIBA as a Flower app: the server runs the strategy, each SuperNode a client",
    )


def node_configs(cfg: SimConfig) -> list[dict[str, int]]:
    """The ``--node-config`` of each client's SuperNode (as Flower's simulation sets them)."""
    return [{"partition-id": i, "num-partitions": cfg.num_clients} for i in range(cfg.num_clients)]


# ---------------------------------------------------------------------------- `flwr run`


def config_from_run_config(run_config: dict[str, Any]) -> SimConfig:
    """A ``SimConfig`` from a Flower run config (``pyproject.toml [tool.flwr.app.config]`` or
    ``--run-config``): flat keys ``strategy``, ``num-clients``, ``rounds``, ``alpha``, ``seed``,
    ``dataset``, ``attack``, ``num-attackers``, ``local-epochs``, ``num-prune`` (and
    ``result-file``, read by ``server_app``)."""
    rc = dict(run_config)
    known = {
        "strategy",
        "num-clients",
        "rounds",
        "alpha",
        "seed",
        "dataset",
        "attack",
        "num-attackers",
        "local-epochs",
        "num-prune",
        "result-file",
    }
    unknown = sorted(set(rc) - known)
    if unknown:
        raise UnknownNameError(f"run config: unknown keys {unknown}; known: {sorted(known)}")
    num_prune = rc.get("num-prune", -1)
    return SimConfig(
        strategy=str(rc.get("strategy", "ariba")),  # type: ignore[arg-type]
        num_clients=int(rc.get("num-clients", 10)),
        rounds=int(rc.get("rounds", 10)),
        alpha=float(rc.get("alpha", 0.5)),
        seed=int(rc.get("seed", 0)),
        data=DataConfig(name=str(rc.get("dataset", "digits"))),  # type: ignore[arg-type]
        attack=AttackConfig(
            kind=str(rc.get("attack", "none")),  # type: ignore[arg-type]
            num_attackers=int(rc.get("num-attackers", 2)),
        ),
        local=LocalConfig(local_epochs=int(rc.get("local-epochs", 2))),
        num_prune=None if int(num_prune) < 0 else int(num_prune),
    )


client_app = ClientApp()


@client_app.train()
def _flwr_train(msg: Message, context: Context) -> Message:
    cfg = config_from_run_config(context.run_config)
    return train_message(cfg, msg, int(context.node_config["partition-id"]))


server_app = ServerApp()


@server_app.main()
def _flwr_main(grid: Grid, context: Context) -> None:
    cfg = config_from_run_config(context.run_config)
    marks: list[float] = []
    strategy, result = run_server(cfg, grid, marks=marks)
    target = str(context.run_config.get("result-file", ""))
    if target:
        path = Path(target)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(run_summary(cfg, strategy, result, marks)))
        tmp.replace(path)  # whoever waits for the file never reads half of it
