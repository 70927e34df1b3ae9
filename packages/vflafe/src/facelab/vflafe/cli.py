"""``facelab vflafe train | attack | compare | flower | flower-app``.

* ``train``: one VFL run (no DP, plain clip + noise or VFL-AFE) at a target epsilon or a given
  noise multiplier: test accuracy and the epsilon spent;
* ``attack``: the same run, then label leakage (AUC) from the gradients a passive party
  received and feature inversion from the embeddings the active party received;
* ``compare``: no-DP, plain and VFL-AFE (and the gradient-noise variant) at several epsilons,
  clip norms and seeds: ``table.md``, ``results.json`` and ``privacy_utility.png``;
* ``flower``: the Flower app (ServerApp = active party, ClientApps = passive parties) in this
  process over Flower's message format.
* ``flower-app``: write the Flower app project that ``flwr run`` deploys (SuperLink, one
  SuperNode per passive party).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

Dataset = Literal["breast_cancer", "digits", "toyfaces"]
Mode = Literal["none", "plain", "afe"]


def _recipe(
    dataset: Dataset,
    mode: Mode,
    target_epsilon: float | None,
    noise_multiplier: float,
    clip_norm: float,
    epochs: int | None,
    seed: int,
    grad_clip_norm: float | None,
    grad_noise_multiplier: float,
    parties: int,
):
    from facelab.vflafe.model import PrivacyConfig
    from facelab.vflafe.recipe import presets

    cfg = presets()[dataset]
    train = cfg.train if epochs is None else dataclasses.replace(cfg.train, epochs=epochs)
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, parties=parties),
        privacy=PrivacyConfig(
            mode=mode,
            clip_norm=clip_norm,
            noise_multiplier=noise_multiplier,
            grad_clip_norm=grad_clip_norm,
            grad_noise_multiplier=grad_noise_multiplier,
            noise_seed=seed,
        ),
        target_epsilon=target_epsilon,
        train=dataclasses.replace(train, seed=seed),
    )


def _fmt_eps(eps: float) -> str:
    return "inf (no noise)" if math.isinf(eps) else f"{eps:.3f}"


def train(
    dataset: Dataset = "breast_cancer",
    mode: Mode = "afe",
    target_epsilon: float | None = None,
    noise_multiplier: float = 0.0,
    clip_norm: float = 1.0,
    epochs: int | None = None,
    parties: int = 2,
    seed: int = 0,
    grad_clip_norm: float | None = None,
    grad_noise_multiplier: float = 0.0,
    out: str | None = None,
) -> int:
    """Train one VFL run and report test accuracy and epsilon (delta 1e-5, 'replace' relation)."""
    from facelab.vflafe.recipe import train as run

    cfg = _recipe(
        dataset, mode, target_epsilon, noise_multiplier, clip_norm, epochs, seed,
        grad_clip_norm, grad_noise_multiplier, parties,
    )  # fmt: skip
    o = run(cfg)
    result = {
        "dataset": dataset,
        "mode": mode,
        "accuracy": o.accuracy,
        "epsilon": o.epsilon,
        "noise_multiplier": o.noise_multiplier,
        "inference_noise_multiplier": o.model.passive[0].inference_noise_multiplier,
        "releases": o.releases,
    }
    print(
        f"{dataset} {mode}: test accuracy {o.accuracy:.4f}; epsilon {_fmt_eps(o.epsilon)} after "
        f"{o.releases} releases per training sample (sigma {o.noise_multiplier:.3f}, inference "
        f"sigma {result['inference_noise_multiplier']:.3f})"
    )
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    return 0


def attack(
    dataset: Dataset = "breast_cancer",
    mode: Mode = "afe",
    target_epsilon: float | None = None,
    noise_multiplier: float = 0.0,
    clip_norm: float = 1.0,
    epochs: int | None = None,
    parties: int = 2,
    seed: int = 0,
    grad_clip_norm: float | None = None,
    grad_noise_multiplier: float = 0.0,
    known_fraction: float = 0.3,
    attack_steps: int = 400,
) -> int:
    """Train, then attack what crossed the boundary in the last epoch (party 0)."""
    from facelab.vflafe.compare import CompareConfig, attack_outcome
    from facelab.vflafe.recipe import train as run

    cfg = _recipe(
        dataset, mode, target_epsilon, noise_multiplier, clip_norm, epochs, seed,
        grad_clip_norm, grad_noise_multiplier, parties,
    )  # fmt: skip
    o = run(cfg)
    res = attack_outcome(
        o, CompareConfig(recipe=cfg, known_fraction=known_fraction, attack_steps=attack_steps), seed
    )
    print(f"{dataset} {mode}: test accuracy {o.accuracy:.4f}; epsilon {_fmt_eps(o.epsilon)}")
    print(
        f"label leakage AUC: norm {res['norm_auc']:.3f}, direction {res['direction_auc']:.3f} (0.5 = none)"
    )
    line = f"feature inversion: relative MSE {res['inversion_rel_mse']:.3f} (1.0 = predicting the mean)"
    if "inversion_ssim" in res:
        line += f", SSIM {res['inversion_ssim']:.3f}"
    print(line)
    return 0


def compare(
    dataset: Dataset = "breast_cancer",
    epsilons: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0),
    clip_norms: tuple[float, ...] = (1.0,),
    seeds: tuple[int, ...] = (0, 1, 2),
    variants: tuple[str, ...] = ("no-dp", "plain", "afe", "afe+grad-noise"),
    epochs: int | None = None,
    parties: int = 2,
    grad_clip_norm: float = 0.05,
    grad_noise_multiplier: float = 1.0,
    attacks: bool = True,
    out: str = "results/vflafe",
) -> int:
    """No-DP vs plain clip + noise vs VFL-AFE at equal epsilon: table, JSON and plot."""
    from facelab.vflafe.compare import CompareConfig, markdown, plot_privacy_utility, summarize
    from facelab.vflafe.compare import compare as run
    from facelab.vflafe.recipe import presets

    recipe = presets()[dataset]
    recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, parties=parties))
    if epochs is not None:
        recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, epochs=epochs))
    cfg = CompareConfig(
        recipe=recipe,
        variants=variants,
        epsilons=epsilons,
        clip_norms=clip_norms,
        seeds=seeds,
        grad_clip_norm=grad_clip_norm,
        grad_noise_multiplier=grad_noise_multiplier,
        attacks=attacks,
    )

    def progress(row: dict) -> None:
        print(
            f"  {row['variant']:<18} eps {row['target_epsilon']:<5g} C {row['clip_norm']:<5g} "
            f"seed {row['seed']}: accuracy {row['accuracy']:.4f}",
            flush=True,
        )

    rows = run(cfg, progress=progress)
    summary = summarize(rows)
    table = markdown(summary)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    (folder / "table.md").write_text(table + "\n")
    plot_privacy_utility(summary, folder / "privacy_utility.png", title=dataset)
    print(table)
    print(
        f"wrote {folder / 'table.md'}, {folder / 'results.json'}, {folder / 'privacy_utility.png'}"
    )
    return 0


def _app_config(dataset: str, **fields):
    """The Flower app's config; the app serves the tabular sets only."""
    from facelab.vflafe.flower import AppConfig

    if dataset == "toyfaces":
        from facelab.core.errors import UnknownNameError

        raise UnknownNameError(
            "dataset: the Flower app serves the tabular sets (breast_cancer, digits), got 'toyfaces'"
        )
    return AppConfig(dataset=dataset, **fields)


