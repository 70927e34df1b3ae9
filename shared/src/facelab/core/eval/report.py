"""Evaluation reports: one row per evaluated set, rendered as a markdown table or JSON.

Rates (accuracy, TAR, VAL, TPIR, CMC, EER ...) are stored as fractions in [0, 1] and shown in
percent in markdown; JSON keeps the raw numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facelab.core.eval.demographics import DemographicStats
from facelab.core.eval.identification import IdentificationResult
from facelab.core.eval.metrics import format_rate
from facelab.core.eval.verification import VerificationResult


def _plain(x: Any) -> Any:
    """JSON-safe values (numpy scalars/arrays, non-finite floats as strings, paths)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, np.generic):
        return _plain(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, Path):
        return str(x)
    return x


@dataclass
class EvalReport:
    """A table of results (one row per dataset) plus settings, plots and notes."""

    title: str = "facelab eval"
    rows: list[dict[str, Any]] = field(default_factory=list)
    rate_columns: set[str] = field(default_factory=set)
    settings: dict[str, Any] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    # ---- adding results
    def add_row(self, dataset: str, rates: dict[str, float] | None = None, **values: Any) -> None:
        """A row: ``rates`` are fractions shown in percent, ``values`` shown as they are."""
        row: dict[str, Any] = {"dataset": dataset}
        for k, v in (rates or {}).items():
            row[k] = float(v)
            self.rate_columns.add(k)
        row.update(values)
        self.rows.append(row)

    def add_verification(self, dataset: str, result: VerificationResult) -> None:
        rates = {"accuracy": result.accuracy, "accuracy_std": result.accuracy_std}
        if result.far_target is not None:
            tag = format_rate(result.far_target)
            rates[f"VAL@FAR={tag}"] = result.val
        self.add_row(dataset, rates, pairs=result.n_pairs, threshold=round(result.threshold, 4))
        self.details[dataset] = result.to_dict()

    def add_tar_at_far(self, dataset: str, tars: dict[float, float], **values: Any) -> None:
        self.add_row(dataset, {f"TAR@FAR={format_rate(f)}": t for f, t in tars.items()}, **values)
        self.details[dataset] = {"tar_at_far": {repr(f): t for f, t in tars.items()}, **values}

    def add_identification(self, dataset: str, result: IdentificationResult) -> None:
        rates = {f"rank-{k}": v for k, v in result.cmc.items()}
        rates.update({f"TPIR@FPIR={format_rate(f)}": v for f, v in result.tpir.items()})
        self.add_row(dataset, rates, mated=result.n_mated, nonmated=result.n_nonmated)
        self.details[dataset] = result.to_dict()

    def add_demographics(self, dataset: str, stats: DemographicStats) -> None:
        for name, g in stats.groups.items():
            rates = {"accuracy": g.accuracy, "accuracy_std": g.verification.accuracy_std}
            rates.update({f"TAR@FAR={format_rate(f)}": t for f, t in g.tar.items()})
            self.add_row(f"{dataset}/{name}", rates, pairs=g.n_pairs)
        self.add_row(
            f"{dataset} (groups)",
            {"mean": stats.mean, "std": stats.std, "TO": stats.to},
            SER=round(stats.ser, 4) if math.isfinite(stats.ser) else stats.ser,
        )
        self.details[dataset] = stats.to_dict()

    # ---- rendering
    @property
    def columns(self) -> list[str]:
        cols: list[str] = []
        for r in self.rows:
            for k in r:
                if k not in cols:
                    cols.append(k)
        return cols

    def _fmt(self, col: str, v: Any) -> str:
        if v is None or v == "":
            return ""
        if isinstance(v, (float, np.floating)):
            if not math.isfinite(v):
                return "n/a" if v != v else str(v)
            if col in self.rate_columns:
                return f"{100 * v:.2f}"
            return f"{v:.4g}"
        return str(v)

    def table(self) -> str:
        cols = self.columns
        if not cols:
            return "(no results)"
        head = [f"{c} (%)" if c in self.rate_columns else c for c in cols]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(cols)]
        for r in self.rows:
            lines.append("| " + " | ".join(self._fmt(c, r.get(c, "")) for c in cols) + " |")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        parts = [f"# {self.title}", "", self.table()]
        if self.settings:
            parts += ["", "## Settings", ""]
            parts += [f"- {k}: {v}" for k, v in self.settings.items()]
        if self.plots:
            parts += ["", "## Plots", ""]
            parts += [f"![{k}]({Path(v).name})" for k, v in self.plots.items()]
        if self.notes:
            parts += ["", "## Notes", ""]
            parts += [f"- {n}" for n in self.notes]
        return "\n".join(parts) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return _plain(
            {
                "title": self.title,
                "columns": self.columns,
                "rate_columns": sorted(self.rate_columns),
                "rows": self.rows,
                "settings": self.settings,
                "plots": self.plots,
                "notes": self.notes,
                "details": self.details,
            }
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``report.md`` and ``report.json`` into ``out_dir``; returns both paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        md, js = out / "report.md", out / "report.json"
        md.write_text(self.to_markdown())
        js.write_text(self.to_json())
        return md, js
