"""FRCSyn: the synthetic-data face recognition challenge protocol (2nd edition, CVPR 2024, and
the 2nd FRCSyn-onGoing), as a package.

* sub-tasks as data (``SUBTASKS``, ``get_subtask``) and the training-data checker
  (``check_subtask``, ``count_source``, ``read_manifest``);
* the challenge's evaluation (``evaluate_model``, ``evaluate_embeddings``, ``task1_scores``,
  ``task2_scores``, ``gap``) and leaderboard rows in its column order (``leaderboard_row``);
* the team protocol runner (``RunConfig``, ``run_presets``, ``run``) and the cross-dataset
  table (``cross_dataset_table``);
* the toy edition (``toy_eval_sets``, ``write_toy_standin``) and the leakage check
  (``leakage_check``).

Training and the toy edition pull in the trainer and toyfaces; they load on first use.
"""

from __future__ import annotations

from facelab.frcsyn.check import CheckResult, SubtaskError, check_subtask
from facelab.frcsyn.evalsets import PairSet, from_bin, load_eval_sets, read_pair_list
from facelab.frcsyn.leaderboard import (
    TASK1_COLUMNS,
    TASK2_COLUMNS,
    TEAM_PROTOCOL_ANCHORS,
    WINNERS_2ND_EDITION,
    LeaderboardRow,
    leaderboard_row,
    leaderboard_table,
    row_from_scores,
)
from facelab.frcsyn.metrics import (
    EvalConfig,
    SetResult,
    TaskScores,
    evaluate_embeddings,
    evaluate_model,
    gap,
    task1_scores,
    task2_scores,
    task_scores,
)
from facelab.frcsyn.sources import (
    Manifest,
    SourceCount,
    count_source,
    read_manifest,
    write_manifest,
)
from facelab.frcsyn.subtasks import (
    CASIA_WEBFACE_IDENTITIES,
    CASIA_WEBFACE_IMAGES,
    SUBTASKS,
    SYNTHETIC_LIMIT,
    SubTask,
    get_subtask,
)

_LAZY = {
    "RecipeConfig": "protocol",
    "RunConfig": "protocol",
    "RunResult": "protocol",
    "EntryResult": "protocol",
    "run": "protocol",
    "run_presets": "protocol",
    "team_train_config": "protocol",
    "train_recognizer": "protocol",
    "train_and_evaluate": "protocol",
    "CrossDatasetTable": "table",
    "TableConfig": "table",
    "cross_dataset_table": "table",
    "table_presets": "table",
    "ToyEditionConfig": "toy",
    "toy_eval_sets": "toy",
    "toy_real_dataset": "toy",
    "write_toy_standin": "toy",
    "LeakageReport": "leakage",
    "leakage_check": "leakage",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'facelab.frcsyn' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"facelab.frcsyn.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "CASIA_WEBFACE_IDENTITIES",
    "CASIA_WEBFACE_IMAGES",
    "SUBTASKS",
    "SYNTHETIC_LIMIT",
    "TASK1_COLUMNS",
    "TASK2_COLUMNS",
    "TEAM_PROTOCOL_ANCHORS",
    "WINNERS_2ND_EDITION",
    "CheckResult",
    "CrossDatasetTable",
    "EntryResult",
    "EvalConfig",
    "LeaderboardRow",
    "LeakageReport",
    "Manifest",
    "PairSet",
    "RecipeConfig",
    "RunConfig",
    "RunResult",
    "SetResult",
    "SourceCount",
    "SubTask",
    "SubtaskError",
    "TableConfig",
    "TaskScores",
    "ToyEditionConfig",
    "check_subtask",
    "count_source",
    "cross_dataset_table",
    "evaluate_embeddings",
    "evaluate_model",
    "from_bin",
    "gap",
    "get_subtask",
    "leaderboard_row",
    "leaderboard_table",
    "leakage_check",
    "load_eval_sets",
    "read_manifest",
    "read_pair_list",
    "row_from_scores",
    "run",
    "run_presets",
    "task1_scores",
    "task2_scores",
    "task_scores",
    "team_train_config",
    "toy_eval_sets",
    "toy_real_dataset",
    "train_and_evaluate",
    "train_recognizer",
    "write_manifest",
    "write_toy_standin",
]
