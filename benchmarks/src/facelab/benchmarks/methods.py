"""Calling the method packages: imported lazily, so a missing package is a "not built" row.

``run_method("duetface", ...)`` imports ``facelab.duetface.quick`` and calls its ``run_quick``.
A package (or its ``quick`` module, or ``run_quick``) that is absent gives a ``"not built"``
row; any exception raised while importing or running gives a ``"failed: <error>"`` row and the
outcome is marked failed (the suite finishes, then exits non-zero).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
