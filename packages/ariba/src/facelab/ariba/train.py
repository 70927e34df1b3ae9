"""The recipe: a federated training run (``SimConfig``) whose global model is saved.

Every client trains locally on ``facelab.core.train.Trainer`` (see ``attacks``); the server
aggregates with the configured strategy (ARIBA by default). ``train(cfg, output_dir)`` writes
``output_dir/model`` (``save_pretrained``: config.json + model.safetensors) and
``output_dir/history.json`` (per-round accuracy, attack success rate, pruned nodes).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from facelab.ariba.app import SimConfig, build_model
from facelab.ariba.simulate import RunResult, run_flower_simulation, simulate


def history(result: RunResult) -> dict:
    rounds = []
    for r in result.rounds:
        row = {"round": r.server_round, "accuracy": r.accuracy, "asr": r.asr, "seconds": r.seconds}
        if r.report is not None:
            row.update(
                pruned=r.report.pruned,
                nonfinite=r.report.nonfinite,
                malformed=r.report.malformed,
                attackers=r.report.attackers,
                threshold=r.report.threshold,
            )
        rounds.append(row)
    return {
        "config": dataclasses.asdict(result.config),
        "initial": result.initial,
        "rounds": rounds,
    }


def train(cfg: SimConfig, output_dir: str = "runs/ariba", flower: bool = False) -> RunResult:
    """Run ``cfg`` (in process, or in Flower's Ray simulation with ``flower=True``) and save
    the final global model and the run's history under ``output_dir``."""
    result = run_flower_simulation(cfg) if flower else simulate(cfg)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(cfg)
    model.load_state_dict(result.arrays.to_torch_state_dict())
    model.save_pretrained(out / "model")
    (out / "history.json").write_text(json.dumps(history(result), indent=1, default=str))
    return result
