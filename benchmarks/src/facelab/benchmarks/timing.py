"""Timing helpers: warm up, repeat, report the median; sync CUDA around each call."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(
    fn: Callable[[], Any],
    repeat: int = 5,
    warmup: int = 1,
    device: torch.device | str | None = None,
) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_cpu_times(
    fns: list[Callable[[], Any]], repeat: int, warmup: int = 1
) -> list[float]:
    """Median CPU seconds of this process for each function, timed in turns (f0, f1, ..., f0,
    f1, ...): CPU time does not count the time a busy machine keeps the process waiting, and
    the turns let both sides of a ratio see the same machine state."""
    for _ in range(warmup):
        for f in fns:
            f()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for i, f in enumerate(fns):
            t0 = time.process_time()
            f()
            times[i].append(time.process_time() - t0)
    return [float(statistics.median(t)) for t in times]


def speed_row(
    bench: str, ours: str, ref: str, ours_s: float, ref_s: float, note: str
) -> dict[str, Any]:
    """One row of the speed table (``facelab.benchmarks.speed.COLUMNS``): rates of ours and
    the reference (per second) and their ratio."""
    return {
        "benchmark": bench,
        "ours": ours,
        "reference": ref,
        "ours/s": ours_s,
        "reference/s": ref_s,
        "speedup": ours_s / ref_s if ref_s > 0 else float("nan"),
        "note": note,
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024**2 if sys.platform == "darwin" else peak / 1024
