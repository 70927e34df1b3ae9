"""Train the ``toy-expression`` preset and export it as the package's second shipped generator
(``facelab/morphface/weights/toy-expression``, float16; the expression part of the claim test).

    OMP_NUM_THREADS=1 uv run python packages/morphface/scripts/make_expression_weights.py \
        [--workdir runs/toy-weights/toy-expression] [--seed 0] [--threads 1]

The run is resumable (a stopped run continues from its last checkpoint; a finished one is only
exported again). About 2,600 CPU-s on one thread. Needs the repository's environment: it is
the benchmarks' ``make_toy_weights`` (as in ``scripts/make_toy_weights.py``) with the
``toy-expression`` preset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PRESET = "toy-expression"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", default=str(ROOT / "runs" / "toy-weights" / PRESET))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default=None, help="export folder (default: the package's)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    import torch

    from facelab.benchmarks.generators import make_toy_weights
    from facelab.morphface.bench import TOY_EXPRESSION_WEIGHTS

    torch.set_num_threads(args.threads)
    dest = Path(args.out) if args.out else TOY_EXPRESSION_WEIGHTS
    dest = make_toy_weights(
        "morphface",
        dest.parent,
        Path(args.workdir),
        seed=args.seed,
        progress=not args.no_progress,
        command="uv run python packages/morphface/scripts/make_expression_weights.py",
        dest=dest,
        label=f"MorphFace ({PRESET})",
        train_options={"preset": PRESET},
    )
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()) / 2**20
    print(f"exported to {dest} ({size:.1f} MiB)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
