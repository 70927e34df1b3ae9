"""Run a benchmark suite: facelab bench quick|speed|ppfr|templates|synth|tokenizer|iris|fl."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from facelab.benchmarks.methods import PPFR_METHODS
from facelab.benchmarks.registry import SUITES, get_suite
from facelab.core.cli import ArgumentParser

FULL_SUITES = ("ppfr", "templates")
FAMILY_SUITES = ("synth", "tokenizer", "iris", "fl")
_FULL_ONLY = (
    "train_data",
    "eval_bins",
    "preset",
    "max_steps",
    "batch_size",
    "image_size",
    "attack_steps",
)

EPILOG = """\
suites:
  quick      every family on toy data, CPU, < 20 minutes (what `make demo` runs)
  speed      speed ratios against references measured in the same run
  ppfr       ArcFace baseline + DuetFace/PartialFace/MinusFace (real data: paper recipes;
             without --train-data/--eval-bins: toyfaces folders + .bin, toy presets)
  templates  SlerpFace / BioHashing / IronMask (the same data rules as ppfr)
  synth      every installed generator's dataset scored by FRCSyn's cross-dataset table
  tokenizer  GloTok's ablation (baseline -> + histogram loss -> + residual)
  iris       ImmerIris: NormFree / NormKeep vs the classical iris-code pipeline
  fl         ARIBA (backdoor defences) and VFL-AFE (DP vertical FL) comparisons

A family suite whose packages are not installed writes a report saying so (exit 0).

examples:
  facelab bench quick
  facelab bench quick --families fl tokenizer
  facelab bench fl
  facelab bench synth --generators base uiface --toy-weights benchmarks/toy-weights
  facelab bench speed --small
  facelab bench ppfr --train-data /data/faces_emore --eval-bins lfw.bin cfp_fp.bin agedb_30.bin
  facelab bench templates --train-data /data/casia_folders --eval-bins lfw.bin --preset paper
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="facelab bench",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("suite", choices=sorted(SUITES))
    p.add_argument("--out", default=None, help="output folder (default results/<suite>)")
    p.add_argument("--small", action="store_true", help="reduced sizes (for tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--methods",
        nargs="*",
        default=None,
        metavar="METHOD",
        help=f"method packages to run (quick/ppfr; default: {' '.join(PPFR_METHODS)}; "
        "give the flag with no names to run none)",
    )
    p.add_argument(
        "--families",
        nargs="*",
        default=None,
        metavar="FAMILY",
        help="quick only: family sections to add after privacy and templates (default: all: "
        f"{' '.join(_family_keys())}; give the flag with no names to run none)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress lines or bars")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per process (default: 1 for quick, whose tiny models gain "
        "little from more and whose threads would spin against its worker process; torch's "
        "default, one per core, for the other suites). Results are reproducible for a fixed "
        "seed, thread count and --jobs",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="quick only: processes; with 2 or more the method packages run in worker "
        "processes beside the baseline/templates/attacks (default: min(2, CPUs available))",
    )
    synth = p.add_argument_group("synth (and the quick suite's synthesis section)")
    synth.add_argument(
        "--toy-weights",
        default=None,
        metavar="DIR",
        help="folder of the generators' toy weights (default: $FACELAB_TOY_WEIGHTS, else the "
        "repository's benchmarks/toy-weights)",
    )
    synth.add_argument(
        "--generators", nargs="+", default=None, metavar="NAME", help="generators to compare"
    )
    full = p.add_argument_group(
        "ppfr / templates (real data; none given: toy data; synth: real baseline and .bin sets)"
    )
    full.add_argument(
        "--train-data",
        default=None,
        help="training data: a folder of aligned identity folders, or a folder holding "
        "insightface's train.rec/train.idx",
    )
    full.add_argument(
        "--eval-bins", nargs="+", default=None, metavar="BIN", help="insightface .bin sets"
    )
    full.add_argument(
        "--preset",
        default=None,
        help="recipe preset of every method (default: paper on real data, toy on toy data)",
    )
    full.add_argument("--max-steps", type=int, default=None, help="override: training steps")
    full.add_argument("--batch-size", type=int, default=None, help="override: batch size")
    full.add_argument(
        "--image-size", type=int, default=None, help="override: image side (must match the data)"
    )
    full.add_argument(
        "--attack-steps", type=int, default=None, help="override: inversion attack steps"
    )
    return p


