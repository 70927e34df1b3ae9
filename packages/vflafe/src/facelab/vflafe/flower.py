"""VFL-AFE as a Flower app (Message API): ``server_app`` is the active party, ``client_app`` a
passive party, so the parties can run as separate processes or machines.

Messages per training step (the same maths as ``VFLModel`` in one process):

* ``query.embed`` (active -> each passive): the batch's sample ids; reply: the party's released
  embedding ``privatize(pre(bottom(x)))`` (the only thing computed from its features that
  leaves it);
* ``train.backward`` (active -> each passive): the ids, the (optionally protected) gradient for
  the released rows and the learning rate; the party recomputes its un-noised forward for the
  ids (the noise is additive, so the gradient is the same), back-propagates and steps its own
  optimizer.

``query.hello`` first tells every party the active party's training and test ids; a party whose
ids do not align answers with an error (``AlignmentError`` on the active side). A passive party
keeps its weights, optimizer and noise generator in ``context.state`` (what Flower keeps for a
node across messages of a run); the noise seed is drawn from the OS CSPRNG unless the run sets
``noise-seed`` (experiments only).

Run configuration keys (``[tool.flwr.app.config]`` of a Flower app, or ``AppConfig``):
dataset, parties, data-seed, test-fraction, mode, clip-norm, noise-multiplier,
inference-noise-multiplier (-1: same as training), grad-clip-norm (0: off),
grad-noise-multiplier, embed-dim, bottom-hidden, top-hidden, denoiser-hidden, epochs,
batch-size, lr, weight-decay, seed, noise-seed (-1: secret), result-file (a path: the active
party writes its outcome there as JSON; empty: not written). Node configuration: ``party-id``
(0 .. parties-1).

``run_local`` runs the app in this process: the ``ServerApp`` gets a ``LocalGrid`` that hands
each message, serialized to Flower's protobuf wire format and back, to the ``ClientApp`` of
its node; no network, no Ray, no SuperLink. For separate processes or machines use Flower's
own deployment: ``write_app_project`` writes the Flower app project (``pyproject.toml`` with
``[tool.flwr.app]``) that ``flwr run`` takes; one ``flower-supernode --node-config
"party-id=K"`` per party (``node_configs``); ``scripts/flower_deploy.py`` in the repository
runs all of it on one machine (see README).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import math
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # facelab never phones home

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage
from flwr.serverapp import Grid, ServerApp

from facelab.core.errors import FacelabError, RangeError
from facelab.core.train.data import mix_seed
from facelab.vflafe.accounting import embedding_epsilon
from facelab.vflafe.data import VerticalData, align, load
from facelab.vflafe.errors import AlignmentError, ProtocolError
from facelab.vflafe.model import (
    ActiveParty,
    GradientChannel,
    ModelConfig,
    NoiseSource,
    PassiveParty,
    PrivacyConfig,
)
from facelab.vflafe.privatize import clip_rows

__all__ = [
    "AppConfig",
    "FlowerOutcome",
    "LocalGrid",
    "client_app",
    "node_configs",
    "run_active_party",
    "run_local",
    "server_app",
    "write_app_project",
]

ERROR_CODE = 4001  # a FacelabError raised by a party (Flower's own codes are below 1000)


@dataclass
class AppConfig:
    """The run configuration shared by the active and the passive parties."""

    dataset: str = "breast_cancer"
    parties: int = 2
    data_seed: int = 0
    test_fraction: float = 0.25
    mode: str = "afe"
    clip_norm: float = 1.0
    noise_multiplier: float = 0.0
    inference_noise_multiplier: float = -1.0
    grad_clip_norm: float = 0.0
    grad_noise_multiplier: float = 0.0
    embed_dim: int = 16
    bottom_hidden: int = 64
    top_hidden: int = 64
    denoiser_hidden: int = 32
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-2
    weight_decay: float = 1e-4
    seed: int = 0
    noise_seed: int = -1
    delta: float = 1e-5
    result_file: str = ""
    """The active party writes its outcome here as JSON (deployments; empty: not written)."""

    def __post_init__(self) -> None:
        self.privacy()  # validates the privacy fields
        self.model()
        for name in ("parties", "epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RangeError(f"{name}: expected a positive int, got {v!r}")

    @classmethod
    def from_run_config(cls, run_config: dict) -> AppConfig:
        kwargs = {}
        for f in dataclasses.fields(cls):
            key = f.name.replace("_", "-")
            if key in run_config:
                value = run_config[key]
                kwargs[f.name] = type(f.default)(value) if f.default is not None else value
        return cls(**kwargs)

    def to_run_config(self) -> dict:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}

    def privacy(self) -> PrivacyConfig:
        return PrivacyConfig(
            mode=self.mode,  # type: ignore[arg-type]
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            inference_noise_multiplier=(
                None if self.inference_noise_multiplier < 0 else self.inference_noise_multiplier
            ),
            grad_clip_norm=self.grad_clip_norm or None,
            grad_noise_multiplier=self.grad_noise_multiplier,
            noise_seed=None if self.noise_seed < 0 else self.noise_seed,
        )

    def model(self) -> ModelConfig:
        return ModelConfig(
            embed_dim=self.embed_dim,
            bottom_hidden=self.bottom_hidden,
            top_hidden=self.top_hidden,
            denoiser_hidden=self.denoiser_hidden,
        )

    def data(self) -> tuple[VerticalData, VerticalData]:
        return _cached_data(self.dataset, self.parties, self.data_seed, self.test_fraction)


@functools.lru_cache(maxsize=8)
def _cached_data(name: str, parties: int, seed: int, test_fraction: float):
    """A party reads its data once per process, not once per message (treat as read-only)."""
    return load(name, parties, seed, test_fraction=test_fraction)  # type: ignore[arg-type]


def _lr_at(cfg: AppConfig, step: int, total: int) -> float:
    """The core trainer's cosine schedule (no warmup, to 0)."""
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step / max(total, 1), 1.0)))


