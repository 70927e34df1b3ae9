"""The toy preset end to end: train (or reuse) the toy generator, then check that an independent
toy recognizer identifies the people it draws.

    uv run python shared/scripts/synth_toy.py --run runs/synth-toy --threads 2

Trains with ``facelab synth train --preset toy`` settings when ``RUN/generator`` does not exist
yet (resumes an interrupted run), then prints the table of
``facelab.core.diffusion.toy.toy_identity_report`` and writes ``RUN/toy_report.json`` and a
sample grid ``RUN/toy_samples.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from facelab.core.diffusion import load_generator, synth_presets, train_diffusion
from facelab.core.diffusion.toy import summarize, toy_identity_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", default="runs/synth-toy")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images-per-identity", type=int, default=8)
    ap.add_argument("--sampling-steps", type=int, default=50)
    ap.add_argument("--guidance-scale", type=float, default=1.0)
    ap.add_argument("--recognizer-steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--no-clip-sample",
        dest="clip_sample",
        action="store_false",
        help="sample without clipping the predicted x0 (the reference's latent-space setting)",
    )
    ap.add_argument(
        "--checkpoint",
        default=None,
        help="evaluate the EMA weights of this trainer checkpoint (RUN/checkpoints/step_N) "
        "instead of training to the end",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = synth_presets()["toy"]
    cfg.train = dataclasses.replace(cfg.train, output_dir=args.run, progress=False)
    run = Path(args.run)
    timing = {}
    if args.checkpoint is None and not (run / "generator" / "generator.json").is_file():
        t, c = time.time(), time.process_time()
        res = train_diffusion(cfg)
        timing = {
            "train_wall_s": time.time() - t,
            "train_cpu_s": time.process_time() - c,
            "steps": res.train.step,
        }
        print(
            f"trained {res.train.step} steps in {timing['train_wall_s']:.0f} s wall, {timing['train_cpu_s']:.0f} CPU-s"
        )
    if args.checkpoint is not None:
        from facelab.core.diffusion import IdentitySampler, build_denoiser

        model = build_denoiser(cfg)
        state = torch.load(Path(args.checkpoint) / "custom_checkpoint_0.pkl", weights_only=True)
        for p, s in zip(model.parameters(), state["shadow_params"]):
            p.data.copy_(s)
        timing["checkpoint"] = args.checkpoint
        timing["ema_steps"] = int(state["optimization_step"])
        sampler = IdentitySampler(
            model.eval(),
            image_size=cfg.data.image_size,
            num_steps=args.sampling_steps,
            guidance_scale=args.guidance_scale,
            clip_sample=args.clip_sample,
        )
    else:
        sampler = load_generator(
            run,
            num_steps=args.sampling_steps,
            guidance_scale=args.guidance_scale,
            clip_sample=args.clip_sample,
        )
    t = time.time()
    rep = toy_identity_report(
        sampler,
        cfg.data,
        images_per_identity=args.images_per_identity,
        recognizer_steps=args.recognizer_steps,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
    )
    images = rep.pop("images")
    rep["eval_wall_s"] = time.time() - t
    rep["timing"] = timing
    rep["settings"] = vars(args)
    print(summarize(rep))
    print(
        f"unconditional samples, mean max cosine to a real identity centroid: {rep['unconditional_max_centroid_cos']:.3f}"
    )
    (run / "toy_report.json").write_text(json.dumps(rep, indent=2))
    from PIL import Image

    k = args.images_per_identity
    grid = images[: 8 * k].view(8, k, 3, *images.shape[-2:]).permute(0, 3, 1, 4, 2)
    grid = grid.reshape(8 * images.shape[-2], k * images.shape[-1], 3)
    Image.fromarray(((grid + 1) * 127.5).round().clamp(0, 255).byte().numpy()).resize(
        (k * 64, 8 * 64), Image.NEAREST
    ).save(run / "toy_samples.png")


if __name__ == "__main__":
    main()
