"""The one Accelerate training loop every facelab method uses.

``TrainConfig`` holds the recipe (optimizer, schedule, length, batch, precision, checkpoints);
``Trainer(cfg, modules, loss_fn, data, ...)`` trains; ``fit(resume="latest")`` continues exactly
where a stopped run left off. See ``facelab.core.train.trainer`` for the contract.

Example (the insightface recipe: SGD 0.1, x0.1 at epochs 10/18/22 of 24)::

    cfg = TrainConfig(output_dir="runs/arcface", epochs=24, batch_size=128,
                      milestones=(10, 18, 22), checkpoint_every=2000)

    def loss_fn(batch, modules, ctx):
        images, labels = batch
        logits = modules["head"](modules["backbone"](images), labels)
        return F.cross_entropy(logits, labels)

    trainer = Trainer(cfg, {"backbone": backbone, "head": head}, loss_fn, dataset)
    result = trainer.fit(resume="latest")
    backbone = trainer.unwrap("backbone")

Run it as ``python train.py`` or ``accelerate launch --multi_gpu --num_processes N train.py``.
"""

from facelab.core.train.checkpoint import latest_checkpoint, list_checkpoints, read_state
from facelab.core.train.config import TrainConfig, stage_config
from facelab.core.train.data import EpochSampler, SeededBatches
from facelab.core.train.schedule import LRSchedule, build_param_groups, build_schedule
from facelab.core.train.trainer import (
    StepContext,
    Trainer,
    TrainingInterrupted,
    TrainResult,
)

__all__ = [
    "EpochSampler",
    "LRSchedule",
    "SeededBatches",
    "StepContext",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingInterrupted",
    "build_param_groups",
    "build_schedule",
    "latest_checkpoint",
    "list_checkpoints",
    "read_state",
    "stage_config",
]
