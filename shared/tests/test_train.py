import importlib.util
import json
import math
import os
import random
import signal
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from facelab.core.errors import (
    FacelabTypeError,
    FormatError,
    KeyMismatchError,
    NonFiniteError,
    RangeError,
    ShapeError,
    UnknownNameError,
)
from facelab.core.train import (
    EpochSampler,
    SeededBatches,
    TrainConfig,
    Trainer,
    TrainingInterrupted,
    latest_checkpoint,
    list_checkpoints,
)
from facelab.core.train import checkpoint as ckpt_mod
from facelab.core.train.launch import launch_cpu

HERE = Path(__file__).parent


# ---------------------------------------------------------------- tiny problems


def blobs(n=96, d=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centers = 2.0 * torch.eye(classes, d)
    x = centers[y] + 0.5 * torch.randn(n, d, generator=g)
    return TensorDataset(x, y)


class NoisyBlobs(Dataset):
    """Blobs with a random augmentation drawn from the global torch and numpy RNGs."""

    def __init__(self, n=64, seed=0):
        self.base = blobs(n, seed=seed)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        jitter = 0.1 * torch.randn(x.shape) + float(np.random.uniform(-0.05, 0.05))  # noqa: NPY002
        return x + jitter, y


def mlp(seed=0, dropout=0.0, d=4, classes=3):
    torch.manual_seed(seed)
    layers = [nn.Linear(d, 16), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(16, classes))
    return nn.Sequential(*layers)


def ce_loss(batch, modules, ctx):
    x, y = batch
    return F.cross_entropy(modules["model"](x), y)


def cfg_for(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "run"), batch_size=16, lr=0.1, log_every=2, progress=False
    )
    base.update(kw)
    return TrainConfig(**base)


def weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), f"{k} differs by {(a[k] - b[k]).abs().max():.3g}"
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


# ---------------------------------------------------------------- learning


def train_blobs(tmp_path, seed: int = 0):
    """The learning test's run: an MLP on 3 blobs, 4 epochs of AdamW (``seed``: the model's
    initial weights and the trainer's data order; scripts/calibrate_claims.py reruns others)."""
    data = blobs(192)
    x_all, y_all = data.tensors
    seen_modes = []

    def eval_fn(modules, ctx):
        m = modules["model"]
        seen_modes.append((m.training, torch.is_grad_enabled()))
        acc = (m(x_all).argmax(1) == y_all).float().mean()
        return {"acc": acc}

    cfg = cfg_for(
        tmp_path,
        epochs=4,
        optimizer="adamw",
        lr=0.02,
        weight_decay=0.0,
        scheduler="constant",
        eval_every=1,
        eval_unit="epoch",
        seed=seed,
    )
    trainer = Trainer(cfg, mlp(seed), ce_loss, data, eval_fn=eval_fn)
    result = trainer.fit()
    losses = [h["loss"] for h in result.history]
    # independent accuracy on the whole set, computed here
    model = trainer.unwrap()
    model.eval()
    measured = {
        "loss_ratio": losses[-1] / losses[0],
        "accuracy": float((model(x_all).argmax(1) == y_all).float().mean()),
        "eval_accuracy": float(result.eval["acc"]),
    }
    return trainer, result, seen_modes, measured


