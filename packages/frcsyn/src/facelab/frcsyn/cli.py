"""``facelab frcsyn subtasks | check | run | eval | table | leakage | toydata``.

* ``check``: count a training set (identity folders, index file, RecordIO, manifest) and say
  whether it satisfies a sub-task, with the reasons (exit status 1 when it does not);
* ``run``: train the team protocol's recognizer on it and print the leaderboard row
  (``--preset toy`` runs on CPU with the toy edition and a real-toyfaces baseline);
* ``eval``: score a saved recognizer the challenge's way;
* ``table``: the cross-dataset table (several training sets, one recipe, baseline and GAP);
* ``leakage``: synthetic identities too close to an evaluation person;
* ``toydata``: write a toy stand-in for a generator's dataset (identity folders + manifest).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tyro.conf import Positional

from facelab.frcsyn.metrics import EvalConfig
from facelab.frcsyn.toy import ToyEditionConfig

PROG = "facelab frcsyn"


def _subtasks(argv: Sequence[str]) -> int:
    """List the sub-tasks, their data rules and the published winners (real-data figures)."""
    import tyro

    tyro.cli(lambda: None, args=list(argv), prog=f"{PROG} subtasks", description=_subtasks.__doc__)
    from facelab.frcsyn.leaderboard import WINNERS_2ND_EDITION, columns
    from facelab.frcsyn.subtasks import SUBTASKS

    for st in SUBTASKS.values():
        w = WINNERS_2ND_EDITION[st.id]
        cells = ", ".join(f"{c} {w[c]:.2f}" for c in columns(st.task)[1:])
        print(f"{st.id}  {st.title}")
        print(f"     data: {st.rule}; ranked by {st.ranking}")
        print(f"     2nd edition winner: {w['Team']} ({cells})")
    return 0


@dataclass
class CheckArgs:
    """Count a training set and check it against an FRCSyn sub-task (exit 1 when it fails)."""

    subtask: str
    """1.1 1.2 1.3 2.1 2.2 2.3"""
    synthetic: tuple[str, ...] = ()
    """synthetic training set(s): identity folders, index file, RecordIO folder/.rec, manifest"""
    real: tuple[str, ...] = ()
    """the real part (sub-tasks x.3: CASIA-WebFace)"""
    scan: bool = False
    """also count the files of manifest folders and fail when they disagree with the manifest"""
    json: bool = False
    """print the result as JSON"""


def _check(argv: Sequence[str]) -> int:
    """Count a training set and check it against an FRCSyn sub-task (exit 1 when it fails)."""
    import tyro

    from facelab.frcsyn.check import check_subtask

    args = tyro.cli(CheckArgs, args=list(argv), prog=f"{PROG} check")
    res = check_subtask(args.subtask, args.synthetic, args.real, scan=args.scan)
    print(json.dumps(res.to_dict(), indent=2) if args.json else res.summary())
    return 0 if res.ok else 1


def _run(argv: Sequence[str]) -> int:
    """Train the team protocol on a training set, score it the challenge's way, print the row."""
    from facelab.core.recipe import parse_with_presets
    from facelab.frcsyn.protocol import RunConfig, run, run_presets

    cfg = parse_with_presets(
        RunConfig, run_presets(), argv, f"{PROG} run", _run.__doc__ or "", default_preset="paper"
    )
    res = run(cfg)
    if res is None:  # a non-main process of a distributed run
        return 0
    print(res.check.summary())
    print()
    print(res.sets_table())
    print()
    print(res.row.markdown())
    print(f"\nwritten to {res.output_dir} (frcsyn.json, row.md, roc-*.png, entry/model)")
    return 0


@dataclass
class EvalArgs:
    """Score a saved recognizer (save_pretrained folder) the challenge's way."""

    model: str
    """a save_pretrained folder, e.g. runs/frcsyn/entry/model"""
    subtask: str = "2.1"
    name: str = "model"
    """the row's Team column"""
    bins: tuple[str, ...] = ()
    pairs: tuple[str, ...] = ()
    toy: ToyEditionConfig = field(default_factory=ToyEditionConfig)
    """toy edition sets, used without --bins/--pairs (image size: the model's input size)"""
    baseline: str | None = None
    """frcsyn.json of an earlier run whose entry is the real-data baseline (for GAP)"""
    eval: EvalConfig = field(default_factory=EvalConfig)
    out: str | None = None
    """folder for frcsyn-eval.json and ROC plots"""


