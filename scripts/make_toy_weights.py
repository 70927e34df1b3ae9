"""Train the toy generators of the synthesis family once and export their weights (float16
safetensors, a few MB each) to ``benchmarks/toy-weights/<generator>/`` (MorphFace's into its
package, ``facelab/morphface/weights/toy``, which its claim test uses), where ``facelab bench
quick`` and ``facelab bench synth`` find them.

    uv run python scripts/make_toy_weights.py                       # every installed generator
    uv run python scripts/make_toy_weights.py --generators base uiface
    uv run python scripts/make_toy_weights.py --generators steerface --threads 2

Each generator trains its package's ``toy`` preset (the base: ``facelab synth train --preset
toy``, 1,500 steps, about 750 CPU-seconds) in ``--workdir`` (default ``runs/toy-weights``);
a killed run resumes from its last checkpoint when the command is repeated. A generator whose
package is not installed, or that has no toy-training entry point yet, is skipped with a message
(see ``facelab.benchmarks.generators`` for the two functions a generator package provides).
The weights already exported are kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from facelab.benchmarks.generators import (
        GENERATORS,
        INFO_FILE,
        MissingWeightsError,
        get_generator,
        make_toy_weights,
    )

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--generators", nargs="+", default=list(GENERATORS), choices=list(GENERATORS))
    p.add_argument(
        "--out",
        default=None,
        help="export root (default: benchmarks/toy-weights, or the package's own weights "
        "folder for a generator that ships them)",
    )
    p.add_argument("--workdir", default=str(ROOT / "runs" / "toy-weights"))
    p.add_argument("--steps", type=int, default=None, help="override the presets' steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--force", action="store_true", help="retrain weights that already exist")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "toy-weights"
    command = "uv run python scripts/make_toy_weights.py --generators {name}" + (
        f" --steps {args.steps}" if args.steps else ""
    )
    status = {}
    for name in args.generators:
        target = out / name
        ship = get_generator(name).hook("shipped_toy_weights")
        if ship is not None and not args.out:
            target = Path(ship())  # the package ships them (its own tests use them)
        if (target / INFO_FILE).is_file() and not args.force:
            print(f"{name}: weights exist in {target} (--force to retrain)", flush=True)
            status[name] = "kept"
            continue
        print(f"{name}: training its toy preset in {args.workdir}/{name}", flush=True)
        try:
            dest = make_toy_weights(
                name,
                out,
                Path(args.workdir),
                steps=args.steps,
                seed=args.seed,
                progress=not args.no_progress,
                command=command.format(name=name),
                dest=target,
            )
        except MissingWeightsError as err:
            print(f"{name}: skipped: {err}", flush=True)
            status[name] = "skipped"
            continue
        size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file()) / 2**20
        print(f"{name}: exported to {dest} ({size:.1f} MiB)", flush=True)
        status[name] = "made"
    print(", ".join(f"{k}: {v}" for k, v in status.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