def test_loss_decreases_and_eval_runs(tmp_path):
    trainer, result, seen_modes, m = train_blobs(tmp_path)
    assert result.step == trainer.total_steps == 4 * (192 // 16)
    # calibrated (scripts/calibrate_claims.py core-train; seeds 0-9 x torch threads 1, 2, 19
    # runs): last/first loss 0.003-0.061, accuracy 0.995-1.000 (this seed: 0.008, 1.000); the
    # thresholds sit far below the worst case
    assert m["loss_ratio"] < 0.5, m
    assert m["accuracy"] > 0.9
    assert m["eval_accuracy"] > 0.9
    model = trainer.unwrap()
    assert [e["step"] for e in result.eval_history] == [12, 24, 36, 48]
    assert seen_modes and all(mode == (False, False) for mode in seen_modes)
    assert trainer.modules["model"] is model
    assert result.checkpoint is not None and result.checkpoint.name == "step_000048"
    assert result.wall_time > 0


def _recorded_lrs(tmp_path, data_n=64, modules=None, param_groups=None, **kw):
    """Run a trainer and record every group's lr at the moment each update is computed."""
    seen = []

    def loss_fn(batch, mods, ctx):
        seen.append([g["lr"] for g in ctx.trainer.optimizer.param_groups] + [ctx.lr])
        return ce_loss(batch, mods, ctx)

    cfg = cfg_for(tmp_path, **kw)
    trainer = Trainer(cfg, modules or mlp(), loss_fn, blobs(data_n), param_groups=param_groups)
    trainer.fit()
    return trainer, np.array(seen)


def test_step_schedule_matches_torch_multisteplr(tmp_path):
    # 64 samples / 16 = 4 steps per epoch; milestones at epochs 1 and 2 -> steps 4 and 8
    trainer, seen = _recorded_lrs(
        tmp_path,
        epochs=3,
        lr=0.1,
        momentum=0.0,
        weight_decay=0.0,
        scheduler="step",
        milestones=(1, 2),
        gamma=0.1,
    )
    ref_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = torch.optim.lr_scheduler.MultiStepLR(ref_opt, milestones=[4, 8], gamma=0.1)
    expected = []
    for _ in range(12):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    np.testing.assert_allclose(seen[:, 0], expected, rtol=1e-12)
    np.testing.assert_allclose(seen[:, -1], expected, rtol=1e-12)
    assert [trainer.lr_at(s) for s in range(12)] == pytest.approx(expected, rel=1e-12)


def test_cosine_schedule_matches_torch_without_warmup(tmp_path):
    _, seen = _recorded_lrs(tmp_path, epochs=3, lr=0.2, scheduler="cosine", min_lr=0.01)
    ref_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.2)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=12, eta_min=0.01)
    expected = []
    for _ in range(12):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    np.testing.assert_allclose(seen[:, 0], expected, rtol=1e-10)


def test_warmup_cosine_with_lr_scale_groups_matches_hand_computation(tmp_path):
    model = mlp()

    def groups(mods):
        return [{"params": mods["model"][2].parameters(), "lr_scale": 0.1}]

    # warmup 3 steps, cosine over the remaining 9 steps down to min_lr
    _, seen = _recorded_lrs(
        tmp_path,
        modules=model,
        param_groups=groups,
        epochs=3,
        lr=0.4,
        scheduler="cosine",
        warmup=3,
        warmup_unit="step",
        min_lr=0.04,
    )
    base, floor, total, warm = 0.4, 0.04, 12, 3
    hand = []
    for s in range(total):
        if s < warm:
            hand.append(base * (s + 1) / warm)
        else:
            p = (s - warm) / (total - warm)
            hand.append(floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * p)))
    hand = np.array(hand)
    # group 0: the default group (first layer, scale 1); group 1: the last layer (scale 0.1)
    np.testing.assert_allclose(seen[:, 0], hand, rtol=1e-12)
    np.testing.assert_allclose(seen[:, 1], 0.1 * hand, rtol=1e-12)


def test_step_schedule_with_epoch_warmup_and_step_milestones(tmp_path):
    _, seen = _recorded_lrs(
        tmp_path,
        epochs=3,
        lr=0.1,
        scheduler="step",
        milestones=(6, 10),
        milestones_unit="step",
        gamma=0.5,
        warmup=0.5,
    )  # 2 warmup steps
    hand = [0.1 * 0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025]
    np.testing.assert_allclose(seen[:, 0], hand, rtol=1e-12)


def test_lr_scale_really_scales_the_sgd_update(tmp_path):
    # one plain SGD step on a linear model; gradients computed independently here
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    before = weights(model)
    data = blobs(16)
    cfg = cfg_for(
        tmp_path,
        max_steps=1,
        lr=0.3,
        momentum=0.0,
        weight_decay=0.0,
        scheduler="constant",
        shuffle=False,
    )
    trainer = Trainer(
        cfg,
        model,
        ce_loss,
        data,
        param_groups=lambda m: [{"params": [m["model"].bias], "lr_scale": 0.25}],
    )
    trainer.fit()
    ref = nn.Linear(4, 3)
    ref.load_state_dict(before)
    x, y = data.tensors
    F.cross_entropy(ref(x), y).backward()
    torch.testing.assert_close(model.weight, before["weight"] - 0.3 * ref.weight.grad)
    torch.testing.assert_close(model.bias, before["bias"] - 0.3 * 0.25 * ref.bias.grad)