def main(argv: Sequence[str] = ()) -> int:
    """Run a benchmark suite and write results/<suite>/report.md."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    kwargs: dict = {
        "small": args.small,
        "seed": args.seed,
        "out": Path(args.out or f"results/{args.suite}"),
        "progress": not args.no_progress,
    }
    if args.methods is not None:
        if args.suite not in ("quick", "ppfr"):
            parser.error(f"--methods applies to the quick and ppfr suites, not {args.suite}")
        kwargs["methods"] = tuple(args.methods)
    if args.suite in FULL_SUITES:
        if args.eval_bins and not args.train_data:
            parser.error(
                "--eval-bins given without --train-data PATH (aligned identity folders or a "
                "folder with train.rec/train.idx); give both, or neither for toy data"
            )
        if args.train_data and not args.eval_bins:
            parser.error(
                f"the {args.suite} suite on real data needs --eval-bins a.bin [b.bin ...] too; "
                "give both, or neither for toy data"
            )
        for name in _FULL_ONLY:
            kwargs[name] = getattr(args, name)
    elif args.suite == "synth":
        given = [
            f"--{n.replace('_', '-')}"
            for n in _FULL_ONLY
            if n not in ("train_data", "eval_bins") and _given(args, n, parser)
        ]
        if given:
            parser.error(f"{', '.join(given)} apply to the ppfr and templates suites only")
        kwargs["train_data"] = args.train_data
        kwargs["eval_bins"] = tuple(args.eval_bins or ())
    else:
        given = [f"--{n.replace('_', '-')}" for n in _FULL_ONLY if _given(args, n, parser)]
        if given:
            parser.error(f"{', '.join(given)} apply to the ppfr and templates suites only")
    synth_opts = {"toy_weights": args.toy_weights, "generators": args.generators}
    if any(v is not None for v in synth_opts.values()):
        if args.suite not in ("synth", "quick"):
            parser.error(f"--toy-weights / --generators apply to synth and quick, not {args.suite}")
        if args.generators is not None:
            from facelab.benchmarks.generators import GENERATORS

            bad = [g for g in args.generators if g not in GENERATORS]
            if bad:
                parser.error(f"--generators: unknown {bad}; valid: {sorted(GENERATORS)}")
            kwargs["generators"] = tuple(args.generators)
        if args.toy_weights is not None:
            kwargs["toy_weights"] = args.toy_weights
    if args.families is not None:
        if args.suite != "quick":
            parser.error(f"--families applies to the quick suite only, not {args.suite}")
        bad = [f for f in args.families if f not in _family_keys()]
        if bad:
            parser.error(f"--families: unknown {bad}; valid: {list(_family_keys())}")
        kwargs["families"] = tuple(args.families)
    if args.jobs is not None:
        if args.suite != "quick":
            parser.error(f"--jobs applies to the quick suite only, not {args.suite}")
        if args.jobs < 1:
            parser.error(f"--jobs: expected a positive integer, got {args.jobs}")
    if args.suite == "quick":
        kwargs["jobs"] = args.jobs if args.jobs is not None else default_jobs()
    threads = args.threads if args.threads is not None else (1 if args.suite == "quick" else None)
    if threads is not None:
        if threads < 1:
            parser.error(f"--threads: expected a positive integer, got {threads}")
        import torch

        torch.set_num_threads(threads)
    from facelab.core.cli import bad_input_exit

    try:
        result = get_suite(args.suite)(**kwargs)
    except Exception as err:
        return bad_input_exit(f"facelab bench {args.suite}", err)
    path = result.write(kwargs["out"])
    print(result.table())
    if result.failed:
        print(f"\nFAILED: {', '.join(result.failed)} (see the rows marked failed)", file=sys.stderr)
    print(f"\nreport written to {path}")
    return 1 if result.failed else 0


def _family_keys() -> tuple[str, ...]:
    from facelab.benchmarks.families import FAMILIES

    return tuple(FAMILIES)


def default_jobs() -> int:
    """min(2, CPUs this process may run on): the quick suite's method workers + itself."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(2, cpus or 1))


def _given(args: argparse.Namespace, name: str, parser: argparse.ArgumentParser) -> bool:
    return getattr(args, name) != parser.get_default(name)
