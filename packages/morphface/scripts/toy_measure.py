"""Style control of a trained toy MorphFace generator (the README's toy table).

    OMP_NUM_THREADS=1 uv run python packages/morphface/scripts/toy_measure.py GEN_DIR [--seed 0]

Runs ``facelab.morphface.bench.style_control`` (requested vs read-back pose / expression of
generated images; the same network without style; real images) on one torch thread and prints
the result and the CPU seconds as JSON.
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
    a = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.process_time()
    from facelab.morphface.bench import style_control

    res = style_control(a.generator, seed=a.seed, num_requests=a.requests)
    res["cpu_s"] = time.process_time() - t0
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