# ------------------------------------------------------------------------------------------
# record helpers
# ------------------------------------------------------------------------------------------


def _tensor_record(**tensors: torch.Tensor) -> ArrayRecord:
    return ArrayRecord(
        {k: Array(v.detach().cpu().contiguous().numpy()) for k, v in tensors.items()}
    )


def _tensor(record: ArrayRecord, key: str) -> torch.Tensor:
    if key not in record:
        raise ProtocolError(f"message: expected array {key!r}, got {sorted(record)}")
    return torch.from_numpy(np.array(record[key].numpy()))


def _blob(obj) -> Array:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return Array(np.frombuffer(buf.getvalue(), dtype=np.uint8).copy())


def _unblob(array: Array):
    return torch.load(io.BytesIO(array.numpy().tobytes()), weights_only=True)


def _error_reply(message: Message, exc: BaseException) -> Message:
    return Message(Error(code=ERROR_CODE, reason=f"{type(exc).__name__}: {exc}"), reply_to=message)


def _check_replies(replies: Iterable[Message], expected: int, what: str) -> list[Message]:
    out = list(replies)
    for r in out:
        if r.has_error():
            reason = r.error.reason or ""
            cls = AlignmentError if reason.startswith("AlignmentError") else ProtocolError
            raise cls(
                f"{what}: party node {r.metadata.src_node_id} answered with an error: {reason}"
            )
    if len(out) != expected:
        raise ProtocolError(f"{what}: expected {expected} replies, got {len(out)}")
    return out


# ------------------------------------------------------------------------------------------
# passive party (ClientApp)
# ------------------------------------------------------------------------------------------

client_app = ClientApp()


