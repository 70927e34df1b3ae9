"""Writing suite results: report.md (markdown table + settings + machine), results.json."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from facelab.core.cli import installed_packages


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def markdown_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:  # NaN
                return "n/a"
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


@dataclass
class SuiteResult:
    suite: str
    columns: list[str]
    rows: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)

    def table(self) -> str:
        return markdown_table(self.columns, self.rows)

    def write(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        machine = machine_info()
        versions = installed_packages()
        md = [f"# facelab bench {self.suite}", "", self.table(), ""]
        if self.notes:
            md += ["## Notes", "", *[f"- {n}" for n in self.notes], ""]
        md += [
            "## Settings",
            "",
            "```json",
            json.dumps(self.settings, indent=2, default=str),
            "```",
            "",
        ]
        md += ["## Versions", "", *[f"- {k} {v}" for k, v in versions.items()], ""]
        md += ["## Machine", "", *[f"- {k}: {v}" for k, v in machine.items()], ""]
        if self.plots:
            md += ["## Plots", "", *[f"![{p}]({p})" for p in self.plots], ""]
        (out / "report.md").write_text("\n".join(md))
        payload = {
            "suite": self.suite,
            "columns": self.columns,
            "rows": self.rows,
            "settings": self.settings,
            "notes": self.notes,
            "versions": versions,
            "machine": machine,
            "plots": self.plots,
        }
        (out / "results.json").write_text(json.dumps(payload, indent=2, default=str))
        return out / "report.md"