def test_grad_clip_bounds_the_update(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    before = weights(model)
    data = blobs(16)
    cfg = cfg_for(
        tmp_path,
        max_steps=1,
        lr=1.0,
        momentum=0.0,
        weight_decay=0.0,
        scheduler="constant",
        shuffle=False,
        grad_clip=0.01,
    )
    trainer = Trainer(cfg, model, ce_loss, data)
    result = trainer.fit()
    ref = nn.Linear(4, 3)
    ref.load_state_dict(before)
    x, y = data.tensors
    F.cross_entropy(ref(x), y).backward()
    g = torch.cat([ref.weight.grad.flatten(), ref.bias.grad.flatten()])
    assert g.norm() > 0.01  # clipping is active
    delta = torch.cat(
        [(model.weight - before["weight"]).flatten(), (model.bias - before["bias"]).flatten()]
    )
    torch.testing.assert_close(delta, -0.01 * g / g.norm(), atol=1e-7, rtol=1e-5)
    assert result.losses["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-5)


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    data = blobs(96)
    common = dict(epochs=2, lr=0.1, momentum=0.9, weight_decay=5e-4, scheduler="cosine")
    small = Trainer(
        cfg_for(tmp_path / "a", batch_size=8, grad_accum=4, **common), mlp(), ce_loss, data
    )
    big = Trainer(
        cfg_for(tmp_path / "b", batch_size=32, grad_accum=1, **common), mlp(), ce_loss, data
    )
    assert small.total_steps == big.total_steps == 6
    small.fit()  # built before `big`: fit() re-applies its own accumulation setting
    big.fit()
    assert_same_weights(weights(small.unwrap()), weights(big.unwrap()), atol=1e-6)
    # and accumulation really happened: 4 micro-batches of 8 without accumulation differ
    plain = Trainer(
        cfg_for(tmp_path / "c", batch_size=8, grad_accum=1, max_steps=6, **common),
        mlp(),
        ce_loss,
        data,
    )
    plain.fit()
    diff = max(
        (a - b).abs().max()
        for a, b in zip(weights(plain.unwrap()).values(), weights(big.unwrap()).values())
    )
    assert diff > 1e-3


def test_bf16_mixed_precision_runs_on_cpu(tmp_path):
    cfg = cfg_for(tmp_path, max_steps=4, mixed_precision="bf16")
    dtypes = []

    def loss_fn(batch, modules, ctx):
        x, y = batch
        out = modules["model"][0](x)  # a submodule called inside autocast
        dtypes.append(out.dtype)
        return F.cross_entropy(modules["model"](x), y)

    model = mlp()
    before = weights(model)
    result = Trainer(cfg, model, loss_fn, blobs(64)).fit()
    assert dtypes[0] == torch.bfloat16
    assert model[0].weight.dtype == torch.float32
    assert math.isfinite(result.losses["loss"])
    assert not torch.equal(before["0.weight"], model[0].weight)


# ---------------------------------------------------------------- modules, groups


class FrozenClient(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def test_frozen_module_unchanged_and_in_eval_mode(tmp_path):
    client = FrozenClient()
    client.train()
    torch.manual_seed(2)
    head = nn.Linear(8, 3)
    client_before, head_before = weights(client), weights(head)
    modes = []

    def loss_fn(batch, modules, ctx):
        x, y = batch
        modes.append(modules["client"].training)
        return F.cross_entropy(modules["head"](modules["client"](x)), y)

    cfg = cfg_for(tmp_path, epochs=2, ema_decay=0.9)
    trainer = Trainer(cfg, {"client": client, "head": head}, loss_fn, blobs(64), frozen={"client"})
    trainer.fit()
    assert modes and not any(modes)
    assert client.training is False
    assert all(not p.requires_grad for p in client.parameters())
    assert_same_weights(weights(client), client_before)  # BN running stats included
    assert not torch.equal(head.weight, head_before["weight"])
    assert set(trainer.ema.shadow) == {"head"}
    assert "client" in trainer.modules and trainer.unwrap("client") is client
    with pytest.raises(UnknownNameError, match="frozen"):
        trainer.unwrap("client", ema=True)
    with pytest.raises(UnknownNameError, match="unknown module"):
        trainer.unwrap("nope")


def test_param_group_hook_errors(tmp_path):
    client, head = FrozenClient(), nn.Linear(8, 3)
    mods = {"client": client, "head": head}
    cfg = cfg_for(tmp_path, max_steps=1)
    with pytest.raises(KeyMismatchError, match="not trainable"):
        Trainer(
            cfg,
            mods,
            ce_loss,
            blobs(64),
            frozen={"client"},
            param_groups=lambda m: [{"params": m["client"].parameters(), "lr_scale": 0.1}],
        )
    with pytest.raises(KeyMismatchError, match="more than one group"):
        Trainer(
            cfg,
            {"head": nn.Linear(8, 3)},
            ce_loss,
            blobs(64),
            param_groups=lambda m: [{"params": [m["head"].weight]}, {"params": [m["head"].weight]}],
        )
    with pytest.raises(RangeError, match="lr_scale"):
        Trainer(
            cfg,
            {"head": nn.Linear(8, 3)},
            ce_loss,
            blobs(64),
            param_groups=lambda m: [{"params": [m["head"].weight], "lr_scale": -1.0}],
        )
    with pytest.raises(KeyMismatchError, match="unknown keys"):
        Trainer(
            cfg,
            {"head": nn.Linear(8, 3)},
            ce_loss,
            blobs(64),
            param_groups=lambda m: [{"params": [m["head"].weight], "lr": 0.1}],
        )
    with pytest.raises(UnknownNameError, match="frozen"):
        Trainer(cfg, mods, ce_loss, blobs(64), frozen={"backbone"})


def test_no_decay_bn_bias_groups(tmp_path):
    client = FrozenClient()  # conv (Linear) + BatchNorm1d
    head = nn.Linear(8, 3)
    mods = {"backbone": client, "head": head}
    names = {id(p): f"{m}.{n}" for m, mod in mods.items() for n, p in mod.named_parameters()}

    def decay_of(trainer):
        out = {}
        for g in trainer.optimizer.param_groups:
            for p in g["params"]:
                out[names[id(p)]] = g["weight_decay"]
        return out

    cfg = cfg_for(tmp_path, max_steps=1, weight_decay=1e-3)
    assert set(decay_of(Trainer(cfg, mods, ce_loss, blobs(64))).values()) == {1e-3}
    cfg = cfg_for(tmp_path, max_steps=1, weight_decay=1e-3, no_decay_bn_bias=True)
    got = decay_of(Trainer(cfg, mods, ce_loss, blobs(64)))
    assert got == {
        "backbone.conv.weight": 1e-3,
        "backbone.conv.bias": 0.0,
        "backbone.bn.weight": 0.0,
        "backbone.bn.bias": 0.0,
        "head.weight": 1e-3,
        "head.bias": 0.0,
    }


# ---------------------------------------------------------------- checkpoints and resume


def _resume_setup(tmp_path, name, crash_at=None, interrupt_at=None, every=3):
    """Dropout + data augmentation + momentum + warmup/cosine + EMA + accumulation: every piece
    of state that exact resume must restore."""
    cfg = cfg_for(
        tmp_path / name,
        epochs=3,
        batch_size=8,
        grad_accum=2,
        lr=0.05,
        scheduler="cosine",
        warmup=2,
        warmup_unit="step",
        min_lr=0.001,
        ema_decay=0.8,
        checkpoint_every=every,
        keep_last=5,
        log_every=1,
    )

    sent = []

    def loss_fn(batch, modules, ctx):
        if crash_at is not None and ctx.step == crash_at:
            raise RuntimeError("simulated crash")
        if interrupt_at is not None and ctx.step == interrupt_at and not sent:
            sent.append(True)  # once: a second SIGINT means "abort now"
            os.kill(os.getpid(), signal.SIGINT)
        x, y = batch
        noise = 0.01 * torch.randn_like(x)  # training-side RNG use besides dropout
        return F.cross_entropy(modules["model"](x + noise), y)

    return Trainer(cfg, mlp(dropout=0.2), loss_fn, NoisyBlobs(64))


def test_resume_after_crash_is_exact(tmp_path):
    straight = _resume_setup(tmp_path, "run")
    assert straight.steps_per_epoch == 4 and straight.total_steps == 12
    straight.fit()

    # checkpoints every 4 steps = every epoch end; the crash comes during step 10
    crashed = _resume_setup(tmp_path, "crash", crash_at=9, every=4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.fit()
    ckpts = [s for s, _ in list_checkpoints(crashed.cfg.output_dir)]
    assert ckpts == [4, 8]  # no save on an ordinary exception

    resumed = _resume_setup(tmp_path, "crash", every=4)
    result = resumed.fit(resume="latest")
    assert result.step == 12
    assert result.history[0]["step"] == 9  # continued after step 8, at an epoch boundary
    assert_same_weights(weights(resumed.unwrap()), weights(straight.unwrap()))
    assert_same_weights(weights(resumed.unwrap(ema=True)), weights(straight.unwrap(ema=True)))
    # the EMA really differs from the weights (so the comparison above means something)
    assert not torch.equal(resumed.unwrap(ema=True)[0].weight, resumed.unwrap()[0].weight)


def test_sigint_saves_on_exit_and_resume_is_exact(tmp_path):
    straight = _resume_setup(tmp_path, "run")
    straight.fit()

    stopped = _resume_setup(tmp_path, "sig", interrupt_at=4)
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        stopped.fit()
    assert signal.getsignal(signal.SIGINT) is previous  # handler restored
    res = info.value.result
    assert res.interrupted and res.step == 5  # the step in flight finished
    assert res.checkpoint.name == "step_000005"
    assert ckpt_mod.read_state(res.checkpoint)["batch_in_epoch"] == 2  # 5 steps x 2 batches - 8

    resumed = _resume_setup(tmp_path, "sig")
    resumed.fit(resume=res.checkpoint)
    assert_same_weights(weights(resumed.unwrap()), weights(straight.unwrap()))


def test_keep_last_k_and_checkpoint_contents(tmp_path):
    cfg = cfg_for(tmp_path, max_steps=10, checkpoint_every=2, keep_last=2)
    trainer = Trainer(cfg, mlp(), ce_loss, blobs(64))
    result = trainer.fit()
    root = Path(cfg.output_dir) / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_000008", "step_000010"]
    assert result.checkpoint == root / "step_000010"
    state = json.loads((result.checkpoint / "facelab_state.json").read_text())
    assert state["step"] == 10 and state["epoch"] == 2 and state["batch_in_epoch"] == 2
    assert state["config"]["checkpoint_every"] == 2
    saved = load_file(str(result.checkpoint / "model.safetensors"))
    assert_same_weights(saved, weights(trainer.unwrap()))


def test_interrupted_save_is_never_latest(tmp_path, monkeypatch):
    cfg = cfg_for(tmp_path, max_steps=8, checkpoint_every=4, save_on_exit=False)
    Trainer(cfg, mlp(), ce_loss, blobs(64)).fit()
    root = Path(cfg.output_dir) / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_000004", "step_000008"]

    # a save that dies before its completion marker leaves only a temporary folder
    import facelab.core.train.trainer as trainer_mod

    def boom(path, state):
        raise OSError("disk full")

    monkeypatch.setattr(trainer_mod, "write_state", boom)
    cfg2 = cfg_for(tmp_path, max_steps=12, checkpoint_every=12, save_on_exit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # config differs (max_steps): expected here
        t = Trainer(cfg2, mlp(), ce_loss, blobs(64))
        with pytest.raises(OSError, match="disk full"):
            t.fit(resume="latest")
    monkeypatch.undo()
    names = sorted(p.name for p in root.iterdir())
    assert names == [".tmp_step_000012", "step_000004", "step_000008"]
    assert latest_checkpoint(cfg.output_dir).name == "step_000008"

    # a step_ folder without the marker (e.g. a partial copy) is ignored with a warning
    fake = root / "step_000099"
    fake.mkdir()
    (fake / "model.safetensors").write_bytes(b"partial")
    with pytest.warns(UserWarning, match="incomplete"):
        assert latest_checkpoint(cfg.output_dir).name == "step_000008"
    with pytest.raises(FormatError, match="incomplete"):
        Trainer(cfg, mlp(), ce_loss, blobs(64)).fit(resume=fake)
    with pytest.raises(FormatError, match="no such folder"):
        Trainer(cfg, mlp(), ce_loss, blobs(64)).fit(resume=root / "step_000123")

    # resuming "latest" picks step 8 and removes the stale temporary folder
    with pytest.warns(UserWarning, match="incomplete"):
        t = Trainer(cfg, mlp(), ce_loss, blobs(64))
        result = t.fit(resume="latest")
    assert result.step == 8 and result.history == []  # nothing left to train
    assert not (root / ".tmp_step_000012").exists()


def test_resume_refuses_other_layout(tmp_path):
    cfg = cfg_for(tmp_path, max_steps=4, checkpoint_every=4)
    Trainer(cfg, mlp(), ce_loss, blobs(64)).fit()
    other = cfg_for(tmp_path, max_steps=8, batch_size=8)
    with pytest.raises(KeyMismatchError, match=r"steps_per_epoch|batch_size"):
        Trainer(other, mlp(), ce_loss, blobs(64)).fit(resume="latest")
    with pytest.raises(KeyMismatchError, match="modules"):
        Trainer(
            cfg, {"net": mlp()}, lambda b, m, c: F.cross_entropy(m["net"](b[0]), b[1]), blobs(64)
        ).fit(resume="latest")


def test_resume_latest_without_checkpoint_starts_fresh(tmp_path):
    cfg = cfg_for(tmp_path, max_steps=3)
    result = Trainer(cfg, mlp(), ce_loss, blobs(64)).fit(resume="latest")
    assert result.step == 3


# ---------------------------------------------------------------- data order and RNG


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    s = EpochSampler(50, seed=7, shuffle=True, multiple_of=16)
    s.epoch = 3
    first = list(s)
    assert len(first) == len(s) == 48 and len(set(first)) == 48 and set(first) <= set(range(50))
    torch.manual_seed(0)  # global RNG state is irrelevant
    again = EpochSampler(50, seed=7, shuffle=True, multiple_of=16)
    again.epoch = 3
    assert list(again) == first
    s.epoch = 4
    assert list(s) != first
    plain = EpochSampler(50, seed=7, shuffle=False, multiple_of=16)
    assert list(plain) == list(range(48))


def test_seeded_batches_reproducible_isolated_and_worker_independent():
    wrapped = SeededBatches(NoisyBlobs(64), seed=3)
    wrapped.epoch = 1
    torch.manual_seed(123)
    random.seed(5)
    a = wrapped.__getitems__([1, 5, 7])
    after = (torch.rand(4), random.random())
    torch.manual_seed(123)
    random.seed(5)
    assert torch.equal(torch.rand(4), after[0]) and random.random() == after[1]  # untouched
    torch.manual_seed(999)  # another global state: same augmentation
    b = wrapped.__getitems__([1, 5, 7])
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))
    plain = [NoisyBlobs(64)[i][0] for i in (1, 5, 7)]
    assert not torch.equal(a[0][0], plain[0])  # the augmentation is really random
    wrapped.epoch = 2
    c = wrapped.__getitems__([1, 5, 7])
    assert not torch.equal(a[0][0], c[0][0])  # and differs between epochs

    def batches(workers):
        sampler = EpochSampler(64, seed=3, multiple_of=8)
        loader = DataLoader(wrapped, batch_size=8, sampler=sampler, num_workers=workers)
        return [x for x, _ in loader]

    wrapped.epoch = 1
    for x, y in zip(batches(0), batches(1)):
        assert torch.equal(x, y)


# ---------------------------------------------------------------- tracking


def test_tensorboard_tracker_writes_events(tmp_path):
    cfg = cfg_for(tmp_path, max_steps=4, tracker="tensorboard", log_every=2, save_on_exit=False)
    Trainer(cfg, mlp(), ce_loss, blobs(64)).fit()
    events = list((Path(cfg.output_dir) / "logs").rglob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for ev in events:
        acc = EventAccumulator(str(ev.parent))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"loss", "lr"} <= tags


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kw", "err", "match"),
    [
        (dict(lr=-0.1), RangeError, "lr"),
        (dict(lr=float("nan")), RangeError, "lr"),
        (dict(optimizer="adam"), UnknownNameError, "optimizer"),
        (dict(scheduler="poly"), UnknownNameError, "scheduler"),
        (dict(mixed_precision="fp8"), UnknownNameError, "mixed_precision"),
        (dict(milestones=(3, 2)), RangeError, "increasing"),
        (dict(milestones=(0,)), RangeError, "milestones"),
        (dict(scheduler="cosine", milestones=(1,)), RangeError, "only used"),
        (dict(batch_size=0), RangeError, "batch_size"),
        (dict(grad_accum=1.5), FacelabTypeError, "grad_accum"),
        (dict(grad_clip=0.0), RangeError, "grad_clip"),
        (dict(ema_decay=1.0), RangeError, "ema_decay"),
        (dict(min_lr=1.0, lr=0.1), RangeError, "min_lr"),
        (dict(momentum=1.0), RangeError, "momentum"),
        (dict(tracker="wandb"), UnknownNameError, "tracker"),
        (dict(warmup=1.5, warmup_unit="step"), RangeError, "whole number"),
    ],
)
def test_bad_config_values(tmp_path, kw, err, match):
    with pytest.raises(err, match=match):
        cfg_for(tmp_path, **kw)


def test_config_errors_that_need_the_data(tmp_path):
    data = blobs(64)  # 4 steps per epoch at batch 16
    with pytest.raises(RangeError, match="outside the run"):
        Trainer(cfg_for(tmp_path, epochs=3, milestones=(1, 3)), mlp(), ce_loss, data)
    with pytest.raises(RangeError, match="outside the run"):
        Trainer(
            cfg_for(tmp_path, max_steps=5, milestones=(6,), milestones_unit="step"),
            mlp(),
            ce_loss,
            data,
        )
    with pytest.raises(RangeError, match="warmup"):
        Trainer(cfg_for(tmp_path, epochs=1, warmup=1), mlp(), ce_loss, data)
    with pytest.raises(RangeError, match="global batch"):
        Trainer(cfg_for(tmp_path, batch_size=32, grad_accum=4), mlp(), ce_loss, data)


def test_bad_arguments_and_loss_outputs(tmp_path):
    cfg = cfg_for(tmp_path, max_steps=2, save_on_exit=False)
    with pytest.raises(FacelabTypeError, match="TrainConfig"):
        Trainer({"lr": 0.1}, mlp(), ce_loss, blobs(64))
    with pytest.raises(FacelabTypeError, match=r"nn\.Module"):
        Trainer(cfg, {"model": "resnet"}, ce_loss, blobs(64))
    with pytest.raises(FacelabTypeError, match="Dataset"):
        Trainer(cfg, mlp(), ce_loss, [1, 2, 3])
    with pytest.raises(ShapeError, match="scalar loss"):
        Trainer(cfg, mlp(), lambda b, m, c: m["model"](b[0]).sum(1), blobs(64)).fit()
    with pytest.raises(FacelabTypeError, match="loss tensor"):
        Trainer(cfg, mlp(), lambda b, m, c: 1.0, blobs(64)).fit()
    with pytest.raises(KeyMismatchError, match="not allowed"):
        Trainer(cfg, mlp(), lambda b, m, c: (ce_loss(b, m, c), {"lr": 1.0}), blobs(64)).fit()
    with pytest.raises(NonFiniteError, match="diverged"):
        Trainer(cfg, mlp(), lambda b, m, c: ce_loss(b, m, c) * float("nan"), blobs(64)).fit()
    t = Trainer(cfg, mlp(), ce_loss, blobs(64))
    t.fit()
    with pytest.raises(RuntimeError, match="already called"):
        t.fit()
    with pytest.raises(RangeError, match="EMA is off"):
        t.unwrap(ema=True)
    with pytest.raises(FacelabTypeError, match="resume"):
        Trainer(cfg, mlp(), ce_loss, blobs(64)).fit(resume=3)


# ---------------------------------------------------------------- several processes


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "_train_ddp_script", HERE / "_train_ddp_script.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_two_cpu_processes_agree_resume_and_match_one_process(tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    # `--cpu` makes accelerate 1.x start a single process; launch_cpu uses --multi_gpu with
    # ACCELERATE_USE_CPU (torchrun with two gloo ranks)
    proc = launch_cpu(HERE / "_train_ddp_script.py", str(out), timeout=240, hf_home=tmp_path / "hf")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    infos = {f.stem: json.loads(f.read_text()) for f in out.glob("rank*.json")}
    assert set(infos) == {"rank0_a", "rank1_a", "rank0_b", "rank1_b"}
    assert all(i["world_size"] == 2 and i["step"] == 18 for i in infos.values())
    assert all(i["steps_per_epoch"] == 6 for i in infos.values())  # 96 / (8 x 2)
    w = {k: load_file(str(out / f"{k}.safetensors")) for k in infos}
    assert_same_weights(w["rank0_a"], w["rank1_a"])  # ranks agree
    assert_same_weights(w["rank0_a"], w["rank0_b"])  # crash + resume under DDP is exact
    assert_same_weights(w["rank1_a"], w["rank1_b"])

    # DDP averages gradients: 2 ranks x batch 8 == 1 process x batch 16 on the same order
    script = _load_script()
    cfg = script.make_config(str(tmp_path / "single"), batch_size=16)
    single = Trainer(cfg, script.make_model(), script.loss_fn, script.make_data())
    single.fit()
    assert_same_weights(w["rank0_a"], weights(single.unwrap()), atol=1e-5)


def test_stage_config_fills_only_an_empty_folder(tmp_path):
    from facelab.core.train import stage_config

    empty = TrainConfig(output_dir="", max_steps=3)
    filled = stage_config(empty, tmp_path, "stage1")
    assert filled.output_dir == str(tmp_path / "stage1") and filled.max_steps == 3
    assert empty.output_dir == ""  # a new config; the preset's stays as it was
    kept = TrainConfig(output_dir=str(tmp_path / "mine"))
    assert stage_config(kept, tmp_path, "stage1") is kept


# ---------------------------------------------------------------- speed options


def _conv_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )
    return model, TensorDataset(x, y)


def _fit_weights(tmp_path, name, model, data, **kw):
    cfg = cfg_for(tmp_path / name, **({"epochs": 2, "optimizer": "sgd", "lr": 0.05} | kw))
    trainer = Trainer(cfg, model, ce_loss, data)
    result = trainer.fit()
    return weights(model), [h["loss"] for h in result.history]


def test_channels_last_trains_the_same_model(tmp_path):
    plain_model, data = _conv_problem()
    nhwc_model, _ = _conv_problem()
    plain, plain_losses = _fit_weights(tmp_path, "plain", plain_model, data)
    nhwc, nhwc_losses = _fit_weights(tmp_path, "nhwc", nhwc_model, data, channels_last=True)
    conv_weight = nhwc_model[0].weight
    assert conv_weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv_weight.is_contiguous()  # really NHWC, not a layout that is both
    # the same arithmetic in another memory order: equal up to summation order
    assert_same_weights(plain, {k: v.contiguous() for k, v in nhwc.items()}, atol=1e-5)
    np.testing.assert_allclose(plain_losses, nhwc_losses, rtol=1e-5)


def test_fused_optimizer_matches_the_for_each_update(tmp_path):
    for optimizer in ("sgd", "adamw"):
        a, _ = _fit_weights(tmp_path, f"{optimizer}-plain", mlp(), blobs(64), optimizer=optimizer)
        kw = {"optimizer": optimizer, "fused_optimizer": True}
        b, _ = _fit_weights(tmp_path, f"{optimizer}-fused", mlp(), blobs(64), **kw)
        assert_same_weights(a, b, atol=1e-6)


def test_fused_optimizer_defaults_to_cuda_only():
    from facelab.core.train.schedule import build_optimizer

    params = [nn.Parameter(torch.zeros(3))]
    cpu = build_optimizer(TrainConfig(), [{"params": params}], "cpu")
    assert not cpu.defaults.get("fused")
    forced = build_optimizer(TrainConfig(fused_optimizer=True), [{"params": params}], "cpu")
    assert forced.defaults.get("fused") is True


def test_compile_keeps_state_dict_keys_and_results(tmp_path):
    eager, eager_losses = _fit_weights(tmp_path, "eager", mlp(), blobs(64))
    compiled_model = mlp()
    # aot_eager traces forward and backward like inductor does, without its C++ code generation
    # (tens of seconds on 2 cores); the GPU check runs the inductor default
    compiled, compiled_losses = _fit_weights(
        tmp_path, "compiled", compiled_model, blobs(64), compile=True, compile_backend="aot_eager"
    )
    assert compiled_model._compiled_call_impl is not None  # it really ran compiled
    assert compiled.keys() == eager.keys()  # no "_orig_mod." prefixes in checkpoints
    assert_same_weights(eager, compiled, atol=1e-5)
    np.testing.assert_allclose(eager_losses, compiled_losses, rtol=1e-5)


def test_launch_cpu_retries_port_failures_only(tmp_path, monkeypatch):
    from facelab.core.train import launch

    calls = []

    def fake_run(cmd, **kw):
        port = int(cmd[cmd.index("--main_process_port") + 1])
        calls.append(port)
        err = "RuntimeError: The server socket has failed to listen: address already in use"
        rc, stderr = (1, err) if len(calls) < 3 else (0, "")
        return subprocess.CompletedProcess(cmd, rc, "", stderr)

    monkeypatch.setattr(launch.subprocess, "run", fake_run)
    assert launch.launch_cpu(tmp_path / "s.py").returncode == 0
    assert len(calls) == 3  # two port failures, then a launch on a third port
    assert all(20000 <= p < 32000 for p in calls)

    calls.clear()

    def broken(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ValueError: a real bug")

    monkeypatch.setattr(launch.subprocess, "run", broken)
    assert launch.launch_cpu(tmp_path / "s.py").returncode == 1
    assert len(calls) == 1  # not retried: every attempt would fail alike

    calls.clear()
    monkeypatch.setattr(
        launch.subprocess,
        "run",
        lambda cmd, **kw: (
            calls.append(cmd)
            or subprocess.CompletedProcess(cmd, 1, "", "DistNetworkError: Connection refused")
        ),
    )
    assert launch.launch_cpu(tmp_path / "s.py", retries=2).returncode == 1
    assert len(calls) == 3  # the first attempt and two retries


def test_free_port_is_bindable():
    import socket

    from facelab.core.train.launch import free_port

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free when handed out


def test_end_distributed_destroys_the_process_group_and_is_a_no_op_without_one(tmp_path):
    import torch.distributed as dist

    from facelab.core.train.launch import end_distributed

    end_distributed()  # no process group: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    assert dist.is_initialized()
    end_distributed()
    assert not dist.is_initialized()