def flower(
    dataset: Dataset = "breast_cancer",
    mode: Mode = "afe",
    noise_multiplier: float = 0.0,
    clip_norm: float = 1.0,
    epochs: int = 3,
    parties: int = 2,
    seed: int = 0,
) -> int:
    """Run the Flower app (ServerApp = active party, ClientApps = passive parties) in process."""
    import numpy as np

    from facelab.vflafe.flower import run_local

    cfg = _app_config(
        dataset=dataset, mode=mode, noise_multiplier=noise_multiplier, clip_norm=clip_norm,
        epochs=epochs, parties=parties, seed=seed,
    )  # fmt: skip
    outcome, grid = run_local(cfg)
    print(
        f"flower app: test accuracy {outcome.accuracy:.4f}, epsilon {_fmt_eps(outcome.epsilon)}, "
        f"{len(outcome.step_times)} rounds, median round {np.median(outcome.step_times) * 1e3:.1f} ms, "
        f"{grid.bytes_sent / 1e6:.2f} MB on the wire"
    )
    return 0


def flower_app(
    out: str,
    dataset: Dataset = "breast_cancer",
    mode: Mode = "afe",
    noise_multiplier: float = 0.0,
    clip_norm: float = 1.0,
    epochs: int = 3,
    batch_size: int = 64,
    parties: int = 2,
    seed: int = 0,
) -> int:
    """Write the Flower app project (``OUT/pyproject.toml``) that ``flwr run`` deploys."""
    from facelab.vflafe.flower import node_configs, write_app_project

    cfg = _app_config(
        dataset=dataset, mode=mode, noise_multiplier=noise_multiplier, clip_norm=clip_norm,
        epochs=epochs, batch_size=batch_size, parties=parties, seed=seed,
    )  # fmt: skip
    folder = write_app_project(out, cfg)
    nodes = " ".join(f"--node party-id={n['party-id']}" for n in node_configs(cfg))
    print(f"wrote {folder / 'pyproject.toml'}")
    print(f"deploy on this machine: python scripts/flower_deploy.py app {folder} {nodes}")
    return 0


COMMANDS = {
    "train": train,
    "attack": attack,
    "compare": compare,
    "flower": flower,
    "flower-app": flower_app,
}


def main(argv: Sequence[str] | None = None) -> int:
    """VFL-AFE: differentially private vertical FL with adaptive feature embeddings."""
    from facelab.core.cli import subcommands

    args = list(sys.argv[1:] if argv is None else argv)
    rc = subcommands("facelab vflafe", COMMANDS, args, description=__doc__ or "")
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
