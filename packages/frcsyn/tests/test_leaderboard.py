"""Rows in the leaderboard's column order, tables ranked like the challenge's."""

import pytest

from facelab.frcsyn import (
    TASK1_COLUMNS,
    TASK2_COLUMNS,
    WINNERS_2ND_EDITION,
    TaskScores,
    leaderboard_table,
    row_from_scores,
)


def t1(avg, sd, fnmr=0.1, auc=0.95):
    return TaskScores(task=1, avg=avg, sd=sd, to=avg - sd, fnmr=fnmr, auc=auc)


def t2(avg, fnmr=0.1, auc=0.95):
    return TaskScores(task=2, avg=avg, fnmr=fnmr, auc=auc)


def test_columns_are_the_leaderboards():
    assert TASK1_COLUMNS == (
        "Team", "TO [%]", "AVG [%]", "SD [%]", "FNMR@FMR=1%", "AUC [%]", "GAP [%]"
    )  # fmt: skip
    assert TASK2_COLUMNS == ("Team", "AVG [%]", "FNMR@FMR=1%", "AUC [%]", "GAP [%]")
    for sub, w in WINNERS_2ND_EDITION.items():  # the anchors carry exactly these columns
        cols = TASK1_COLUMNS if sub.startswith("1.") else TASK2_COLUMNS
        assert list(w) == list(cols)
        if sub.startswith("1."):
            assert w["TO [%]"] == pytest.approx(w["AVG [%]"] - w["SD [%]"], abs=0.011)


def test_row_cells_and_markdown():
    row = row_from_scores("1.1", "gen-A", t1(0.9, 0.02, 0.25, 0.97), t1(0.95, 0.01))
    assert row.columns == TASK1_COLUMNS
    assert row.cells() == [
        "gen-A",
        "88.00",
        "90.00",
        "2.00",
        "25.00",
        "97.00",
        f"{100 * (94 - 88) / 88:.2f}",
    ]
    md = row.markdown().splitlines()
    assert md[0] == "| " + " | ".join(TASK1_COLUMNS) + " |"
    assert list(row.to_dict()["row"]) == list(TASK1_COLUMNS)
    row2 = row_from_scores("2.2", "gen-B", t2(0.8))
    assert row2.cells() == ["gen-B", "80.00", "10.00", "95.00", "n/a"]


def test_table_ranks_by_the_task_metric():
    rows = [
        row_from_scores("1.1", "low-sd", t1(0.90, 0.005)),  # TO 89.5
        row_from_scores("1.1", "high-avg", t1(0.92, 0.04)),  # TO 88.0 despite the higher AVG
    ]
    lines = leaderboard_table(rows).splitlines()
    assert lines[0].startswith("| Pos. | Team | TO [%]")
    assert lines[2].startswith("| 1 | low-sd") and lines[3].startswith("| 2 | high-avg")
    rows2 = [row_from_scores("2.1", "a", t2(0.90)), row_from_scores("2.1", "b", t2(0.92))]
    assert leaderboard_table(rows2).splitlines()[2].startswith("| 1 | b")
