"""Style control of a trained toy MorphFace generator (the README's style-control tables).

    OMP_NUM_THREADS=1 uv run python packages/morphface/scripts/toy_measure.py GEN_DIR \
        [--seed 0] [--own-style] [--no-clip] [--style-scale S] [--id-scale S] [--blend B]
        [--steps N] [--requests N] [--swap-fields all|pose-expression]

Runs ``facelab.morphface.bench.style_control`` on one torch thread: each request pairs a held-out
real image's identity with the style of an image of another identity (``--own-style``: its own
style); the regressor reads pose / expression back from the generated images, from the same
network's images without style, and from the real images whose style was requested. Prints the
result and the CPU seconds as JSON. The toy style settings are the generator's own (read from
its folder).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("generator")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--requests", type=int, default=96)
    p.add_argument("--own-style", action="store_true", help="request each image's own style")
    p.add_argument("--no-clip", action="store_true", help="plain DDIM (no x0 clipping)")
    p.add_argument("--style-scale", type=float, default=None)
    p.add_argument("--id-scale", type=float, default=None)
    p.add_argument(
        "--swap-fields",
        default="all",
        choices=["all", "pose-expression"],
        help="request the donor's whole style, or only its pose and expression",
    )
    p.add_argument("--blend", type=float, default=None, help="context blending (default: stored)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the generator's)")
    a = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.process_time()
    from facelab.morphface.bench import style_control

    res = style_control(
        a.generator,
        seed=a.seed,
        num_requests=a.requests,
        swap=not a.own_style,
        clip_sample=not a.no_clip,
        style_scale=a.style_scale,
        id_scale=a.id_scale,
        swap_fields=a.swap_fields,
        blend=a.blend,
        num_steps=a.steps,
    )
    res["cpu_s"] = time.process_time() - t0
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
