"""``facelab ariba compare``: every strategy against every attack, over seeds.

Each (attack, strategy, seed) is one in-process Flower run (``simulate``). Reported per
(attack, strategy), as mean +- standard deviation over seeds: main-task accuracy and attack
success rate (ASR) averaged over the last ``tail`` rounds (single rounds swing), detection
precision/recall over all rounds (strategies that prune), and the time per
``aggregate_train``. Plots: accuracy and ASR per round, one figure per attack.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facelab.ariba._checks import checks_deferred
from facelab.ariba.app import STRATEGIES, SimConfig
from facelab.ariba.attacks import AttackConfig
from facelab.ariba.simulate import RunResult, simulate
from facelab.core.errors import RangeError, UnknownNameError

# attack scenarios: DBA needs one attacker per trigger bar
SCENARIOS: dict[str, AttackConfig] = {
    "none": AttackConfig("none", num_attackers=0),
    "badnets": AttackConfig("badnets", num_attackers=2),
    "model_replacement": AttackConfig("model_replacement", num_attackers=2),
    "dba": AttackConfig("dba", num_attackers=4),
    "constrain_scale": AttackConfig("constrain_scale", num_attackers=2),
}


@dataclass
class CompareConfig:
    """What to compare (``base`` holds data, clients, rounds, local training, detector)."""

    attacks: tuple[str, ...] = tuple(SCENARIOS)
    strategies: tuple[str, ...] = STRATEGIES
    seeds: tuple[int, ...] = (0, 1, 2)
    tail: int = 3
    out: str = "results/ariba-compare"
    base: SimConfig = field(default_factory=lambda: SimConfig(rounds=10))

    def __post_init__(self) -> None:
        if not checks_deferred():
            self.validate()

    def validate(self) -> None:
        """Raise a FacelabError on a bad value (see ``_checks``)."""
        for a in self.attacks:
            if a not in SCENARIOS:
                raise UnknownNameError(
                    f"attacks: expected names from {tuple(SCENARIOS)}, got {a!r}"
                )
        for s in self.strategies:
            if s not in STRATEGIES:
                raise UnknownNameError(f"strategies: expected names from {STRATEGIES}, got {s!r}")
        if not self.seeds:
            raise RangeError("seeds: expected at least one seed")
        if not (1 <= self.tail <= self.base.rounds):
            raise RangeError(
                f"tail: expected 1 <= tail <= rounds ({self.base.rounds}), got {self.tail}"
            )


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def run_one(cfg: CompareConfig, attack: str, strategy: str, seed: int) -> RunResult:
    sim = dataclasses.replace(cfg.base, strategy=strategy, seed=seed, attack=SCENARIOS[attack])  # type: ignore[arg-type]
    return simulate(sim)


def run_record(attack: str, strategy: str, seed: int, result: RunResult) -> dict[str, Any]:
    """One run as a JSON line: per-round accuracy, ASR, aggregation time, detection counts."""
    return {
        "attack": attack,
        "strategy": strategy,
        "seed": seed,
        "accuracy": [r.accuracy for r in result.rounds],
        "asr": [r.asr for r in result.rounds],
        "seconds": [r.seconds for r in result.rounds],
        "detection": result.detection(),
    }


def summarize(cfg: CompareConfig, records: list[dict[str, Any]]) -> list[dict]:
    """Mean +- sd over seeds per (attack, strategy), in the order of ``cfg``."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for rec in records:
        groups.setdefault((rec["attack"], rec["strategy"]), []).append(rec)
    rows = []
    for attack in cfg.attacks:
        for strategy in cfg.strategies:
            rs = groups.get((attack, strategy))
            if not rs:
                continue
            acc = [statistics.fmean(x["accuracy"][-cfg.tail :]) for x in rs]
            asr = [statistics.fmean(x["asr"][-cfg.tail :]) for x in rs]
            ms = [1e3 * statistics.fmean(x["seconds"]) for x in rs]
            precision, recall, fp_per_round = [], [], []
            for x in rs:
                if x["detection"] is None:
                    continue
                tp, fp, fn = x["detection"]
                precision.append(tp / (tp + fp) if tp + fp else math.nan)
                recall.append(tp / (tp + fn) if tp + fn else math.nan)
                fp_per_round.append(fp / len(x["accuracy"]))
            row: dict[str, Any] = {"attack": attack, "strategy": strategy, "seeds": len(rs)}
            for name, xs in (
                ("accuracy", acc),
                ("asr", asr),
                ("precision", precision),
                ("recall", recall),
                ("fp_per_round", fp_per_round),
                ("ms_per_aggregation", ms),
            ):
                row[name], row[name + "_sd"] = _mean_sd(xs)
            n = min(len(x["accuracy"]) for x in rs)
            row["curves"] = {
                k: [statistics.fmean(x[k][i] for x in rs) for i in range(n)]
                for k in ("accuracy", "asr")
            }
            rows.append(row)
    return rows


