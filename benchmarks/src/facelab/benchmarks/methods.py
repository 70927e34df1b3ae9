"""Calling the method packages: imported lazily, so a missing package is a "not built" row.

``run_method("duetface", ...)`` imports ``facelab.duetface.quick`` and calls its ``run_quick``.
A package (or its ``quick`` module, or ``run_quick``) that is absent gives a ``"not built"``
row; any exception raised while importing or running gives a ``"failed: <error>"`` row and the
outcome is marked failed (the suite finishes, then exits non-zero).

``MethodRunner`` runs a list of methods either in this process, one after the other
(``jobs=1``), or in ``jobs - 1`` worker processes while this process does other work
(``jobs >= 2``): each method then gets a fresh spawned process (same torch thread count, no
state left by the suite or another method), so its numbers do not depend on the scheduling,
and a process that dies fails that method only.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import multiprocessing
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facelab.benchmarks.progress import Progress, StageTime
from facelab.benchmarks.rows import check_method_row, failed_row, not_built_row

#: the privacy-preserving recognition methods of the quick and ppfr suites, in table order
PPFR_METHODS: tuple[str, ...] = ("duetface", "partialface", "minusface")


@dataclass
class MethodOutcome:
    method: str
    rows: list[dict[str, Any]]
    status: str  # "ok" | "not built" | "failed"
    error: str | None = None
    traceback: str | None = field(default=None, repr=False)

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package is missing
        return False


def load_entry(method: str, function: str) -> tuple[Callable[..., Any] | None, str]:
    """``facelab.<method>.quick.<function>`` or ``(None, reason)`` when it is not built.

    An ``ImportError`` while importing counts as not built (the reason names it); other
    exceptions propagate.
    """
    package, module = f"facelab.{method}", f"facelab.{method}.quick"
    if not _module_exists(package):
        return None, f"package facelab-{method} is not installed"
    if not _module_exists(module):
        return None, f"{module} does not exist yet"
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        return None, f"importing {module} failed: {type(err).__name__}: {err}"
    fn = getattr(mod, function, None)
    if not callable(fn):
        return None, f"{module} has no {function}()"
    return fn, ""


def accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def run_method(
    method: str,
    *,
    function: str = "run_quick",
    log: Callable[[str], None] = print,
    **kwargs: Any,
) -> MethodOutcome:
    """Call ``facelab.<method>.quick.<function>(**kwargs)`` and validate its rows."""
    try:
        fn, reason = load_entry(method, function)
    except Exception as err:  # importing the module raised something else than ImportError
        log(f"{method}: import failed: {type(err).__name__}: {err}")
        return MethodOutcome(
            method, [failed_row(method, err)], "failed", str(err), traceback.format_exc()
        )
    if fn is None:
        log(f"{method}: not built ({reason})")
        return MethodOutcome(method, [not_built_row(method, reason)], "not built")
    if "workdir" in kwargs:
        Path(kwargs["workdir"]).mkdir(parents=True, exist_ok=True)
    try:
        rows = fn(**kwargs)
        if not isinstance(rows, list) or not rows:
            raise TypeError(
                f"{function} must return a non-empty list of row dicts, got {type(rows).__name__}"
            )
        checked = [check_method_row(r, method) for r in rows]
    except Exception as err:
        log(f"{method}: FAILED: {type(err).__name__}: {err}")
        return MethodOutcome(
            method, [failed_row(method, err)], "failed", str(err), traceback.format_exc()
        )
    return MethodOutcome(method, checked, "ok")


def _timed_job(
    method: str, threads: int, announce: bool, kwargs: dict[str, Any]
) -> tuple[MethodOutcome, float, float]:
    """``run_method`` with ``threads`` torch threads, timed (wall, CPU of this process)."""
    import torch

    torch.set_num_threads(threads)
    prog = Progress("quick worker", announce)
    w0, c0 = time.perf_counter(), time.process_time()
    with prog.stage(f"{method}: run_quick (worker process)") as record:
        outcome = run_method(method, log=prog.log, **kwargs)
        record.status = outcome.status
    return outcome, time.perf_counter() - w0, time.process_time() - c0


def _worker_main(conn: Any, *args: Any) -> None:
    """Entry of a spawned worker process: send ``_timed_job``'s result back through ``conn``."""
    try:
        conn.send(_timed_job(*args))
    finally:
        conn.close()