class _PassiveState:
    """A passive party rebuilt from ``context.state`` for one message and saved back."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.cfg = AppConfig.from_run_config(dict(context.run_config))
        party = int(context.node_config.get("party-id", -1))
        if not 0 <= party < self.cfg.parties:
            raise RangeError(
                f"node config party-id: expected an int in [0, {self.cfg.parties}), got "
                f"{context.node_config.get('party-id')!r}"
            )
        self.party_id = party
        train, test = self.cfg.data()
        self.splits = {"train": train, "test": test}
        feature_shape = train.feature_shapes[party]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(self.cfg.seed, party, 0xB0))
            self.module = PassiveParty(feature_shape, self.cfg.model(), self.cfg.privacy(), None)
        self._optimizer: torch.optim.Optimizer | None = None
        state = context.state
        if "party" in state.array_records:
            self.module.load_state_dict(state.array_records["party"].to_torch_state_dict())
            blobs = state.array_records["party-private"]
            self.module.noise.load_state_dict(_unblob(blobs["noise"]))
        elif self.cfg.noise_seed >= 0:
            self.module.noise = NoiseSource(mix_seed(self.cfg.noise_seed, party, 0x7F))

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The party's AdamW, built on first use: only ``train.backward`` steps it, and a
        deployed ClientApp is a fresh process per message (building a torch optimizer first
        imports torch._dynamo, ~1 s of CPU), so embed and hello messages skip it."""
        if self._optimizer is None:
            self._optimizer = torch.optim.AdamW(
                self.module.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
            )
            blobs = self.context.state.array_records.get("party-private")
            if blobs is not None and "optimizer" in blobs:
                self._optimizer.load_state_dict(_unblob(blobs["optimizer"]))
        return self._optimizer

    def rows(self, ids: torch.Tensor, split: str) -> torch.Tensor:
        data = self.splits[split]
        return data.parties[self.party_id][data.rows_of(ids)]

    def save(self) -> None:
        state = self.context.state
        state.array_records["party"] = ArrayRecord(self.module.state_dict())
        private = {"noise": _blob(self.module.noise.state_dict())}
        old = state.array_records.get("party-private")
        if self._optimizer is not None:
            private["optimizer"] = _blob(self._optimizer.state_dict())
        elif old is not None and "optimizer" in old:
            private["optimizer"] = old["optimizer"]  # not touched by this message
        state.array_records["party-private"] = ArrayRecord(private)


@client_app.query("hello")
def _hello(message: Message, context: Context) -> Message:
    try:
        party = _PassiveState(context)
        ids = message.content.array_records["ids"]
        for split in ("train", "test"):
            own = party.splits[split]
            align(_tensor(ids, split), own.ids, own.ids)  # AlignmentError when they differ
        party.save()
        reply = ConfigRecord({"party-id": party.party_id, "embed-dim": party.cfg.embed_dim})
        return Message(RecordDict({"party": reply}), reply_to=message)
    except FacelabError as exc:
        return _error_reply(message, exc)


@client_app.query("embed")
def _embed(message: Message, context: Context) -> Message:
    try:
        party = _PassiveState(context)
        cfg = message.content.config_records["config"]
        split = str(cfg["split"])
        ids = _tensor(message.content.array_records["ids"], "ids")
        party.module.train(split == "train")
        with torch.no_grad():
            z = party.module.release(party.rows(ids, split))
        party.save()  # the noise generator moved on
        return Message(RecordDict({"released": _tensor_record(z=z)}), reply_to=message)
    except FacelabError as exc:
        return _error_reply(message, exc)


@client_app.train("backward")
def _backward(message: Message, context: Context) -> Message:
    try:
        party = _PassiveState(context)
        cfg = message.content.config_records["config"]
        arrays = message.content.array_records["grad"]
        ids, grad = _tensor(arrays, "ids"), _tensor(arrays, "grad")
        m = party.module
        m.train()
        h = m.embed(party.rows(ids, "train"))
        out = h if m.mode == "none" else clip_rows(h, m.clip_norm)  # + noise: no gradient
        if out.shape != grad.shape:
            raise ProtocolError(f"grad: expected shape {tuple(out.shape)}, got {tuple(grad.shape)}")
        for group in party.optimizer.param_groups:
            group["lr"] = float(cfg["lr"])
        party.optimizer.zero_grad(set_to_none=True)
        out.backward(grad.to(out.dtype))
        party.optimizer.step()
        party.save()
        return Message(
            RecordDict({"metrics": MetricRecord({"rows": int(ids.numel())})}), reply_to=message
        )
    except FacelabError as exc:
        return _error_reply(message, exc)