def _model_input_size(model) -> int:
    size = getattr(model, "input_size", None)
    if isinstance(size, (tuple, list)):
        return int(size[0])
    if isinstance(size, int):
        return size
    cfg = getattr(model, "config", None) or {}
    value = cfg.get("input_size", 112) if isinstance(cfg, dict) else 112
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _eval(argv: Sequence[str]) -> int:
    """Score a saved recognizer (save_pretrained folder) the challenge's way."""
    import tyro

    from facelab.core.recipe import write_json
    from facelab.frcsyn.evalsets import load_eval_sets
    from facelab.frcsyn.leaderboard import leaderboard_row
    from facelab.frcsyn.leakage import load_model
    from facelab.frcsyn.metrics import evaluate_model
    from facelab.frcsyn.protocol import _load_baseline_json, sets_markdown, write_roc_plots
    from facelab.frcsyn.subtasks import get_subtask
    from facelab.frcsyn.toy import toy_eval_sets

    args = tyro.cli(EvalArgs, args=list(argv), prog=f"{PROG} eval")
    st = get_subtask(args.subtask)
    model = load_model(args.model)
    size = _model_input_size(model)
    if args.bins or args.pairs:
        sets = load_eval_sets(args.bins, args.pairs, image_size=size)
    else:
        sets = toy_eval_sets(dataclasses.replace(args.toy, image_size=size))
    results = evaluate_model(model, sets, args.eval)
    base = None
    if args.baseline is not None:
        base = _load_baseline_json(Path(args.baseline), st.task, args.eval.sd_ddof)
    row = leaderboard_row(st, args.name, results, base, sd_ddof=args.eval.sd_ddof)
    print(sets_markdown({args.name: results}))
    print()
    print(row.markdown())
    if args.out is not None:
        out = Path(args.out)
        write_roc_plots({args.name: results}, out)
        write_json(
            out / "frcsyn-eval.json",
            {"row": row.to_dict()["row"], "sets": {k: v.to_dict() for k, v in results.items()}},
        )
        print(f"\nwritten to {out}")
    return 0


def _table(argv: Sequence[str]) -> int:
    """Cross-dataset table: train one recipe on each named training set, with baseline and GAP."""
    from facelab.core.errors import FormatError
    from facelab.core.recipe import parse_with_presets
    from facelab.frcsyn.evalsets import load_eval_sets, parse_set_spec
    from facelab.frcsyn.table import TableConfig, cross_dataset_table, table_presets
    from facelab.frcsyn.toy import toy_eval_sets

    cfg = parse_with_presets(
        TableConfig, table_presets(), argv, f"{PROG} table", _table.__doc__ or "", "toy"
    )
    named: dict[str, str] = {}
    for spec in cfg.datasets:
        name, path = parse_set_spec(spec)
        name = name or Path(path).resolve().name
        if name in named:
            raise FormatError(f"datasets: name {name!r} given twice")
        named[name] = path
    if cfg.bins or cfg.pairs:
        sets = load_eval_sets(cfg.bins, cfg.pairs, image_size=cfg.recipe.image_size)
    else:
        sets = toy_eval_sets(dataclasses.replace(cfg.toy, image_size=cfg.recipe.image_size))
    table = cross_dataset_table(
        named,
        sets,
        recipe=cfg.recipe,
        eval_cfg=cfg.eval,
        baseline=cfg.baseline,
        output_dir=cfg.output_dir,
        require_equal_size=cfg.require_equal_size,
    )
    if table is None:  # a non-main process of a distributed run
        return 0
    if any(s.groups is not None for s in sets):
        print("Task 1 (bias mitigation: TO = AVG - SD over demographic groups)\n")
        print(table.markdown(1))
        print()
    print("Task 2 (overall performance: AVG over sets)\n")
    print(table.markdown(2))
    for n in table.notes:
        print(f"- {n}")
    print(f"\nwritten to {cfg.output_dir} (table.md, table.json)")
    return 0


