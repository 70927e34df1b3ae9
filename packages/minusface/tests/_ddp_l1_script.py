"""Launched by test_ddp.py under ``accelerate launch`` with 2 CPU processes.

One stage-1 step with only the L1 term (fr_weight 0; the U-Net has no normalization layers, so
its gradient is exactly that of the L1 term) on a global batch of 8 (4 per rank). Rank 0
writes the generator's weights to OUT/ddp.safetensors. ``make_config`` is shared with the
single-process reference in the test.
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file

from facelab.core.recipe import DataConfig, build_train_dataset
from facelab.core.train import TrainConfig
from facelab.core.train.launch import end_distributed
from facelab.minusface import MinusFaceConfig
from facelab.minusface.train import stage1_trainer


def make_config(out: str, batch_size: int) -> MinusFaceConfig:
    run = TrainConfig(
        output_dir="x",
        max_steps=1,
        batch_size=batch_size,
        lr=0.5,
        momentum=0.0,
        weight_decay=0.0,
        scheduler="constant",
        progress=False,
        save_on_exit=False,
        seed=3,
    )
    return MinusFaceConfig(
        output_dir=out,
        data=DataConfig(image_size=32, toy_identities=4, toy_images_per_identity=2, eval_pairs=0),
        generator_widths=(4, 8),
        input_scale=1 / 64,
        embedding_size=8,
        base_width=4,
        fr_weight=0.0,
        generator_lr_scale=1.0,
        stage1=run,
        stage2=run,
        evaluate=False,
    )


def generator_after_one_step(cfg: MinusFaceConfig):
    torch.manual_seed(0)  # the same initial weights everywhere
    trainer = stage1_trainer(cfg, *build_train_dataset(cfg.data))
    before = {k: v.clone() for k, v in trainer.unwrap("generator").state_dict().items()}
    trainer.fit()
    after = trainer.unwrap("generator").state_dict()
    return trainer, before, after


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1]
    trainer, before, after = generator_after_one_step(make_config(out, batch_size=4))
    if trainer.accelerator.is_main_process:
        tensors = {f"after.{k}": v.contiguous() for k, v in after.items()}
        tensors |= {f"before.{k}": v.contiguous() for k, v in before.items()}
        save_file(tensors, f"{out}/ddp.safetensors")
    end_distributed()
