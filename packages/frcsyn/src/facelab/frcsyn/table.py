"""The cross-dataset table: several training sets, one recipe, one FRCSyn table.

Each named dataset (identity folders, an index file, a RecordIO folder or a generator's
manifest; e.g. the base generator's, UIFace's, SteerFace's and MorphFace's outputs at equal
size) trains the same recognizer (same recipe, same seed) and is scored on the same evaluation
sets; the real-data baseline (real toyfaces of the first dataset's size in the toy edition, or
a real training set such as CASIA-WebFace) is trained the same way and gives every row its GAP.
This module imports no generator: making the datasets is the benchmarks' job.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facelab.core.errors import RangeError
from facelab.frcsyn.evalsets import PairSet
from facelab.frcsyn.leaderboard import LeaderboardRow, columns, leaderboard_row
from facelab.frcsyn.metrics import EvalConfig
from facelab.frcsyn.protocol import (
    TOYFACES,
    EntryResult,
    RecipeConfig,
    is_main_process,
    train_and_evaluate,
)
from facelab.frcsyn.sources import count_source
from facelab.frcsyn.subtasks import get_subtask
from facelab.frcsyn.toy import ToyEditionConfig

BASELINE_NAME = "real (baseline)"


@dataclass
class TableConfig:
    """``facelab frcsyn table``: one recipe on each named training set, baseline and GAP."""

    datasets: tuple[str, ...] = ()
    """NAME=PATH of each training set (identity folders, index, RecordIO, manifest)"""
    baseline: str | None = TOYFACES
    """'toyfaces' (real toyfaces as large as the first dataset), a real training set, or None"""
    bins: tuple[str, ...] = ()
    """evaluation .bin sets ('path' or 'name=path')"""
    pairs: tuple[str, ...] = ()
    """evaluation pair lists ('path' or 'name=path')"""
    toy: ToyEditionConfig = field(default_factory=ToyEditionConfig)
    """the toy edition's sets, used when no --bins/--pairs are given"""
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/frcsyn-table"
    require_equal_size: bool = False


def table_presets() -> dict[str, TableConfig]:
    """The run presets' recipes: ``toy`` (real-toyfaces baseline) and ``paper`` (no baseline
    unless ``--baseline`` names a real training set)."""
    from facelab.frcsyn.protocol import run_presets

    out = {}
    for k, v in run_presets().items():
        out[k] = TableConfig(
            baseline=TOYFACES if k == "toy" else None,
            toy=v.toy,
            recipe=v.recipe,
            eval=v.eval,
            output_dir=f"runs/frcsyn-table-{k}",
        )
    return out


@dataclass
class CrossDatasetTable:
    """Every dataset's results plus the baseline's; rendered per task."""

    entries: list[EntryResult]
    baseline: EntryResult | None
    sets: list[str]
    sd_ddof: int = 0
    notes: list[str] = field(default_factory=list)

    def rows(self, subtask: str = "2.1") -> list[LeaderboardRow]:
        """Leaderboard rows of the baseline (first) and every dataset for ``subtask``'s task."""
        st = get_subtask(subtask)
        base = None if self.baseline is None else self.baseline.results
        out = []
        for e in ([self.baseline] if self.baseline is not None else []) + self.entries:
            out.append(leaderboard_row(st, e.name, e.results, base, sd_ddof=self.sd_ddof))
        return out

    def markdown(self, task: int = 2) -> str:
        """``Dataset | images | identities | <accuracy per set> | <the task's columns>``."""
        st = get_subtask(f"{task}.1")
        task_cols = columns(task)[1:]
        head = [
            "Dataset",
            "images",
            "identities",
            *[f"{s} acc. [%]" for s in self.sets],
            *task_cols,
        ]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        entries = ([self.baseline] if self.baseline is not None else []) + self.entries
        for e, row in zip(entries, self.rows(st.id)):
            ids = "?" if e.num_identities is None else f"{e.num_identities:,}"
            accs = [f"{100 * e.results[s].accuracy:.2f}" for s in self.sets]
            lines.append(
                "| "
                + " | ".join([e.name, f"{e.num_images:,}", ids, *accs, *row.cells()[1:]])
                + " |"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sets": self.sets,
            "sd_ddof": self.sd_ddof,
            "baseline": None if self.baseline is None else self.baseline.to_dict(self.sd_ddof),
            "entries": [e.to_dict(self.sd_ddof) for e in self.entries],
            "rows": {str(t): [r.to_dict()["row"] for r in self.rows(f"{t}.1")] for t in (1, 2)},
            "notes": self.notes,
        }


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "dataset"