# ------------------------------------------------------------------------------------------
# active party (ServerApp)
# ------------------------------------------------------------------------------------------


@dataclass
class FlowerOutcome:
    """What the active party's run gives: test accuracy, epsilon of a training sample (inf
    without noise), the mean training loss per epoch and the wall time of every step (one
    embed + one backward exchange with every party), and its CPU time in this process (with
    ``LocalGrid`` the parties run here too: the whole round's compute, robust to a busy
    machine)."""

    accuracy: float
    epsilon: float
    epoch_losses: list[float]
    step_times: list[float] = field(default_factory=list)
    step_cpu_times: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "epsilon": self.epsilon if math.isfinite(self.epsilon) else None,
            "epoch_losses": list(self.epoch_losses),
            "step_times": list(self.step_times),
            "step_cpu_times": list(self.step_cpu_times),
        }

    @classmethod
    def from_dict(cls, d: dict) -> FlowerOutcome:
        eps = d.get("epsilon")
        return cls(
            float(d["accuracy"]),
            math.inf if eps is None else float(eps),
            [float(v) for v in d["epoch_losses"]],
            [float(v) for v in d.get("step_times", [])],
            [float(v) for v in d.get("step_cpu_times", [])],
        )

    def metrics(self) -> MetricRecord:
        return MetricRecord(
            {
                "accuracy": self.accuracy,
                "epsilon": self.epsilon if math.isfinite(self.epsilon) else -1.0,
                "epoch-losses": list(self.epoch_losses),
                "step-times": list(self.step_times),
                "step-cpu-times": list(self.step_cpu_times),
            }
        )


def _wait_for_nodes(grid: Grid, n: int, timeout: float = 60.0) -> list[int]:
    end = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n:
            return nodes[:n] if len(nodes) == n else nodes
        if time.monotonic() > end:
            raise ProtocolError(f"grid: expected {n} passive-party nodes, {len(nodes)} connected")
        time.sleep(0.5)


