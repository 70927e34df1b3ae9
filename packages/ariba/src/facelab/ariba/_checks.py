"""Config checks that the CLI can defer: tyro builds the config dataclasses while it parses,
and a check failing there would end in tyro's own multi-line box instead of the one-line
``facelab ariba: error: ...``. The CLI parses with checks deferred and runs ``validate_tree``
on what it got; library code always checks at construction."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from typing import Any

_DEFERRED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "ariba_checks_deferred", default=False
)


def checks_deferred() -> bool:
    return _DEFERRED.get()


@contextlib.contextmanager
def deferred_checks() -> Iterator[None]:
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def validate_tree(obj: Any) -> None:
    """``validate()`` every config dataclass in ``obj``, innermost first."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return
    for f in dataclasses.fields(obj):
        validate_tree(getattr(obj, f.name))
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()


def checked_command(fn: Any) -> Any:
    """A CLI command: its body runs with checks on again (tyro calls it inside the deferred
    parse), after ``validate_tree`` of its dataclass arguments."""
    import functools

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        token = _DEFERRED.set(False)
        try:
            for value in (*args, *kwargs.values()):
                validate_tree(value)
            return fn(*args, **kwargs)
        finally:
            _DEFERRED.reset(token)

    return run
