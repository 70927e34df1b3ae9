"""progress_bar: a rewritten line on a terminal, whole lines at a bounded rate in a log."""

from __future__ import annotations

import io

import pytest

from facelab.core.errors import FacelabError
from facelab.core.progress import INTERVAL_ENV, log_interval, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_output_is_whole_lines_at_a_bounded_rate(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "3600")
    out = io.StringIO()
    for _ in progress_bar(range(5000), file=out, desc="steps"):
        pass
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # the first print and the final one; nothing in between within an hour's interval
    assert 1 <= len(lines) <= 2, lines
    assert text.endswith("\n")
    assert "5000/5000" in lines[-1] and lines[-1].startswith("steps")


def test_log_output_with_zero_interval_prints_each_refresh_on_its_own_line(monkeypatch):
    monkeypatch.setenv(INTERVAL_ENV, "0")
    out = io.StringIO()
    bar = progress_bar(total=4, file=out, miniters=1, desc="x")
    for _ in range(4):
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    counts = [line.split("|")[-1].split()[0] if "|" in line else line for line in lines]
    assert len(lines) >= 5, lines  # 0/4 .. 4/4, each a line of its own
    assert any("4/4" in c for c in counts)


def test_terminal_output_rewrites_one_line():
    out = _Terminal()
    for _ in progress_bar(range(50), file=out, mininterval=0, miniters=1):
        pass
    assert "\r" in out.getvalue()


def test_disabled_bar_writes_nothing():
    out = io.StringIO()
    for _ in progress_bar(range(10), file=out, disable=True):
        pass
    assert out.getvalue() == ""


@pytest.mark.parametrize("raw", ["-1", "soon", "nan"])
def test_bad_interval_is_an_error(monkeypatch, raw):
    monkeypatch.setenv(INTERVAL_ENV, raw)
    with pytest.raises(FacelabError, match=INTERVAL_ENV):
        log_interval()
