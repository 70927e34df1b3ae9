"""Suite registry: a suite is a function ``run(*, small, seed, out, progress, **options)``
returning a ``SuiteResult`` (it writes its plots under ``out``; the caller writes the report)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from facelab.core.errors import UnknownNameError

#: suite name -> "module:function" (imported on use so one suite's deps never slow another)
SUITES: dict[str, str] = {
    "quick": "facelab.benchmarks.quick:run",
    "speed": "facelab.benchmarks.speed:run",
    "ppfr": "facelab.benchmarks.full:run_ppfr",
    "templates": "facelab.benchmarks.full:run_templates",
    "synth": "facelab.benchmarks.families:suite_synth",
    "tokenizer": "facelab.benchmarks.families:suite_tokenizer",
    "iris": "facelab.benchmarks.families:suite_iris",
    "fl": "facelab.benchmarks.families:suite_fl",
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
