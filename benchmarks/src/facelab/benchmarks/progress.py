"""Progress lines for long suites: one line per stage with wall and CPU time since the start.

CPU time is this process's (all threads), so on a shared machine it says how much work a stage
did even when the wall clock mostly measured the neighbours.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO


def _clock(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m:d}:{s:02d}"


@dataclass
class StageTime:
    name: str
    wall_s: float
    cpu_s: float
    status: str = "ok"
    #: "main" (this process) or "worker" (a worker process, overlapping the main's stages)
    where: str = "main"

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.name,
            "wall_s": round(self.wall_s, 2),
            "cpu_s": round(self.cpu_s, 2),
            "status": self.status,
            "where": self.where,
        }


@dataclass
class Progress:
    """``with progress.stage("train baseline"): ...`` prints a start and an end line."""

    suite: str
    enabled: bool = True
    stream: TextIO | None = None
    stages: list[StageTime] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._wall0 = time.perf_counter()
        self._cpu0 = time.process_time()

    @property
    def wall_s(self) -> float:
        return time.perf_counter() - self._wall0

    @property
    def cpu_s(self) -> float:
        return time.process_time() - self._cpu0

    def log(self, message: str) -> None:
        if self.enabled:
            out = self.stream or sys.stderr
            print(
                f"[{self.suite} {_clock(self.wall_s)} | cpu {_clock(self.cpu_s)}] {message}",
                file=out,
                flush=True,
            )

    @contextmanager
    def stage(self, name: str) -> Iterator[StageTime]:
        record = StageTime(name, 0.0, 0.0)
        w0, c0 = time.perf_counter(), time.process_time()
        self.log(f">> {name}")
        try:
            yield record
        except BaseException:
            record.status = "failed"
            raise
        finally:
            record.wall_s = time.perf_counter() - w0
            record.cpu_s = time.process_time() - c0
            self.stages.append(record)
            self.log(
                f"<< {name}: {record.status} in {record.wall_s:.1f} s (cpu {record.cpu_s:.1f} s)"
            )

    def summary(self) -> dict[str, Any]:
        """Wall time, CPU time of this process (``cpu_s``) and of the worker processes'
        stages (``cpu_s_workers``, when there were any), and every stage."""
        out: dict[str, Any] = {"wall_s": round(self.wall_s, 2), "cpu_s": round(self.cpu_s, 2)}
        workers = [s.cpu_s for s in self.stages if s.where == "worker"]
        if workers:
            out["cpu_s_workers"] = round(sum(v for v in workers if v == v), 2)
        out["stages"] = [s.as_dict() for s in self.stages]
        return out
