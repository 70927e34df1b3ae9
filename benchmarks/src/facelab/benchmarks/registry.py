"""Suite registry: a suite is a function ``(cfg: BenchConfig) -> SuiteResult``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from facelab.core.errors import UnknownNameError

#: suite name -> "module:function" (imported on use so one suite's deps never slow another)
SUITES: dict[str, str] = {
    "speed": "facelab.benchmarks.speed:run",
}


def get_suite(name: str) -> Callable[..., Any]:
    try:
        target = SUITES[name]
    except KeyError:
        raise UnknownNameError(f"unknown suite {name!r}; valid suites: {sorted(SUITES)}") from None
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def run_suite(name: str, **kwargs: Any) -> Any:
    return get_suite(name)(**kwargs)