@dataclass
class LeakageArgs:
    """Flag synthetic identities too close to an evaluation person under a given recognizer."""

    model: str
    """the recognizer: a save_pretrained folder"""
    synthetic: str
    """the synthetic training set (identity folders, index, RecordIO, manifest folder)"""
    threshold: float | None = None
    """cosine threshold; default: calibrated so that an unrelated identity is flagged with
    probability --false-flag-rate (from the evaluation people themselves)"""
    false_flag_rate: float = 0.01
    images_per_identity: int = 5
    bins: tuple[str, ...] = ()
    pairs: tuple[str, ...] = ()
    toy: ToyEditionConfig = field(default_factory=ToyEditionConfig)
    limit: int = 20
    """flagged identities listed"""
    json: bool = False


def _leakage(argv: Sequence[str]) -> int:
    """Flag synthetic identities too close to an evaluation person under a given recognizer."""
    import tyro

    from facelab.frcsyn.evalsets import load_eval_sets
    from facelab.frcsyn.leakage import leakage_check, load_model
    from facelab.frcsyn.toy import toy_eval_sets

    args = tyro.cli(LeakageArgs, args=list(argv), prog=f"{PROG} leakage")
    model = load_model(args.model)
    size = _model_input_size(model)
    if args.bins or args.pairs:
        sets = load_eval_sets(args.bins, args.pairs, image_size=size)
    else:
        sets = toy_eval_sets(dataclasses.replace(args.toy, image_size=size))
    rep = leakage_check(
        model,
        args.synthetic,
        sets,
        threshold=args.threshold,
        false_flag_rate=args.false_flag_rate,
        images_per_identity=args.images_per_identity,
    )
    print(json.dumps(rep.to_dict(), indent=2) if args.json else rep.summary(args.limit))
    return 0


@dataclass
class ToyDataArgs:
    """Write a toy stand-in for a generator's dataset: toyfaces identity folders + manifest."""

    out: Positional[str]
    """output folder (identity folders + manifest.json)"""
    identities: int = 200
    images_per_identity: int = 20
    size: int = 56
    difficulty: str = "easy"
    """intra-class nuisance: easy (half the real data's), default, hard, or a float in [0, 3]"""
    seed: int = 0
    identity_offset: int = 500_000
    name: str = "toyfaces-standin"
    overwrite: bool = False


def _toydata(argv: Sequence[str]) -> int:
    """Write a toy stand-in for a generator's dataset: toyfaces identity folders + manifest."""
    import tyro

    from facelab.frcsyn.toy import write_toy_standin

    a = tyro.cli(ToyDataArgs, args=list(argv), prog=f"{PROG} toydata")
    try:
        difficulty: float | str = float(a.difficulty)
    except ValueError:
        difficulty = a.difficulty
    root = write_toy_standin(
        a.out,
        a.identities,
        a.images_per_identity,
        image_size=a.size,
        seed=a.seed,
        difficulty=difficulty,
        identity_offset=a.identity_offset,
        name=a.name,
        overwrite=a.overwrite,
    )
    print(f"wrote {a.identities * a.images_per_identity} images of {a.identities} people to {root}")
    return 0


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "subtasks": _subtasks,
    "check": _check,
    "run": _run,
    "eval": _eval,
    "table": _table,
    "leakage": _leakage,
    "toydata": _toydata,
}


def _help() -> None:
    print(f"usage: {PROG} <command> [flags]\n")
    print((main.__doc__ or "").strip())
    print("\ncommands:")
    for name, fn in COMMANDS.items():
        doc = (fn.__doc__ or "").strip().splitlines()[0]
        print(f"  {name:9s} {doc}")
    print(f"\nrun `{PROG} <command> --help` for the flags of one command.")


def main(argv: Sequence[str] | None = None) -> int:
    """FRCSyn: sub-task checker, team-protocol runner, challenge evaluation, cross-dataset table."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        _help()
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        from facelab.core.errors import UnknownNameError

        raise UnknownNameError(f"unknown command {name!r}; expected one of {list(COMMANDS)}")
    return int(COMMANDS[name](rest) or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
