"""Trainer overhead: ``facelab.core.train.Trainer`` vs a minimal PyTorch loop, same run.

Both sides train the same model with the same SGD recipe, batch size and in-memory synthetic
data (a shuffled ``DataLoader``, ``num_workers=0``); the reference is the bare
``zero_grad / forward / cross_entropy / backward / step`` loop. Two rows:

- hot loop: the clock is read inside both loops, when the loss of step ``n`` and of step
  ``2n - 1`` is about to be computed, so the ``n - 1`` steps in between (data fetch, forward,
  backward, optimizer, our bookkeeping) are compared and one-off costs are not (goal:
  overhead <= 5%);
- whole fit of ``2n`` steps, setup included (Accelerator, prepare, optimizer, DataLoader).

On CPU the clock is process CPU time with one torch thread (wall time on a shared machine
mostly measures the neighbours); on CUDA it is wall time, synchronized at each reading.
Runs alternate between the two sides; medians over the repeats are reported.

``speedup`` = reference time / our time, so 0.95 means 5% overhead.
"""

from __future__ import annotations

import copy
import shutil
import statistics
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

COLUMNS = ["benchmark", "ours", "reference", "ours/s", "reference/s", "speedup", "note"]


class _ConvNet(nn.Module):
    """A small conv classifier (the ``small`` model and the fallback for iresnet50)."""

    def __init__(self, classes: int, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _model(small: bool, classes: int) -> tuple[nn.Module, str, int]:
    """(model, description, input size)."""
    if small:
        return _ConvNet(classes), "small conv net, 3x32x32", 32
    try:
        from facelab.core.backbones import get_backbone
    except ImportError:
        return _ConvNet(classes, width=64), "conv net (no facelab.core.backbones), 3x112x112", 112
    backbone = get_backbone("iresnet50")
    return nn.Sequential(backbone, nn.Linear(512, classes)), "iresnet50 + linear, 3x112x112", 112


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _paired_runs(
    model: nn.Module,
    data: TensorDataset,
    batch: int,
    steps: int,
    repeat: int,
    device: torch.device,
    bf16: bool = False,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per hot-loop step and per whole fit, for "ours" and "ref", ``repeat`` times
    (``bf16``: both sides under bf16 autocast, ours through the config's mixed_precision)."""
    from facelab.core.train import TrainConfig, Trainer

    total = 2 * steps
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    workdir = tempfile.mkdtemp(prefix="facelab-trainer-overhead-")

    def mark(step: int, marks: list[float], k: int) -> None:
        if step in (k // 2, k - 1):
            _sync(device)
            marks.append(clock())

    def ours(k: int) -> list[float]:
        marks: list[float] = []

        def ce(batch_, modules, ctx):
            mark(ctx.step, marks, k)
            x, y = batch_
            return F.cross_entropy(modules["model"](x), y)

        cfg = TrainConfig(
            output_dir=workdir,
            max_steps=k,
            batch_size=batch,
            lr=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            scheduler="constant",
            mixed_precision="bf16" if bf16 else "no",
            progress=False,
            save_on_exit=False,
        )
        # a copy: preparing for bf16 wraps the module's forward in autocast for good, which
        # would then also slow down the reference loop that trains ``model`` itself
        Trainer(cfg, copy.deepcopy(model) if bf16 else model, ce, data).fit()
        return marks

    def reference(k: int) -> list[float]:
        marks: list[float] = []
        model.to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        loader = DataLoader(
            data,
            batch_size=batch,
            shuffle=True,
            drop_last=True,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(0),
        )
        for i, (x, y) in enumerate(loader):
            if i == k:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            mark(i, marks, k)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            F.cross_entropy(logits.float(), y).backward()
            opt.step()
        return marks

    hot: dict[str, list[float]] = {"ours": [], "ref": []}
    whole: dict[str, list[float]] = {"ours": [], "ref": []}
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        for fn in (reference, ours):
            fn(min(2, steps))  # warm-up (imports, allocator, first-call kernels)
        for _ in range(repeat):
            for name, fn in (("ref", reference), ("ours", ours)):
                _sync(device)
                t0 = clock()
                marks = fn(total)
                _sync(device)
                whole[name].append(clock() - t0)
                hot[name].append((marks[1] - marks[0]) / (total - 1 - steps))
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(workdir, ignore_errors=True)
    return hot, whole


def run_trainer_overhead(small: bool) -> list[dict[str, Any]]:
    """Rows: the model's hot loop, its whole fit, and the absolute per-step overhead measured
    on a null model (one Linear layer on 8 features), where the loop is nearly all overhead."""
    torch.manual_seed(0)
    batch, classes = 32, 16
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    kind = "CPU time, 1 thread" if not cuda else "wall time, bf16 autocast"
    # n: the hot loop spans steps n .. 2n-2; iresnet50 on one CPU thread takes 15+ s a step,
    # so the full size is meant for a GPU and stays minimal on CPU
    steps, repeat = (12, 7) if small else ((20, 3) if device.type == "cuda" else (2, 1))
    model, what, size = _model(small, classes)
    total = 2 * steps
    data = TensorDataset(
        torch.randn(batch * total, 3, size, size), torch.randint(0, classes, (batch * total,))
    )
    hot, whole = _paired_runs(model, data, batch, steps, repeat, device, bf16=cuda)
    per_ours, per_ref = statistics.median(hot["ours"]), statistics.median(hot["ref"])
    # ratio of each adjacent (reference, ours) pair, then the median: robust to load drifts
    ratio = statistics.median(r / o for r, o in zip(hot["ref"], hot["ours"]))
    fit_ours, fit_ref = statistics.median(whole["ours"]), statistics.median(whole["ref"])

    null_steps = 200
    null_data = TensorDataset(
        torch.randn(batch * 2 * null_steps, 8), torch.randint(0, 4, (batch * 2 * null_steps,))
    )
    null_hot, _ = _paired_runs(nn.Linear(8, 4), null_data, batch, null_steps, 3, device)
    null_ours, null_ref = statistics.median(null_hot["ours"]), statistics.median(null_hot["ref"])

    label = f"training step, {what}, batch {batch}, SGD ({device.type})"
    return [
        {
            "benchmark": label,
            "ours": "facelab Trainer",
            "reference": "plain PyTorch loop",
            "ours/s": batch / per_ours,
            "reference/s": batch / per_ref,
            "speedup": ratio,
            "note": f"samples/s over steps {steps}..{total - 2} ({kind}, median of {repeat} "
            f"paired runs); overhead {100 * (1 / ratio - 1):+.1f}%, goal <= 5%",
        },
        {
            "benchmark": f"{label}, whole fit of {total} steps",
            "ours": "facelab Trainer",
            "reference": "plain PyTorch loop",
            "ours/s": batch * total / fit_ours,
            "reference/s": batch * total / fit_ref,
            "speedup": fit_ref / fit_ours,
            "note": f"samples/s incl. setup (Accelerator, prepare, DataLoader; {kind})",
        },
        {
            "benchmark": f"training step, null model (Linear 8->4), batch {batch} ({device.type})",
            "ours": "facelab Trainer",
            "reference": "plain PyTorch loop",
            "ours/s": 1.0 / null_ours,
            "reference/s": 1.0 / null_ref,
            "speedup": null_ref / null_ours,
            "note": f"steps/s; absolute trainer overhead {1e6 * (null_ours - null_ref):.0f} us "
            f"per step ({kind})",
        },
    ]