def _pm(m: float, s: float, scale: float = 100.0, digits: int = 1) -> str:
    if math.isnan(m):
        return "-"
    return f"{scale * m:.{digits}f} +- {scale * s:.{digits}f}"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| attack | strategy | accuracy % | ASR % | precision % | recall % | benign pruned / round | ms / aggregation |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['attack']} | {r['strategy']} | {_pm(r['accuracy'], r['accuracy_sd'])} | "
            f"{_pm(r['asr'], r['asr_sd'])} | {_pm(r['precision'], r['precision_sd'], digits=0)} | "
            f"{_pm(r['recall'], r['recall_sd'], digits=0)} | "
            f"{_pm(r['fp_per_round'], r['fp_per_round_sd'], 1.0, 2)} | "
            f"{_pm(r['ms_per_aggregation'], r['ms_per_aggregation_sd'], 1.0, 1)} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for attack in dict.fromkeys(r["attack"] for r in rows):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for r in (r for r in rows if r["attack"] == attack):
            xs = range(1, len(r["curves"]["accuracy"]) + 1)
            axes[0].plot(xs, [100 * v for v in r["curves"]["accuracy"]], label=r["strategy"])
            axes[1].plot(xs, [100 * v for v in r["curves"]["asr"]], label=r["strategy"])
        axes[0].set(title=f"{attack}: main-task accuracy", xlabel="round", ylabel="%")
        axes[1].set(title=f"{attack}: attack success rate", xlabel="round", ylabel="%")
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        p = out / f"{attack}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_report(cfg: CompareConfig, records: list[dict[str, Any]]) -> list[dict]:
    out = Path(cfg.out)
    rows = summarize(cfg, records)
    (out / "results.json").write_text(
        json.dumps({"config": dataclasses.asdict(cfg), "rows": rows}, indent=1, default=str)
    )
    (out / "report.md").write_text(markdown(rows) + "\n")
    plot(rows, out)
    return rows


def compare(cfg: CompareConfig, progress: bool = True, resume: bool = True) -> list[dict]:
    """Run the grid (seed by seed, so an early stop leaves whole tables), appending each run to
    ``runs.jsonl`` under ``cfg.out`` (``resume``: runs already there are not repeated); then
    write ``results.json``, ``report.md`` and one plot per attack. Returns the summary rows."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "runs.jsonl"
    records = read_records(log) if resume else []
    if not resume:
        log.write_text("")
    done = {(r["attack"], r["strategy"], r["seed"]) for r in records}
    for seed in cfg.seeds:
        for attack in cfg.attacks:
            for strategy in cfg.strategies:
                if (attack, strategy, seed) in done:
                    continue
                result = run_one(cfg, attack, strategy, seed)
                rec = run_record(attack, strategy, seed, result)
                records.append(rec)
                with log.open("a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                if progress:
                    f = result.final
                    print(
                        f"{attack:18s} {strategy:14s} seed {seed}: acc {100 * f.accuracy:5.1f} "
                        f"asr {100 * f.asr:5.1f}",
                        flush=True,
                    )
    return write_report(cfg, records)


def quality_rows(cfg: CompareConfig | None = None, progress: bool = False) -> list[dict]:
    """The comparison as flat rows (no curves) for a family suite such as ``facelab bench
    fl``: attack, strategy, accuracy, ASR, precision, recall, benign pruned per round and ms
    per aggregation, each with its sd over seeds."""
    rows = compare(cfg or CompareConfig(), progress=progress)
    return [{k: v for k, v in r.items() if k != "curves"} for r in rows]
