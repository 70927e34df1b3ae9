"""Run a benchmark suite: facelab bench quick|speed|ppfr|templates."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from facelab.benchmarks.registry import SUITES, get_suite


def main(argv: Sequence[str] = ()) -> int:
    """Run a benchmark suite and write results/<suite>/report.md."""
    parser = argparse.ArgumentParser(prog="facelab bench", description=__doc__)
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("--out", default=None, help="output folder (default results/<suite>)")
    parser.add_argument("--small", action="store_true", help="reduced sizes (for tests)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(list(argv))
    result = get_suite(args.suite)(small=args.small, seed=args.seed)
    path = result.write(args.out or f"results/{args.suite}")
    print(result.table())
    print(f"\nreport written to {path}")
    return 0
