"""Writing suite results: report.md (table, notes, settings, seeds, versions, machine, timings,
plots) and results.json (the same, machine-readable; NaN and infinities are written as null)."""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from facelab.core.cli import installed_packages


def _cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def format_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if v != v:  # NaN
            return "n/a"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.4g}"
    if v is None:
        return "n/a"
    return str(v).replace("|", "/").replace("\n", " ")


def markdown_table(
    columns: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    headers: Mapping[str, str] | None = None,
) -> str:
    """A markdown table of ``rows`` (dicts) over ``columns`` (keys); ``headers`` renames them."""
    names = [(headers or {}).get(c, c) for c in columns]
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(format_value(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def jsonable(obj: Any) -> Any:
    """Plain JSON values: NaN/inf -> None, tuples -> lists, paths and others -> str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, bool | int | str) or obj is None:
        return obj
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalars
        return jsonable(obj.item())
    return str(obj)


@dataclass
class SuiteResult:
    """What a suite returns; ``write(out_dir)`` renders report.md and results.json.

    ``failed`` lists the parts that raised (the CLI exits non-zero when it is not empty);
    ``summary``: the report's first section (a few lines saying what the results mean), before
    the table; ``sections`` are extra markdown sections ``(title, body)`` after the notes;
    ``extra`` goes to the JSON only.
    """

    suite: str
    columns: list[str]
    rows: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    sections: list[tuple[str, str]] = field(default_factory=list)
    timings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    def table(self) -> str:
        return markdown_table(self.columns, self.rows, self.headers)

    def write(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        machine = machine_info()
        versions = installed_packages()
        md = [f"# facelab bench {self.suite}", ""]
        if self.summary:
            md += ["## Summary", "", self.summary.rstrip(), ""]
            md += ["## Results", ""]
        md += [self.table(), ""]
        if self.failed:
            md += ["**Failed parts:** " + ", ".join(self.failed), ""]
        if self.notes:
            md += ["## Notes", "", *[f"- {n}" for n in self.notes], ""]
        for title, body in self.sections:
            md += [f"## {title}", "", body.rstrip(), ""]
        md += [
            "## Settings and seeds",
            "",
            "```json",
            json.dumps(jsonable(self.settings), indent=2),
            "```",
            "",
        ]
        if self.timings:
            md += ["## Timings", "", *_timing_lines(self.timings), ""]
        md += ["## Versions", "", *[f"- {k} {v}" for k, v in versions.items()], ""]
        md += ["## Machine", "", *[f"- {k}: {v}" for k, v in machine.items()], ""]
        if self.plots:
            md += ["## Plots", "", *[f"![{p}]({p})" for p in self.plots], ""]
        _atomic_write(out / "report.md", "\n".join(md))
        payload = {
            "suite": self.suite,
            **({"summary": self.summary} if self.summary else {}),
            "columns": self.columns,
            "headers": self.headers,
            "rows": self.rows,
            "failed": self.failed,
            "settings": self.settings,
            "notes": self.notes,
            "timings": self.timings,
            "versions": versions,
            "machine": machine,
            "plots": self.plots,
            **self.extra,
        }
        _atomic_write(out / "results.json", json.dumps(jsonable(payload), indent=2))
        return out / "report.md"


def _timing_lines(timings: Mapping[str, Any]) -> list[str]:
    lines = []
    if "wall_s" in timings:
        lines.append(
            f"- total: {timings['wall_s']:.1f} s wall, {timings.get('cpu_s', float('nan')):.1f} s "
            "CPU (this process, all threads)"
        )
    if "cpu_s_workers" in timings:
        lines.append(
            f"- worker processes (overlapping the main process): {timings['cpu_s_workers']:.1f} s "
            "CPU"
        )
    for s in timings.get("stages", []):
        where = ", worker process" if s.get("where") == "worker" else ""
        lines.append(
            f"- {s['stage']}: {s['wall_s']:.1f} s wall, {s['cpu_s']:.1f} s CPU "
            f"({s['status']}{where})"
        )
    for k, v in timings.items():
        if k not in ("wall_s", "cpu_s", "cpu_s_workers", "stages"):
            lines.append(f"- {k}: {v}")
    return lines


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
