"""ARIBA as a Flower strategy (Message API), and two update-level baselines.

``ARIBA`` is Flower's ``FedAvg`` with a detector in front of the averaging: it remembers the
global model it sends in ``configure_train``, turns each reply into the client's delta, runs
``facelab.ariba.detect.analyze``, drops the excluded clients and averages the rest with FedAvg
weights (Flower's own ``aggregate_arrayrecords``: with nothing pruned the result is FedAvg's).

Replies that cannot be compared with the global model (other keys or shapes: a broken or
hostile client) are dropped and reported as ``malformed`` instead of failing the round; a
reply with NaN/Inf is dropped and reported as ``nonfinite``. When the simulation tells who
attacks (a ``truth_key`` metric, 1 for attackers), each round's detection true/false
positives and misses are reported too.

Per-round metrics (next to the clients' averaged train metrics): ``ariba-pruned``,
``ariba-nonfinite``, ``ariba-malformed`` (counts), ``ariba-tp``, ``ariba-fp``, ``ariba-fn``
(with ground truth), ``ariba-threshold``; the full per-round record (node ids, outlier counts)
is in ``strategy.history``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from facelab.ariba.detect import Detection, DetectorConfig, analyze, norm_detect, prune_by_counts
from facelab.core.errors import FacelabError, FacelabTypeError, RangeError


@dataclass
class RoundReport:
    """What a defending strategy did in one round (node ids are Flower's)."""

    server_round: int
    node_ids: list[int]
    pruned: list[int]
    nonfinite: list[int]
    malformed: list[int]
    counts: list[int] = field(default_factory=list)
    threshold: float = math.nan
    attackers: list[int] | None = None
    seconds: float = 0.0

    @property
    def excluded(self) -> list[int]:
        return [*self.malformed, *self.nonfinite, *self.pruned]

    def confusion(self) -> tuple[int, int, int] | None:
        """``(true positives, false positives, missed attackers)`` of the exclusions, or None
        without ground truth."""
        if self.attackers is None:
            return None
        ex, att = set(self.excluded), set(self.attackers)
        return len(ex & att), len(ex - att), len(att - ex)


class DeltaStrategy(FedAvg):
    """FedAvg that knows the global model of the round (to read replies as deltas) and checks
    replies against it. Subclasses implement ``select``/``combine``."""

    def __init__(
        self,
        *args: Any,
        global_arrays: ArrayRecord | None = None,
        truth_key: str | None = "attacker",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.global_arrays = global_arrays
        self.truth_key = truth_key
        self.history: list[RoundReport] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.global_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    # -------------------------------------------------------------- reading replies

    def _global_state(self) -> dict[str, torch.Tensor]:
        if self.global_arrays is None:
            raise FacelabError(
                f"{type(self).__name__}.aggregate_train: expected the round's global model "
                "(set by configure_train, or pass global_arrays=...), got none"
            )
        return self.global_arrays.to_torch_state_dict()

    def _read(
        self, replies: Iterable[Message]
    ) -> tuple[list[Message], list[dict[str, torch.Tensor]], list[int]]:
        """Valid replies whose arrays match the global model, their deltas, and the node ids
        of the malformed ones."""
        g = self._global_state()
        ok: list[Message] = []
        deltas: list[dict[str, torch.Tensor]] = []
        malformed: list[int] = []
        for msg in replies:
            if msg.has_error():
                continue
            content = msg.content
            rec = content.get(self.arrayrecord_key) if content is not None else None
            metrics = list(content.metric_records.values()) if content is not None else []
            if (
                not isinstance(rec, ArrayRecord)
                or set(rec.keys()) != set(g.keys())
                or len(metrics) != 1
                or self.weighted_by_key not in metrics[0]
            ):
                malformed.append(msg.metadata.src_node_id)
                continue
            state = rec.to_torch_state_dict()
            if any(state[k].shape != g[k].shape for k in g):
                malformed.append(msg.metadata.src_node_id)
                continue
            deltas.append(
                {k: (state[k] - g[k]) if g[k].is_floating_point() else state[k] for k in g}
            )
            ok.append(msg)
        return ok, deltas, malformed

    def _truth(self, replies: list[Message]) -> list[int] | None:
        if self.truth_key is None or not replies:
            return None
        out = []
        for msg in replies:
            m = next(iter(msg.content.metric_records.values()))
            if self.truth_key not in m:
                return None
            if m[self.truth_key]:
                out.append(msg.metadata.src_node_id)
        return out

    # -------------------------------------------------------------- the round

    def select(
        self, server_round: int, deltas: list[dict[str, torch.Tensor]], node_ids: list[int]
    ) -> Detection | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def combine(self, replies: list[Message], deltas: list[dict[str, torch.Tensor]]) -> ArrayRecord:
        """FedAvg (Flower's weighted average) of the kept replies."""
        return aggregate_arrayrecords([m.content for m in replies], self.weighted_by_key)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        t0 = time.perf_counter()
        replies = list(replies)
        ok, deltas, malformed = self._read(replies)
        node_ids = [m.metadata.src_node_id for m in ok]
        det = self.select(server_round, deltas, node_ids) if ok else None
        excluded = set(det.excluded) if det is not None else set()
        kept = [i for i in range(len(ok)) if i not in excluded]
        arrays = self.combine([ok[i] for i in kept], [deltas[i] for i in kept]) if kept else None
        report = RoundReport(
            server_round=server_round,
            node_ids=node_ids,
            pruned=[node_ids[i] for i in det.pruned] if det else [],
            nonfinite=[node_ids[i] for i in det.nonfinite] if det else [],
            malformed=malformed,
            counts=list(det.counts) if det else [],
            threshold=float(det.threshold) if det else math.nan,
            attackers=self._truth(ok),
        )
        metrics = (
            self.train_metrics_aggr_fn([ok[i].content for i in kept], self.weighted_by_key)
            if kept
            else MetricRecord()
        )
        metrics["ariba-pruned"] = len(report.pruned)
        metrics["ariba-nonfinite"] = len(report.nonfinite)
        metrics["ariba-malformed"] = len(report.malformed)
        metrics["ariba-threshold"] = report.threshold if math.isfinite(report.threshold) else -1.0
        conf = report.confusion()
        if conf is not None:
            metrics["ariba-tp"], metrics["ariba-fp"], metrics["ariba-fn"] = conf
        report.seconds = time.perf_counter() - t0
        self.history.append(report)
        return arrays, metrics


def _num_prune(num_prune: int | None, n: int) -> int:
    """The round's pruning budget: the configured one (below the reply count), or by default
    fewer than half the clients, where median statistics still hold."""
    if n <= 1:
        return 0
    if num_prune is None:
        return (n - 1) // 2
    return min(num_prune, n - 1)


class ARIBA(DeltaStrategy):
    """ARIBA (fragment-wise anomaly detection, then FedAvg over the rest).

    Args:
        num_prune: at most this many clients pruned for anomaly per round (default: fewer than
            half of the round's replies); replies with NaN/Inf are dropped on top of it.
        detector: the ``DetectorConfig``.
        memory: weight of a node's past outlier counts (ours, not in the abstract): the count
            the threshold sees is ``memory * previous + (1 - memory) * this round`` per node
            id; 0 decides every round on its own.
        global_arrays: the global model, when ``aggregate_train`` is called without
            ``configure_train`` (unit tests); set again by every ``configure_train``.
        truth_key: metric name a simulation uses to mark attackers (None: no ground truth).
        Other arguments: Flower's ``FedAvg`` (sampling, record keys, metric aggregation).
    """

    def __init__(
        self,
        *args: Any,
        num_prune: int | None = None,
        detector: DetectorConfig | None = None,
        memory: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not (isinstance(memory, int | float) and 0.0 <= memory < 1.0):
            raise RangeError(f"memory: expected a value in [0, 1), got {memory!r}")
        self.memory = float(memory)
        self.node_scores: dict[int, float] = {}
        if num_prune is not None and (
            isinstance(num_prune, bool) or not isinstance(num_prune, int) or num_prune < 0
        ):
            raise RangeError(f"num_prune: expected None or an integer >= 0, got {num_prune!r}")
        if detector is not None and not isinstance(detector, DetectorConfig):
            raise FacelabTypeError(
                f"detector: expected a DetectorConfig, got {type(detector).__name__}"
            )
        self.num_prune = num_prune
        self.detector = detector or DetectorConfig()

    def select(
        self, server_round: int, deltas: list[dict[str, torch.Tensor]], node_ids: list[int]
    ) -> Detection:
        k = _num_prune(self.num_prune, len(deltas))
        det = analyze(deltas, k, self.detector)
        if self.memory == 0.0:
            return det
        # a node's count becomes the moving average of its counts over the rounds it took
        # part in: a persistent attacker accumulates, a benign client's chance outliers fade
        finite = [i for i in range(len(deltas)) if det.counts[i] >= 0]
        smoothed = []
        for i in finite:
            prev = self.node_scores.get(node_ids[i])
            cur = float(det.counts[i])
            val = cur if prev is None else self.memory * prev + (1.0 - self.memory) * cur
            self.node_scores[node_ids[i]] = val
            smoothed.append(val)
        det.pruned, det.threshold = prune_by_counts(
            smoothed, finite, k, self.detector, det.total_fragments
        )
        return det


class NormDetection(ARIBA):
    """The whole-update baseline: prune clients whose update norm is a robust outlier
    (``z_threshold`` of the detector config), then FedAvg."""

    def select(
        self, server_round: int, deltas: list[dict[str, torch.Tensor]], node_ids: list[int]
    ) -> Detection:
        return norm_detect(
            deltas, _num_prune(self.num_prune, len(deltas)), self.detector.z_threshold
        )


class NormClipping(DeltaStrategy):
    """Norm clipping (Sun et al. 2019, "Can you really backdoor FL?"): every update is scaled
    down to at most ``clip_norm`` (default: the median update norm of the round), then averaged
    with FedAvg weights. Replies with NaN/Inf are dropped."""

    def __init__(self, *args: Any, clip_norm: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if clip_norm is not None and not (math.isfinite(clip_norm) and clip_norm > 0):
            raise RangeError(f"clip_norm: expected None or a finite value > 0, got {clip_norm!r}")
        self.clip_norm = clip_norm

    def select(
        self, server_round: int, deltas: list[dict[str, torch.Tensor]], node_ids: list[int]
    ) -> Detection:
        bad = [
            i
            for i, d in enumerate(deltas)
            if not all(bool(torch.isfinite(t).all()) for t in d.values() if t.is_floating_point())
        ]
        return Detection([], bad, [], math.nan, 0)

    def combine(self, replies: list[Message], deltas: list[dict[str, torch.Tensor]]) -> ArrayRecord:
        g = self._global_state()
        w = torch.tensor(
            [
                float(next(iter(m.content.metric_records.values()))[self.weighted_by_key])
                for m in replies
            ],
            dtype=torch.float64,
        )
        w = w / w.sum()
        norms = torch.stack(
            [
                torch.sqrt(
                    sum((t.double() ** 2).sum() for t in d.values() if t.is_floating_point())
                )
                for d in deltas
            ]
        )
        bound = self.clip_norm if self.clip_norm is not None else float(norms.median())
        scale = torch.clamp(bound / norms.clamp_min(1e-30), max=1.0)
        out: dict[str, Array] = {}
        for k, gk in g.items():
            if gk.is_floating_point():
                stacked = torch.stack([d[k].double() for d in deltas])
                coef = (w * scale).reshape(-1, *([1] * gk.dim()))
                val = gk.double() + (coef * stacked).sum(0)
                out[k] = Array(np.asarray(val.to(gk.dtype).numpy()))
            else:
                stacked = torch.stack([d[k].double() for d in deltas])
                avg = (w.reshape(-1, *([1] * gk.dim())) * stacked).sum(0)
                out[k] = Array(np.asarray(avg.round().to(gk.dtype).numpy()))
        return ArrayRecord(out)


def reply(
    arrays: dict[str, np.ndarray] | dict[str, torch.Tensor],
    num_examples: int,
    node_id: int,
    extra: dict[str, float] | None = None,
    arrayrecord_key: str = "arrays",
) -> Message:
    """A train reply as a ClientApp sends it (for tests and the in-process grid): a Message
    from ``node_id`` holding ``{"arrays": ArrayRecord, "metrics": MetricRecord}``."""
    rec = ArrayRecord(
        {k: torch.as_tensor(v) for k, v in arrays.items()}  # type: ignore[arg-type]
    )
    metrics = MetricRecord({"num-examples": num_examples, **(extra or {})})
    ensure_task_identity()
    instruction = Message(RecordDict({}), dst_node_id=node_id, message_type="train")
    return Message(RecordDict({arrayrecord_key: rec, "metrics": metrics}), reply_to=instruction)


def ensure_task_identity(run_id: int = 1) -> None:
    """Flower >= 1.2x stamps every new message with the identity of the task running in this
    process, which its runtimes set; outside them (in-process grid, tests) we set the
    ServerApp's, as Flower's own compat runner does. An identity already set is kept."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    try:
        TaskIdentity.run_id  # noqa: B018 - raises when unset
    except RuntimeError:
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
