"""Leaderboard rows in the challenge's column order, tables, and the published anchors.

Column order of the 2nd FRCSyn leaderboards (CVPR 2024):

* task 1 (bias mitigation): ``Pos. | Team | TO [%] | AVG [%] | SD [%] | FNMR@FMR=1% | AUC [%]
  | GAP [%]``
* task 2 (overall performance): ``Pos. | Team | AVG [%] | FNMR@FMR=1% | AUC [%] | GAP [%]``

FNMR@FMR=1% is printed in percent like the other columns. A single row has no position; a table
of rows ranks them by TO (task 1) or AVG (task 2), higher first.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from facelab.frcsyn.metrics import SetResult, TaskScores, gap, task_scores
from facelab.frcsyn.subtasks import SubTask, get_subtask

TASK1_COLUMNS: tuple[str, ...] = (
    "Team",
    "TO [%]",
    "AVG [%]",
    "SD [%]",
    "FNMR@FMR=1%",
    "AUC [%]",
    "GAP [%]",
)
TASK2_COLUMNS: tuple[str, ...] = ("Team", "AVG [%]", "FNMR@FMR=1%", "AUC [%]", "GAP [%]")


def columns(task: int) -> tuple[str, ...]:
    """The leaderboard's columns (without ``Pos.``) for task 1 or 2."""
    return TASK1_COLUMNS if task == 1 else TASK2_COLUMNS


@dataclass(frozen=True)
class LeaderboardRow:
    """One entry: ``values[column]`` in percent (GAP None when there is no baseline)."""

    subtask: SubTask
    team: str
    values: dict[str, float | None]
    scores: TaskScores | None = None
    baseline: TaskScores | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        return columns(self.subtask.task)

    @property
    def ranking(self) -> float:
        v = self.values["TO [%]" if self.subtask.task == 1 else "AVG [%]"]
        return float("-inf") if v is None else float(v)

    def cells(self) -> list[str]:
        out = [self.team]
        for c in self.columns[1:]:
            v = self.values.get(c)
            out.append("n/a" if v is None or not math.isfinite(v) else f"{v:.2f}")
        return out

    def markdown(self, header: bool = True) -> str:
        lines = []
        if header:
            lines += ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines.append("| " + " | ".join(self.cells()) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subtask": self.subtask.id,
            "task": self.subtask.task,
            "columns": list(self.columns),
            "row": dict(
                zip(self.columns, [self.team, *[self.values.get(c) for c in self.columns[1:]]])
            ),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def row_from_scores(
    subtask: str | SubTask, team: str, scores: TaskScores, baseline: TaskScores | None = None
) -> LeaderboardRow:
    """A row from task scores (fractions) and, for GAP, the real-data baseline's scores."""
    st = get_subtask(subtask)
    g = None if baseline is None else gap(100 * baseline.ranking, 100 * scores.ranking)
    values: dict[str, float | None] = {
        "AVG [%]": 100 * scores.avg,
        "FNMR@FMR=1%": 100 * scores.fnmr,
        "AUC [%]": 100 * scores.auc,
        "GAP [%]": g,
    }
    if st.task == 1:
        values["TO [%]"] = 100 * scores.to  # type: ignore[operator]
        values["SD [%]"] = 100 * scores.sd  # type: ignore[operator]
    return LeaderboardRow(st, team, values, scores, baseline)


def leaderboard_row(
    subtask: str | SubTask,
    team: str,
    results: Mapping[str, SetResult],
    baseline: Mapping[str, SetResult] | TaskScores | None = None,
    *,
    sd_ddof: int = 0,
) -> LeaderboardRow:
    """The entry's row: task scores of ``results`` and GAP against ``baseline`` (the same
    recipe on real data: its per-set results or its task scores)."""
    st = get_subtask(subtask)
    scores = task_scores(st.task, results, sd_ddof)
    base = baseline
    if base is not None and not isinstance(base, TaskScores):
        base = task_scores(st.task, base, sd_ddof)
    return row_from_scores(st, team, scores, base)


def leaderboard_table(rows: Sequence[LeaderboardRow], *, rank: bool = True) -> str:
    """Markdown table of rows of one task: ``Pos.`` first, best ranking first when ``rank``."""
    if not rows:
        return "(no rows)"
    task = rows[0].subtask.task
    if any(r.subtask.task != task for r in rows):
        from facelab.core.errors import RangeError

        raise RangeError("leaderboard_table: expected rows of one task")
    order = sorted(rows, key=lambda r: -r.ranking) if rank else list(rows)
    cols = ("Pos.", *columns(task))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for i, r in enumerate(order, start=1):
        lines.append("| " + " | ".join([str(i), *r.cells()]) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# published figures (real data, from the challenge and the papers; never computed here)

#: first place of each sub-task of the 2nd FRCSyn (CVPR 2024), as published on the challenge
#: site: column -> value in percent
WINNERS_2ND_EDITION: dict[str, dict[str, Any]] = {
    "1.1": {"Team": "ID R&D", "TO [%]": 96.73, "AVG [%]": 97.55, "SD [%]": 0.82,
            "FNMR@FMR=1%": 3.17, "AUC [%]": 99.57, "GAP [%]": -5.31},
    "1.2": {"Team": "ID R&D", "TO [%]": 96.73, "AVG [%]": 97.55, "SD [%]": 0.82,
            "FNMR@FMR=1%": 3.17, "AUC [%]": 99.57, "GAP [%]": -5.31},
    "1.3": {"Team": "ADMIS", "TO [%]": 96.50, "AVG [%]": 97.25, "SD [%]": 0.75,
            "FNMR@FMR=1%": 3.90, "AUC [%]": 99.72, "GAP [%]": -1.33},
    "2.1": {"Team": "OPDAI", "AVG [%]": 91.93, "FNMR@FMR=1%": 17.63, "AUC [%]": 97.30,
            "GAP [%]": 3.09},
    "2.2": {"Team": "Idiap-SynthDistill", "AVG [%]": 93.50, "FNMR@FMR=1%": 9.17,
            "AUC [%]": 97.17, "GAP [%]": -0.05},
    "2.3": {"Team": "K-IBS-DS", "AVG [%]": 95.42, "FNMR@FMR=1%": 9.49, "AUC [%]": 98.14,
            "GAP [%]": -2.15},
}  # fmt: skip

#: average verification accuracy [%] over LFW, CFP-FP, CPLFW, AgeDB and CALFW of IR-50 ArcFace
#: trained with the team protocol (the UIFace authors' FRCSyn entry, ADMIS, on TFace)
TEAM_PROTOCOL_ANCHORS: dict[str, float] = {
    "CASIA-WebFace (real)": 95.08,
    "IDiff-Face": 84.09,
    "DCFace": 89.94,
    "ADMIS (UIFace, 10K x 50)": 92.09,
}


def winner_row(subtask: str | SubTask) -> str:
    """The published first-place row of a sub-task, as a markdown row (real-data figures)."""
    st = get_subtask(subtask)
    w = WINNERS_2ND_EDITION[st.id]
    cells = [str(w["Team"])] + [f"{w[c]:.2f}" for c in columns(st.task)[1:]]
    return "| " + " | ".join(cells) + " |"
