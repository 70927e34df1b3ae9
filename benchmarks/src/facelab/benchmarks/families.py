"""Family sections: what one family of systems (synthesis, tokenizer, iris, federated learning)
contributes to a report, and the per-family suites built from them.

A family runner is a function ``run(*, level, seed, workdir, out, progress) -> FamilySection``
(``level``: ``"quick"`` for the quick suite, ``"suite"`` for the family's own suite with fuller
settings, ``"small"`` for tests). It calls the method packages' own evaluation functions and
only arranges their numbers: a package that is not installed gives a row with status
``not installed`` (never a failure); a package that raises gives a ``failed: <error>`` row and
the section lists it in ``failed``.

Runners live in ``facelab.benchmarks.family_<key>`` and are named in :data:`FAMILIES`; they are
imported on use, so one family's dependencies never slow another. :func:`run_suite` makes a
family's own suite (``facelab bench synth|tokenizer|iris|fl``) from its section; the quick suite
adds every family's section at level ``quick``.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facelab.core.errors import UnknownNameError

#: family key -> (section title, "module:function" of its runner); quick runs them in this order
FAMILIES: dict[str, tuple[str, str]] = {
    "synth": ("Synthetic face data", "facelab.benchmarks.family_synth:run"),
    "tokenizer": ("Image tokenizer", "facelab.benchmarks.family_tokenizer:run"),
    "iris": ("Iris recognition", "facelab.benchmarks.family_iris:run"),
    "fl": ("Federated learning", "facelab.benchmarks.family_fl:run"),
}
LEVELS = ("quick", "suite", "small")

NOT_INSTALLED = "not installed"


@dataclass
class Table:
    """One markdown table of a section: ``columns`` are ``(row key, header)`` pairs."""

    caption: str
    columns: list[tuple[str, str]]
    rows: list[dict[str, Any]]

    def markdown(self) -> str:
        from facelab.benchmarks.report import markdown_table

        keys = [k for k, _ in self.columns]
        return markdown_table(keys, self.rows, dict(self.columns))


@dataclass
class FamilySection:
    """A family's part of a report.

    ``summary``: one or two sentences for the report's first section (what the numbers mean);
    ``status``: ``ok``, ``partial`` (some packages missing or failed), ``not installed`` or
    ``failed``; ``tables`` / ``text`` / ``plots`` (PNG names under the report's folder) / ``notes``
    make the section; ``failed`` lists the parts that raised (the suite exits non-zero);
    ``data`` goes to results.json.
    """

    key: str
    title: str
    status: str = "ok"
    summary: str = ""
    tables: list[Table] = field(default_factory=list)
    text: str = ""
    plots: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    def markdown(self) -> str:
        lines = [f"**Status:** {self.status}", ""]
        if self.summary:
            lines += [self.summary, ""]
        for t in self.tables:
            if t.caption:
                lines += [t.caption, ""]
            lines += [t.markdown(), ""]
        if self.text:
            lines += [self.text.rstrip(), ""]
        if self.notes:
            lines += [*[f"- {n}" for n in self.notes], ""]
        lines += [f"![{p}]({p})" for p in self.plots]
        return "\n".join(lines).rstrip() + "\n"

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "status": self.status,
            "summary": self.summary,
            "tables": [
                {"caption": t.caption, "columns": [k for k, _ in t.columns], "rows": t.rows}
                for t in self.tables
            ],
            "plots": self.plots,
            "notes": self.notes,
            "failed": self.failed,
            "settings": self.settings,
            "timings": self.timings,
            **({"data": self.data} if self.data else {}),
        }


def get_runner(key: str) -> Callable[..., FamilySection]:
    try:
        _, target = FAMILIES[key]
    except KeyError:
        raise UnknownNameError(f"unknown family {key!r}; valid: {sorted(FAMILIES)}") from None
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def run_family(
    key: str,
    *,
    level: str,
    seed: int,
    workdir: str | Path,
    out: str | Path,
    progress: bool,
    **options: Any,
) -> FamilySection:
    """Run one family; an exception outside the runner's own handling fails the section (the
    traceback's last line is in its notes), it never stops the suite."""
    if level not in LEVELS:
        raise UnknownNameError(f"level: expected one of {LEVELS}, got {level!r}")
    title = FAMILIES[key][0] if key in FAMILIES else key
    t0, c0 = time.perf_counter(), time.process_time()
    Path(workdir).mkdir(parents=True, exist_ok=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    try:
        section = get_runner(key)(
            level=level,
            seed=seed,
            workdir=Path(workdir),
            out=Path(out),
            progress=progress,
            **options,
        )
    except Exception as err:  # a bug in the runner itself: the section fails, the suite goes on
        import traceback

        section = FamilySection(
            key,
            title,
            status=f"failed: {one_line(err)}",
            summary=f"{title}: the benchmark failed ({one_line(err)}).",
            failed=[key],
            notes=[traceback.format_exc().strip().splitlines()[-1]],
        )
    section.timings.setdefault("wall_s", round(time.perf_counter() - t0, 2))
    section.timings.setdefault("cpu_s", round(time.process_time() - c0, 2))
    return section


def run_suite(
    key: str,
    *,
    small: bool = False,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
    **options: Any,
) -> Any:
    """``facelab bench <key>``: the family's section at level ``suite`` (``small``: level
    ``small``) as a :class:`~facelab.benchmarks.report.SuiteResult`: its first table is the
    report's table, its summary the first section, the rest of the section follows; work files
    go to ``out/work``. A family whose packages are absent gives a report that says so (status
    ``not installed``), not a failure."""
    from facelab.benchmarks.progress import Progress

    if key not in FAMILIES:
        raise UnknownNameError(f"unknown family {key!r}; valid: {sorted(FAMILIES)}")
    out = Path(out or f"results/{key}")
    level = "small" if small else "suite"
    prog = Progress(key, progress)
    title = FAMILIES[key][0]
    with prog.stage(f"{title} (level {level})") as record:
        section = run_family(
            key, level=level, seed=seed, workdir=out / "work", out=out, progress=progress, **options
        )
        record.status = section.status
    return section_result(key, section, prog.summary(), {"level": level, "seed": seed})


def section_result(
    suite: str, section: FamilySection, timings: dict[str, Any], settings: dict[str, Any]
) -> Any:
    from facelab.benchmarks.report import SuiteResult

    tables = section.tables or [Table("", [("status", "status")], [{"status": section.status}])]
    first, rest = tables[0], tables[1:]
    body = FamilySection(
        section.key,
        section.title,
        status=section.status,
        tables=rest,
        text=section.text,
        notes=[],
    ).markdown()
    sections = [(section.title, body)]
    return SuiteResult(
        suite=suite,
        columns=[k for k, _ in first.columns],
        headers=dict(first.columns),
        rows=first.rows,
        summary=f"**{section.title}** ({section.status}): {section.summary}",
        settings={**settings, **section.settings},
        notes=([first.caption] if first.caption else []) + section.notes,
        plots=section.plots,
        failed=section.failed,
        sections=sections,
        timings={**timings, "family": section.timings},
        extra={"section": section.as_dict()},
    )


# --------------------------------------------------------------------------------------------
# helpers for runners


def one_line(err: BaseException | str, limit: int = 300) -> str:
    text = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def installed(module: str) -> bool:
    """Whether ``module`` (e.g. ``facelab.ariba``) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_row(name: str, module: str, columns: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """A table row for a package that is not installed: every column n/a."""
    row: dict[str, Any] = {k: math.nan for k, _ in columns}
    row[columns[0][0]] = name
    row["status"] = f"{NOT_INSTALLED} ({module.replace('facelab.', 'facelab-')})"
    return row


def failed_row(name: str, err: BaseException | str, columns: Sequence[tuple[str, str]]) -> dict:
    row: dict[str, Any] = {k: math.nan for k, _ in columns}
    row[columns[0][0]] = name
    row["status"] = f"failed: {one_line(err)}"
    return row


def section_status(parts: Mapping[str, str]) -> str:
    """``ok`` when every part is ok, ``not installed`` when none is installed, ``failed`` when
    every installed part failed, else ``partial`` (with what is missing or failed)."""
    values = list(parts.values())
    if values and all(v == "ok" for v in values):
        return "ok"
    if not values or all(v.startswith(NOT_INSTALLED) for v in values):
        return NOT_INSTALLED
    if all(v.startswith("failed") or v.startswith(NOT_INSTALLED) for v in values):
        return "failed"
    bad = [f"{k} {v.split(':')[0]}" for k, v in parts.items() if v != "ok"]
    return "partial (" + ", ".join(bad) + ")"


def finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def pct(v: Any, digits: int = 1) -> str:
    return f"{100 * v:.{digits}f} %" if finite(v) else "n/a"


def fmt(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if finite(v) else "n/a"


def copy_plot(src: str | Path, out: Path, name: str) -> str | None:
    """Copy a PNG a package wrote into the report folder under ``name``; its name or None."""
    import shutil

    src = Path(src)
    if not src.is_file():
        return None
    shutil.copyfile(src, out / name)
    return name


def new_figure(width: float = 7.0, height: float = 4.0, cols: int = 1) -> tuple[Any, Any]:
    """A matplotlib Figure on an Agg canvas (no pyplot state) and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, cols, i + 1) for i in range(cols)]
    return fig, axes if cols > 1 else axes[0]


def save_figure(fig: Any, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    return path.name


def suite_synth(**kwargs: Any) -> Any:
    """``facelab bench synth``: every installed generator scored by FRCSyn's table."""
    return run_suite("synth", **kwargs)


def suite_tokenizer(**kwargs: Any) -> Any:
    """``facelab bench tokenizer``: GloTok's ablation."""
    return run_suite("tokenizer", **kwargs)


def suite_iris(**kwargs: Any) -> Any:
    """``facelab bench iris``: ImmerIris's NormFree / NormKeep vs the classical pipeline."""
    return run_suite("iris", **kwargs)


def suite_fl(**kwargs: Any) -> Any:
    """``facelab bench fl``: ARIBA and VFL-AFE."""
    return run_suite("fl", **kwargs)