def run_active_party(grid: Grid, cfg: AppConfig) -> FlowerOutcome:
    """The active party's side of a run over ``grid`` (called by ``server_app``)."""
    train, test = cfg.data()  # the active party uses only the ids and labels
    nodes = _wait_for_nodes(grid, cfg.parties)
    hello = RecordDict({"ids": _tensor_record(train=train.ids, test=test.ids)})
    replies = _check_replies(
        grid.send_and_receive([Message(hello, n, "query.hello") for n in nodes]),
        len(nodes),
        "hello",
    )
    node_of: dict[int, int] = {}
    for r in replies:
        node_of[int(r.content.config_records["party"]["party-id"])] = r.metadata.src_node_id
    if sorted(node_of) != list(range(cfg.parties)):
        raise ProtocolError(
            f"hello: expected parties 0..{cfg.parties - 1} (node config party-id), got {sorted(node_of)}"
        )
    order = [node_of[k] for k in range(cfg.parties)]
    privacy = cfg.privacy()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed(cfg.seed, 0xAC))
        active = ActiveParty(cfg.parties, train.num_classes, cfg.model(), privacy)
    seeds = [
        None if cfg.noise_seed < 0 else mix_seed(cfg.noise_seed, 0xAC, k)
        for k in range(cfg.parties)
    ]
    channels = [GradientChannel(privacy, s) for s in seeds]
    optimizer = torch.optim.AdamW(active.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def exchange(ids: torch.Tensor, split: str) -> list[torch.Tensor]:
        content = lambda: RecordDict(  # noqa: E731 - one RecordDict per message
            {"ids": _tensor_record(ids=ids), "config": ConfigRecord({"split": split})}
        )
        msgs = [Message(content(), n, "query.embed") for n in order]
        got = {
            r.metadata.src_node_id: r
            for r in _check_replies(grid.send_and_receive(msgs), len(order), "embed")
        }
        out = []
        for n in order:
            z = _tensor(got[n].content.array_records["released"], "z")
            if z.shape != (ids.numel(), cfg.embed_dim) or not torch.isfinite(z).all():
                raise ProtocolError(
                    f"embed: expected finite embeddings of shape ({ids.numel()}, {cfg.embed_dim}) "
                    f"from node {n}, got {tuple(z.shape)}"
                )
            out.append(z)
        return out

    n, bs = len(train), cfg.batch_size
    per_epoch = n // bs
    if per_epoch < 1:
        raise RangeError(f"batch_size: {bs} is larger than the {n} training samples")
    total = per_epoch * cfg.epochs
    step, epoch_losses, step_times, step_cpu = 0, [], [], []
    active.train()
    for epoch in range(cfg.epochs):
        g = torch.Generator().manual_seed(mix_seed(cfg.seed, epoch, 0x5A))
        perm = torch.randperm(n, generator=g)
        losses = []
        for b in range(per_epoch):
            t0, c0 = time.perf_counter(), time.process_time()
            rows = perm[b * bs : (b + 1) * bs]
            ids, y = train.ids[rows], train.labels[rows]
            zs = [z.requires_grad_() for z in exchange(ids, "train")]
            lr = _lr_at(cfg, step, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = F.cross_entropy(active(zs), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            msgs = [
                Message(
                    RecordDict(
                        {
                            "grad": _tensor_record(ids=ids, grad=ch.protect(z.grad)),
                            "config": ConfigRecord({"lr": lr}),
                        }
                    ),
                    node,
                    "train.backward",
                )
                for node, z, ch in zip(order, zs, channels)
            ]
            _check_replies(grid.send_and_receive(msgs), len(order), "backward")
            losses.append(loss.detach())
            step += 1
            step_times.append(time.perf_counter() - t0)
            step_cpu.append(time.process_time() - c0)
        epoch_losses.append(float(torch.stack(losses).mean()))
    active.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test), 512):
            ids = test.ids[start : start + 512]
            logits = active(exchange(ids, "test"))
            correct += int((logits.argmax(-1) == test.labels[start : start + 512]).sum())
    eps = (
        math.inf
        if privacy.mode == "none" or privacy.noise_multiplier == 0
        else embedding_epsilon(
            noise_multiplier=privacy.noise_multiplier, releases=cfg.epochs, delta=cfg.delta
        )
    )
    return FlowerOutcome(correct / len(test), eps, epoch_losses, step_times, step_cpu)


server_app = ServerApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    cfg = AppConfig.from_run_config(dict(context.run_config))
    outcome = run_active_party(grid, cfg)
    context.state.metric_records["vflafe-result"] = outcome.metrics()
    if cfg.result_file:
        path = Path(cfg.result_file)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(outcome.to_dict()))
        tmp.replace(path)  # whoever waits for the file never reads half of it
    print(
        f"vflafe: test accuracy {outcome.accuracy:.4f}, epsilon {outcome.epsilon:.3g}, "
        f"{len(outcome.step_times)} steps, median step {np.median(outcome.step_times) * 1e3:.1f} ms"
    )


# ------------------------------------------------------------------------------------------
# deployment: the Flower app project
# ------------------------------------------------------------------------------------------


