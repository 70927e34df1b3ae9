"""Print the per-step training loss of a small MorphFace run (fixed seed, one thread) as JSON,
plus a digest of the trained EMA weights: compares two versions of the training loop.

    OMP_NUM_THREADS=1 uv run python packages/morphface/scripts/loss_curve.py OUT_DIR \
        [--steps 30] [--no-style]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--no-style", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    from facelab.core.diffusion.train import ReferenceUNetConfig
    from facelab.morphface.train import (
        TOY_MORPHFACE_UNET,
        EncoderConfig,
        morphface_presets,
        train,
    )

    cfg = morphface_presets()["toy"]
    cfg.data.toy_identities, cfg.data.toy_images_per_identity = 4, 6
    cfg.data.image_size = 16
    cfg.use_style = not args.no_style
    cfg.unet = ReferenceUNetConfig(
        **(
            TOY_MORPHFACE_UNET
            | {
                "channel_multipliers": (1, 2),
                "is_attention": (False, True),
                "attention_head_channels": 8,
                "context_channels": 32,
            }
        )
    )
    cfg.encoder = EncoderConfig(map_size=16, widths=(8, 16), style_dropout_probability=0.2)
    cfg.train = replace(
        cfg.train,
        output_dir=args.out,
        max_steps=args.steps,
        batch_size=8,
        warmup=3,
        checkpoint_every=1000,
        log_every=1,
        progress=False,
    )
    res = train(cfg)
    losses = [row["loss"] for row in res.train.history]
    digest = {
        "denoiser_sum": float(sum(p.detach().double().sum() for p in res.denoiser.parameters())),
        "encoder_sum": float(sum(p.detach().double().sum() for p in res.encoder.parameters()))
        if res.encoder is not None
        else None,
    }
    print(json.dumps({"losses": losses, **digest}))


if __name__ == "__main__":
    main()
