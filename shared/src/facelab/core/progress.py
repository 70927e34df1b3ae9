"""Progress bars that read well in a terminal and in a log.

On a terminal, ``progress_bar`` is a plain tqdm bar that rewrites one line. When the stream is
not a terminal (CI, a file, ``| tee``), rewriting a line thousands of times leaves one enormous
line of carriage returns in the log; there the bar prints a whole line at most every
``FACELAB_PROGRESS_INTERVAL`` seconds (default 10) and once at the end.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm.auto import tqdm

#: seconds between two progress lines when the output is not a terminal
DEFAULT_LOG_INTERVAL = 10.0
INTERVAL_ENV = "FACELAB_PROGRESS_INTERVAL"


def log_interval() -> float:
    """Seconds between progress lines in a log (``FACELAB_PROGRESS_INTERVAL``, default 10)."""
    raw = os.environ.get(INTERVAL_ENV)
    if raw is None or raw == "":
        return DEFAULT_LOG_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also catches NaN
        from facelab.core.errors import FacelabError

        raise FacelabError(f"{INTERVAL_ENV}: expected seconds >= 0, got {raw!r}")
    return value


class _LineStream:
    """A file-like sink that turns tqdm's ``\\r``-rewrites into one newline-ended line each."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line:
            self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return False


def is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # a closed stream
        return False


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    file: TextIO | None = None,
    **kwargs: Any,
) -> tqdm:
    """``tqdm(iterable, **kwargs)`` that rewrites a line on a terminal and prints whole lines
    at most every :func:`log_interval` seconds elsewhere (``file`` defaults to stderr)."""
    stream = sys.stderr if file is None else file
    if kwargs.get("disable") or is_terminal(stream):
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.pop("dynamic_ncols", None)
    kwargs.setdefault("mininterval", log_interval())
    kwargs.setdefault("maxinterval", max(kwargs["mininterval"], 10.0) * 10)
    kwargs.setdefault("ncols", 100)
    kwargs.setdefault("ascii", True)
    return tqdm(iterable, file=_LineStream(stream), **kwargs)