def write_app_project(out_dir: str | Path, cfg: AppConfig | None = None) -> Path:
    """Write the Flower app project that ``flwr run`` deploys: ``out_dir/pyproject.toml``
    with ``[tool.flwr.app.components]`` (``server_app`` = active party, ``client_app`` =
    passive party) and every run-config key of ``cfg`` under ``[tool.flwr.app.config]``
    (``flwr run --run-config`` can only override keys listed there). The apps are imported
    from the environment the SuperLink / SuperNodes run in (facelab-vflafe installed there).
    Returns the project folder."""
    from facelab.core.flower_app import write_flower_app

    return write_flower_app(
        out_dir,
        distribution="facelab-vflafe",
        server_app="facelab.vflafe.flower:server_app",
        client_app="facelab.vflafe.flower:client_app",
        run_config=(cfg if cfg is not None else AppConfig()).to_run_config(),
        description="VFL-AFE as a Flower app: ServerApp = active party, ClientApps = passive parties",
    )


def node_configs(cfg: AppConfig) -> list[dict]:
    """The ``--node-config`` of each passive party's SuperNode: ``party-id`` 0 .. parties-1."""
    return [{"party-id": k} for k in range(cfg.parties)]


# ------------------------------------------------------------------------------------------
# in-process grid
# ------------------------------------------------------------------------------------------


def _wire(message: Message) -> tuple[Message, int]:
    """The message after Flower's protobuf serialization and back (what a network would do),
    and its size on the wire in bytes."""
    data = message_to_proto(message).SerializeToString()
    return message_from_proto(ProtoMessage.FromString(data)), len(data)


class LocalGrid(Grid):
    """A ``Grid`` that runs each pushed message through the ``ClientApp`` of its destination
    node in this process (after a round trip through Flower's wire format) and keeps the reply
    for ``pull_messages``. Nodes are ``(node_id, node_config)``; each keeps its own
    ``Context`` (and so its ``context.state``) across messages, as a SuperNode does."""

    def __init__(
        self, app: ClientApp, run_config: dict, node_configs: dict[int, dict], run_id: int = 1
    ) -> None:
        from flwr.supercore.run import Run

        self.app = app
        self._run = Run.create_empty(run_id)
        self.contexts = {
            node: Context(run_id, node, dict(nc), RecordDict(), dict(run_config))
            for node, nc in node_configs.items()
        }
        self.replies: dict[str, Message] = {}
        self.bytes_sent = 0  # both directions, Flower's wire format

    def set_run(self, run) -> None:
        self._run = run

    @property
    def run(self):
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            node = msg.metadata.dst_node_id
            if node not in self.contexts:
                raise ProtocolError(
                    f"message to unknown node {node}; nodes: {sorted(self.contexts)}"
                )
            delivered, size = _wire(msg)
            reply = self.app(delivered, self.contexts[node])
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            reply, reply_size = _wire(reply)
            self.bytes_sent += size + reply_size
            self.replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


@contextlib.contextmanager
def task_identity(run_id: int, node_id: int):
    """Flower's runtime sets a process-wide task identity (new ``Message`` objects read their
    run and source node from it) before it runs an app; this sets it and restores the old one."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, node_id
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def run_local(
    cfg: AppConfig, node_configs: dict[int, dict] | None = None
) -> tuple[FlowerOutcome, LocalGrid]:
    """Run ``server_app`` with one ``client_app`` node per party in this process."""
    if node_configs is None:
        node_configs = {1000 + k: {"party-id": k} for k in range(cfg.parties)}
    from flwr.common.constant import SUPERLINK_NODE_ID

    run_config = cfg.to_run_config()
    run_id = 1
    grid = LocalGrid(client_app, run_config, node_configs, run_id)
    context = Context(run_id, SUPERLINK_NODE_ID, {}, RecordDict(), run_config)
    with task_identity(run_id, SUPERLINK_NODE_ID):
        server_app(grid, context)
    m = context.state.metric_records["vflafe-result"]
    eps = float(m["epsilon"])
    outcome = FlowerOutcome(
        float(m["accuracy"]),
        math.inf if eps < 0 else eps,
        [float(v) for v in m["epoch-losses"]],
        [float(v) for v in m["step-times"]],
        [float(v) for v in m["step-cpu-times"]],
    )
    return outcome, grid