def cross_dataset_table(
    datasets: Mapping[str, str | Path],
    eval_sets: Sequence[PairSet],
    *,
    recipe: RecipeConfig,
    eval_cfg: EvalConfig | None = None,
    baseline: str | Path | None = TOYFACES,
    output_dir: str | Path = "runs/frcsyn-table",
    require_equal_size: bool = False,
) -> CrossDatasetTable | None:
    """Train ``recipe`` on every named dataset and on the baseline; score all on ``eval_sets``.

    ``baseline``: ``'toyfaces'`` (real toyfaces as large as the first dataset), a real training
    set path, or None (no GAP). Datasets of different sizes are allowed (a note says so) unless
    ``require_equal_size``. Under ``accelerate launch`` only the main process returns the table
    (the others train and return None).
    """
    if not datasets:
        raise RangeError("datasets: expected at least one named training set")
    if not eval_sets:
        raise RangeError("eval_sets: expected at least one evaluation set")
    eval_cfg = eval_cfg or EvalConfig()
    if recipe.image_size != eval_sets[0].image_size:
        raise RangeError(
            f"eval sets are {eval_sets[0].image_size} px, the recipe trains at {recipe.image_size} px"
        )
    out = Path(output_dir)
    counts = {name: count_source(p) for name, p in datasets.items()}
    sizes = {name: c.num_images for name, c in counts.items()}
    notes: list[str] = []
    if len(set(sizes.values())) > 1:
        msg = "datasets differ in size: " + ", ".join(f"{n} {v:,}" for n, v in sizes.items())
        if require_equal_size:
            raise RangeError(msg + " (equal sizes required)")
        notes.append(msg + "; compare rows with care")
    slugs = [_slug(n) for n in datasets]
    if len(set(slugs)) != len(slugs):
        raise RangeError(f"dataset names must differ after making them folder names: {slugs}")
    entries = []
    for (name, path), slug in zip(datasets.items(), slugs):
        entries.append(
            train_and_evaluate(
                name, [str(path)], recipe, eval_sets, eval_cfg, out / slug, counts=[counts[name]]
            )
        )
    base = None
    if baseline is not None:
        first = entries[0]
        size = (first.num_images, int(first.num_identities or 1))
        base = train_and_evaluate(
            BASELINE_NAME, [str(baseline)], recipe, eval_sets, eval_cfg, out / "baseline",
            toy_size=size,
        )  # fmt: skip
        if str(baseline) == TOYFACES:
            notes.append(
                f"baseline: real toyfaces, {size[0]:,} images of {size[1]:,} people (the size of "
                f"{first.name})"
            )
    if not is_main_process():
        return None
    table = CrossDatasetTable(entries, base, [s.name for s in eval_sets], eval_cfg.sd_ddof, notes)
    from facelab.core.recipe import write_json

    write_json(out / "table.json", table.to_dict() | {"recipe": dataclasses.asdict(recipe)})
    (out / "table.md").write_text(
        "## Task 1 (bias: TO = AVG - SD over demographic groups)\n\n"
        + (
            table.markdown(1)
            if any(r.groups for r in entries[0].results.values())
            else "(no demographic set)"
        )
        + "\n\n## Task 2 (overall: AVG over sets)\n\n"
        + table.markdown(2)
        + "\n"
        + "".join(f"\n- {n}" for n in notes)
        + "\n"
    )
    return table
