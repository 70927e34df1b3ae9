"""``facelab ariba simulate | train | compare | detect | flower-app``."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from facelab.ariba._checks import checked_command, deferred_checks
from facelab.ariba.app import SimConfig
from facelab.ariba.compare import CompareConfig


def _print_run(result) -> None:
    print("| round | accuracy % | ASR % | pruned | ms / aggregation |")
    print("|---|---|---|---|---|")
    for r in result.rounds:
        pruned = r.report.pruned if r.report is not None else "-"
        print(
            f"| {r.server_round} | {100 * r.accuracy:.1f} | {100 * r.asr:.1f} | {pruned} | "
            f"{1e3 * r.seconds:.1f} |"
        )


@checked_command
def simulate(cfg: SimConfig, flower: bool = False, out: str | None = None) -> int:
    """One federated run on offline data: accuracy, attack success rate and pruning per round
    (``--flower``: in Flower's Ray simulation instead of the in-process grid)."""
    from facelab.ariba.simulate import run_flower_simulation
    from facelab.ariba.simulate import simulate as run
    from facelab.ariba.train import history

    result = run_flower_simulation(cfg) if flower else run(cfg)
    _print_run(result)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(history(result), indent=1, default=str))
    return 0


@checked_command
def train(cfg: SimConfig, output_dir: str = "runs/ariba", flower: bool = False) -> int:
    """Federated training with the configured strategy; saves the global model and history."""
    from facelab.ariba.train import train as run

    result = run(cfg, output_dir, flower)
    _print_run(result)
    print(f"model: {Path(output_dir) / 'model'}")
    return 0


@checked_command
def compare(cfg: CompareConfig, fresh: bool = False, report_only: bool = False) -> int:
    """Every strategy against every attack over seeds: table, results.json and plots (runs
    already in OUT/runs.jsonl are kept unless --fresh; --report-only only rebuilds the table)."""
    from facelab.ariba.compare import compare as run
    from facelab.ariba.compare import markdown, read_records, write_report

    if report_only:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        rows = write_report(cfg, read_records(Path(cfg.out) / "runs.jsonl"))
    else:
        rows = run(cfg, resume=not fresh)
    print(markdown(rows))
    print(f"report: {Path(cfg.out) / 'report.md'}")
    return 0


@checked_command
def detect(
    updates: list[str],
    num_prune: int = 1,
    detector: str = "robust_z",
    z_threshold: float = 2.5,
    granularity: str = "filter",
) -> int:
    """Run the detector on client updates (one safetensors file per client, each the delta
    from the global model): prints the clients to exclude and the outlier counts as JSON."""
    from safetensors.torch import load_file

    from facelab.ariba.detect import DetectorConfig, analyze
    from facelab.ariba.fragments import FragmentConfig
    from facelab.core.errors import FormatError

    loaded = []
    for path in updates:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such update file")
        try:
            loaded.append(load_file(path))
        except Exception as exc:
            raise FormatError(f"{path}: expected a safetensors file ({exc})") from None
    cfg = DetectorConfig(
        fragments=FragmentConfig(granularity),  # type: ignore[arg-type]
        detector=detector,  # type: ignore[arg-type]
        z_threshold=z_threshold,
    )
    det = analyze(loaded, num_prune, cfg)
    print(
        json.dumps(
            {
                "excluded": det.excluded,
                "pruned": det.pruned,
                "nonfinite": det.nonfinite,
                "counts": det.counts,
                "threshold": det.threshold,
                "total_fragments": det.total_fragments,
            }
        )
    )
    return 0


@checked_command
def flower_app(cfg: SimConfig, out: str = "ariba-app") -> int:
    """Write the Flower app project (``OUT/pyproject.toml``) that ``flwr run`` deploys; the
    run config holds the keys the deployed app reads (cfg must keep the other fields at their
    defaults)."""
    from facelab.ariba.app import node_configs, write_app_project

    folder = write_app_project(out, cfg)
    nodes = " ".join(
        "--node '" + " ".join(f"{k}={v}" for k, v in n.items()) + "'" for n in node_configs(cfg)
    )
    print(f"wrote {folder / 'pyproject.toml'}")
    print(f"deploy on this machine: python scripts/flower_deploy.py app {folder} {nodes}")
    return 0


COMMANDS = {
    "simulate": simulate,
    "train": train,
    "compare": compare,
    "detect": detect,
    "flower-app": flower_app,
}


def main(argv: Sequence[str] | None = None) -> int:
    """ARIBA: backdoor detection in federated learning (Flower): simulate, train, compare, detect."""
    from facelab.core.cli import subcommands

    args = list(sys.argv[1:] if argv is None else argv)
    with deferred_checks():  # the commands validate what tyro built (one-line errors)
        rc = subcommands("facelab ariba", COMMANDS, args, description=__doc__ or "")
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
