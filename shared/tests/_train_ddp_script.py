"""Launched by test_train.py under ``accelerate launch --num_processes 2 --cpu``.

Trains a tiny MLP on Gaussian blobs with ``Trainer`` twice: (a) straight through, (b) crashing
during step 7 and resuming from the last checkpoint (step 4) in a new ``Trainer``. Each rank
writes its final weights to ``OUT/rank{r}_{a,b}.safetensors`` plus a JSON summary. The test imports
``make_data``/``make_model``/``make_config``/``loss_fn`` from here for its single-process
reference, so both sides train the very same problem.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import TensorDataset

from facelab.core.train import TrainConfig, Trainer
from facelab.core.train.launch import end_distributed


def make_data(n: int = 96, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 1.0]])
    x = centers[y] + 0.5 * torch.randn(n, 4, generator=g)
    return TensorDataset(x, y)


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


def make_config(out: str, batch_size: int) -> TrainConfig:
    return TrainConfig(
        output_dir=out,
        epochs=3,
        batch_size=batch_size,
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        scheduler="step",
        milestones=(2,),
        checkpoint_every=4,
        keep_last=2,
        log_every=2,
        progress=False,
    )


class Crash(RuntimeError):
    pass


def loss_fn(batch, modules, ctx, crash_at: int | None = None):
    if crash_at is not None and ctx.step == crash_at:
        raise Crash(f"simulated crash at step {ctx.step}")
    x, y = batch
    logits = modules["model"](x)
    return F.cross_entropy(logits, y), {"world": torch.tensor(float(ctx.world_size))}


def _train(out: Path, crash_at: int | None = None, resume: str | None = None) -> Trainer:
    cfg = make_config(str(out), batch_size=8)
    trainer = Trainer(cfg, make_model(), lambda b, m, c: loss_fn(b, m, c, crash_at), make_data())
    trainer.fit(resume=resume)
    return trainer


def _dump(trainer: Trainer, out: Path, tag: str) -> None:
    acc = trainer.accelerator
    rank = acc.process_index
    weights = {k: v.detach().cpu().contiguous() for k, v in trainer.unwrap().state_dict().items()}
    save_file(weights, str(out / f"rank{rank}_{tag}.safetensors"))
    info = {
        "world_size": acc.num_processes,
        "step": trainer.step,
        "steps_per_epoch": trainer.steps_per_epoch,
        "losses": trainer.last_losses,
        "checkpoint": str(trainer.last_checkpoint),
    }
    (out / f"rank{rank}_{tag}.json").write_text(json.dumps(info))


def main(out: str) -> None:
    root = Path(out)
    # a: uninterrupted; b: crashes during step 7 (last checkpoint: step 4), then resumes
    _dump(_train(root / "a"), root, "a")
    try:
        _train(root / "b", crash_at=7)
    except Crash:
        pass
    else:  # pragma: no cover - the crash is the point
        raise SystemExit("expected a crash")
    _dump(_train(root / "b", resume="latest"), root, "b")


if __name__ == "__main__":
    main(sys.argv[1])
    end_distributed()