class MethodRunner:
    """Run ``facelab.<m>.quick.run_quick(**kwargs)`` for each method, in order.

    ``jobs=1``: in this process, when :meth:`results` is iterated. ``jobs >= 2``: started at
    construction, each method in its own spawned worker process (``torch.get_num_threads()``
    threads; its progress bars off, one line per method instead), at most ``jobs - 1`` at a
    time, so the caller's own work overlaps with theirs. A worker that dies (killed, out of
    memory) fails its method only. ``kwargs`` go to ``run_quick`` (``workdir`` becomes
    ``workdir_root / method``); ``reporter`` prints the stage lines. Use as a context manager:
    on exit, methods not started are cancelled and running workers are terminated.
    """

    def __init__(
        self,
        methods: Sequence[str],
        *,
        jobs: int = 1,
        reporter: Progress | None = None,
        workdir_root: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            from facelab.core.errors import RangeError

            raise RangeError(f"jobs: expected a positive integer, got {jobs!r}")
        self.methods = list(methods)
        self.kwargs = kwargs
        self.workdir_root = None if workdir_root is None else Path(workdir_root)
        self.reporter = reporter or Progress("quick", False)
        self.jobs = jobs
        self.pool: ThreadPoolExecutor | None = None
        self.futures: dict[str, Future] = {}
        self._procs: set[Any] = set()
        self._lock = threading.Lock()
        self._closing = False
        if jobs > 1 and self.methods:
            import torch

            workers = min(jobs - 1, len(self.methods))
            # threads only wait on the worker processes; the work happens in the processes
            self.pool = ThreadPoolExecutor(workers, thread_name_prefix="facelab-bench")
            threads = torch.get_num_threads()
            announce = bool(kwargs.get("progress", True))
            for m in self.methods:
                kw = {**self._kwargs(m), "progress": False}
                self.futures[m] = self.pool.submit(self._in_process, m, threads, announce, kw)
            self.reporter.log(
                f"methods {', '.join(self.methods)}: running in worker processes, {workers} at "
                "a time"
            )

    def _kwargs(self, method: str) -> dict[str, Any]:
        if self.workdir_root is None:
            return dict(self.kwargs)
        return {**self.kwargs, "workdir": self.workdir_root / method}

    def _in_process(
        self, method: str, threads: int, announce: bool, kwargs: dict[str, Any]
    ) -> tuple[MethodOutcome, float, float]:
        """Run one method in a fresh spawned process and wait for its result."""
        ctx = multiprocessing.get_context("spawn")
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_worker_main,
            args=(send, method, threads, announce, kwargs),
            name=f"facelab-bench-{method}",
        )
        with self._lock:
            if self._closing:
                raise RuntimeError("the suite stopped before this method started")
            proc.start()
            self._procs.add(proc)
        send.close()
        try:
            try:
                return recv.recv()
            except EOFError:  # the process ended without sending: it died
                proc.join()
                raise RuntimeError(
                    f"the worker process running {method} exited with code {proc.exitcode} "
                    "before returning rows"
                ) from None
        finally:
            recv.close()
            proc.join()
            with self._lock:
                self._procs.discard(proc)

    def __enter__(self) -> MethodRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Cancel the methods not started, terminate running workers, wait for the threads."""
        if self.pool is None:
            return
        with self._lock:
            self._closing = True
            for proc in self._procs:
                if proc.is_alive():
                    proc.terminate()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pool = None

    def results(self) -> Iterator[tuple[MethodOutcome, StageTime]]:
        """(outcome, stage time) per method, in order; a worker that died is a failed row."""
        prog = self.reporter
        for m in self.methods:
            name = f"{m}: run_quick"
            if m not in self.futures:
                with prog.stage(name) as record:
                    outcome = run_method(m, log=prog.log, **self._kwargs(m))
                    record.status = outcome.status
                yield outcome, prog.stages[-1]
                continue
            try:
                outcome, wall, cpu = self.futures[m].result()
            except Exception as err:
                prog.log(f"{m}: worker FAILED: {type(err).__name__}: {err}")
                outcome = MethodOutcome(
                    m, [failed_row(m, err)], "failed", str(err), traceback.format_exc()
                )
                wall = cpu = float("nan")
            record = StageTime(name, wall, cpu, outcome.status, where="worker")
            prog.stages.append(record)
            prog.log(
                f"<< {name}: {outcome.status} in {wall:.1f} s (cpu {cpu:.1f} s, worker process)"
            )
            yield outcome, record
