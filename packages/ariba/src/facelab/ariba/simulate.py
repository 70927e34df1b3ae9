"""Running the Flower app: in process (tests, benchmarks) or in Flower's simulation engine.

``InProcessGrid`` is a Flower ``Grid`` whose nodes are ClientApps called in this process: the
strategy's own ``start`` loop (configure -> send -> aggregate -> evaluate) runs unchanged, with
the same strategy and ClientApp objects as a real deployment, minus serialization and Ray.
``simulate(cfg)`` uses it; ``run_flower_simulation(cfg)`` runs the same apps with
``flwr.simulation.run_simulation`` (needs the ``simulation`` extra: Ray).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from facelab.ariba.app import (
    SimConfig,
    build_strategy,
    make_client_app,
    make_server_app,
    run_server,
    run_summary,
)
from facelab.ariba.strategy import DeltaStrategy, RoundReport, ensure_task_identity


class InProcessGrid(Grid):
    """``num_nodes`` nodes, each running ``client_app`` in this process with its own
    ``Context`` (``node_config``: ``partition-id``, ``num-partitions``, as Flower's simulation
    sets them)."""

    def __init__(self, client_app: ClientApp, num_nodes: int, run_config: dict | None = None):
        self.client_app = client_app
        self._node_ids = [1_000 + i for i in range(num_nodes)]
        self._contexts = {
            nid: Context(
                run_id=1,
                node_id=nid,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for i, nid in enumerate(self._node_ids)
        }
        self._replies: dict[str, Message] = {}
        self._run: Any = None
        ensure_task_identity()

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            dst = msg.metadata.dst_node_id
            if dst not in self._contexts:
                raise ValueError(f"push_messages: unknown node {dst}")
            key = uuid.uuid4().hex
            self._replies[key] = self.client_app(msg, self._contexts[dst])
            ids.append(key)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


@dataclass
class RoundRecord:
    """One round of a run: server-side evaluation, time in ``aggregate_train`` and what a
    defending strategy pruned."""

    server_round: int
    accuracy: float
    asr: float
    seconds: float
    report: RoundReport | None = None


@dataclass
class RunResult:
    config: SimConfig
    rounds: list[RoundRecord] = field(default_factory=list)
    initial: dict[str, float] = field(default_factory=dict)
    arrays: Any = None
    """The final global model (Flower ``ArrayRecord``)."""

    @property
    def final(self) -> RoundRecord:
        return self.rounds[-1]

    def detection(self) -> tuple[int, int, int] | None:
        """(tp, fp, fn) summed over rounds, for strategies that report them."""
        confs = [r.report.confusion() for r in self.rounds if r.report is not None]
        confs = [c for c in confs if c is not None]
        if not confs:
            return None
        return tuple(sum(c[i] for c in confs) for i in range(3))  # type: ignore[return-value]


def _timed(strategy: Strategy, sink: list[float]) -> None:
    """Record the wall time of every ``aggregate_train`` call of this strategy object."""
    inner = strategy.aggregate_train

    def aggregate_train(server_round, replies):
        t0 = time.perf_counter()
        out = inner(server_round, replies)
        sink.append(time.perf_counter() - t0)
        return out

    strategy.aggregate_train = aggregate_train  # type: ignore[method-assign]


def _collect(cfg: SimConfig, strategy: Strategy, result: Any, seconds: list[float]) -> RunResult:
    out = RunResult(cfg, arrays=result.arrays)
    evals = result.evaluate_metrics_serverapp
    out.initial = dict(evals.get(0, {}))
    history = strategy.history if isinstance(strategy, DeltaStrategy) else []
    for r in range(1, cfg.rounds + 1):
        ev = evals.get(r, {})
        rep = next((h for h in history if h.server_round == r), None)
        out.rounds.append(
            RoundRecord(
                r,
                float(ev.get("accuracy", float("nan"))),
                float(ev.get("asr", float("nan"))),
                seconds[r - 1] if r - 1 < len(seconds) else float("nan"),
                rep,
            )
        )
    return out


def quiet_flower(level: int = logging.WARNING) -> None:
    """Flower logs every round at INFO; simulations of many runs keep only warnings."""
    logging.getLogger("flwr").setLevel(level)


def simulate(cfg: SimConfig, strategy: Strategy | None = None, verbose: bool = False) -> RunResult:
    """Run ``cfg`` on the in-process grid (same strategy and ClientApp as under Flower)."""
    if not verbose:
        quiet_flower()
    strategy = strategy if strategy is not None else build_strategy(cfg)
    seconds: list[float] = []
    _timed(strategy, seconds)
    grid = InProcessGrid(make_client_app(cfg), cfg.num_clients)
    strategy, result = run_server(cfg, grid, strategy)
    return _collect(cfg, strategy, result, seconds)


def simulate_summary(cfg: SimConfig) -> dict:
    """``cfg`` on the in-process grid, as the plain-data summary a deployed ServerApp writes
    (``run_summary``): to compare a deployment with the in-process loop."""
    quiet_flower()
    marks: list[float] = []
    grid = InProcessGrid(make_client_app(cfg), cfg.num_clients)
    strategy, result = run_server(cfg, grid, marks=marks)
    return run_summary(cfg, strategy, result, marks)


def _flower_child(cfg: SimConfig, num_cpus: int, verbose: bool, queue: Any) -> None:
    """Child process of ``run_flower_simulation``: runs Flower's simulation and sends back the
    ``RunResult`` (arrays as numpy) or the error text, then exits at once: when Ray's node
    fails to start, Flower's ServerApp thread (not a daemon) keeps waiting for nodes forever
    and would keep the process alive."""
    import os

    status, payload = "error", "unknown error"
    try:
        import sys

        import ray
        from flwr.simulation import run_simulation

        if not verbose:
            quiet_flower()
        # Flower starts Ray only if it is not running yet. Ray gives its node a fixed 30 s to
        # come up; on a loaded machine that can fail, and Flower would then wait for nodes
        # forever. We start Ray here (Flower's own arguments) and try up to three times.
        pythonpath = os.pathsep.join(sys.path)
        for attempt in range(3):
            try:
                ray.init(
                    num_cpus=num_cpus,
                    include_dashboard=False,
                    log_to_driver=verbose,
                    runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
                )
                break
            except Exception as exc:
                ray.shutdown()
                if "timed out during startup" not in str(exc) or attempt == 2:
                    raise
        sink: dict[str, Any] = {}
        run_simulation(
            server_app=make_server_app(cfg, sink),
            client_app=make_client_app(cfg),
            num_supernodes=cfg.num_clients,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": num_cpus, "log_to_driver": verbose},
            },
            verbose_logging=verbose,
        )
        if "result" not in sink:
            payload = "the ServerApp did not finish (see the log)"
        else:
            res = _collect(cfg, sink["strategy"], sink["result"], [])
            res.arrays = {k: v.numpy() for k, v in res.arrays.to_torch_state_dict().items()}
            status, payload = "ok", res
    except BaseException as exc:  # reported to the parent, which raises
        cause = exc.__cause__ or exc.__context__
        payload = f"{type(exc).__name__}: {exc}" + (f" (caused by {cause})" if cause else "")
    finally:
        queue.put((status, payload))
        queue.close()
        queue.join_thread()  # the feeder thread must flush before os._exit
        try:
            import ray

            ray.shutdown()
        except Exception:
            pass
        os._exit(0)


def run_flower_simulation(
    cfg: SimConfig, num_cpus: int = 2, verbose: bool = False, timeout: float = 900.0
) -> RunResult:
    """Run ``cfg`` in Flower's simulation engine (``flwr.simulation.run_simulation``, Ray
    backend, one CPU per ClientApp, ``num_cpus`` for Ray): every ClientApp runs in a Ray worker
    process and messages go through Flower's in-memory SuperLink. The simulation runs in a
    child process (a failed Ray start would otherwise leave Flower's ServerApp thread waiting
    for nodes forever); ``timeout`` seconds bound it."""
    import multiprocessing
    import queue as queue_mod

    try:
        import ray  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise ImportError(
            "run_flower_simulation needs Flower's simulation engine: "
            "pip install 'facelab-ariba[simulation]'"
        ) from exc
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_flower_child, args=(cfg, num_cpus, verbose, q))
    proc.start()
    try:
        status, payload = q.get(timeout=timeout)
    except queue_mod.Empty:
        raise RuntimeError(
            f"run_flower_simulation: no result within {timeout:.0f} s (Flower/Ray stalled)"
        ) from None
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if status != "ok":
        raise RuntimeError(f"run_flower_simulation: the simulation failed: {payload}")
    import torch
    from flwr.app import ArrayRecord

    payload.arrays = ArrayRecord({k: torch.from_numpy(v) for k, v in payload.arrays.items()})
    return payload
