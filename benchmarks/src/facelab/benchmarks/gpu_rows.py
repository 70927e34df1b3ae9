"""Print speed rows one producer at a time, for the GPU check (``scripts/gpu_check.sh``).

The producers are those of the ``speed`` suite (``facelab.benchmarks.speed``): the core ones
(codec, trainer overhead, SlerpFace, the iresnet50 training step) and every ``<method>_bench.py``
module, found by file name. On a machine with CUDA the producers that have GPU rows add them
(each row: ours, the reference measured in the same run, the ratio)::

    python -m facelab.benchmarks.gpu_rows                        # the bench modules with GPU rows
    python -m facelab.benchmarks.gpu_rows --all-bench            # every <method>_bench module
    python -m facelab.benchmarks.gpu_rows --only codec slerpface # named producers
    python -m facelab.benchmarks.gpu_rows --resolve              # import each one, call nothing

Rows are computed at full size (``small=False``) unless ``--small``. The bench modules without
GPU rows time CPU work only; ``--all-bench`` runs them too (on the GPU machine's CPU). ``--resolve`` imports every
chosen producer and checks that its entry function exists, without running it (the GPU check's
CPU smoke mode). The exit status is 1 when a producer failed (a package it needs that is not
installed is listed as such and is not a failure).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

#: the core producers (label -> function of ``small``), in the order the GPU check prints them
CORE = ("codec", "trainer overhead", "slerpface", "iresnet50 training step")

#: the ``<method>_bench`` modules that add rows on CUDA (tests/test_gpu_check.py keeps this in
#: step with the modules' sources)
CUDA_BENCH = ("morphface", "synth", "uiface")


def _core(label: str, small: bool) -> Callable[[], list[dict[str, Any]]]:
    from facelab.benchmarks import speed

    if label == "codec":
        return lambda: speed.codec_compact(32 if small else 256, 2 if small else 5)
    if label == "iresnet50 training step":
        return lambda: speed.iresnet50_train_step(small)
    module, names = {
        "trainer overhead": ("facelab.benchmarks.trainer_overhead", ("run_trainer_overhead",)),
        "slerpface": ("facelab.benchmarks.slerpface_speed", ("run_slerpface_speed",)),
    }[label]
    fn = speed._resolve(module, names)
    return lambda: fn(small)


def producers(small: bool) -> dict[str, Callable[[], Callable[[], list[dict[str, Any]]]]]:
    """label -> a loader that imports the producer and returns its call (not yet run): the core
    producers, then each ``<method>_bench`` module labelled by its method."""
    from facelab.benchmarks import speed

    found: dict[str, Callable[[], Callable[[], list[dict[str, Any]]]]] = {
        label: (lambda label=label: _core(label, small)) for label in CORE
    }
    for label, module, names in speed._benchmark_functions(small):
        if module.endswith("_bench"):

            def load(module=module, names=names):
                fn = speed._resolve(module, names)
                return lambda: fn(small)

            found[label] = load
    return found


def cpu_bench() -> list[str]:
    """The ``<method>_bench`` labels without GPU rows."""
    from facelab.benchmarks import speed

    return [
        label
        for label, module, _ in speed._benchmark_functions(True)
        if module.endswith("_bench") and label not in CUDA_BENCH
    ]


def format_row(r: dict[str, Any]) -> str:
    return (
        f"{r['benchmark']} | {r['ours']} {r['ours/s']:,.1f}/s | {r['reference']} "
        f"{r['reference/s']:,.1f}/s | x{r['speedup']:.3g} | {r['note']}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    from facelab.core.cli import ArgumentParser

    p = ArgumentParser(prog="python -m facelab.benchmarks.gpu_rows", description=__doc__)
    p.add_argument(
        "--only",
        nargs="+",
        default=None,
        help=f"producer labels (core: {', '.join(CORE)}; methods: the <method> of each "
        f"<method>_bench.py); default: the bench modules with GPU rows ({', '.join(CUDA_BENCH)})",
    )
    p.add_argument("--all-bench", action="store_true", help="every <method>_bench module")
    p.add_argument("--small", action="store_true", help="the small sizes of `bench speed --small`")
    p.add_argument("--resolve", action="store_true", help="import each producer, run none")
    args = p.parse_args(argv)
    table = producers(args.small)
    if args.only is None:
        chosen = [
            label
            for label in table
            if label not in CORE and (args.all_bench or label in CUDA_BENCH)
        ]
    else:
        unknown = [label for label in args.only if label not in table]
        if unknown:
            p.error(f"--only: unknown producer(s) {unknown}; known: {list(table)}")
        chosen = list(args.only)
    import torch

    failed: list[str] = []
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    for label in chosen:
        t0 = time.perf_counter()
        try:
            call = table[label]()
        except ImportError as err:  # the package it measures is not installed
            print(f"-- {label}: not installed ({type(err).__name__}: {err})", flush=True)
            continue
        except Exception as err:
            print(f"-- {label}: FAILED to load ({type(err).__name__}: {err})", flush=True)
            failed.append(label)
            continue
        if args.resolve:
            print(f"-- {label}: resolved (not run)", flush=True)
            continue
        try:
            rows = call()
        except Exception as err:
            print(f"-- {label}: FAILED ({type(err).__name__}: {err})", flush=True)
            failed.append(label)
            continue
        for r in rows:
            print(format_row(r), flush=True)
        print(f"-- {label}: {len(rows)} rows, {time.perf_counter() - t0:.1f} s ({device})")
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
