"""The visual-tendency comparison on the toy set (ours): train the same tiny generator on the
biased toy set with SteerFace off, with a fixed angle, with uniform random angles and with the
adaptive head, and measure every generator the same way (``tendency.tendency_report``).

``tendency_rows(cfg)`` returns one dict per (seed, mode): the prevalence deviations, the
predictability excess, identity consistency, diversity and (optionally) the verification
accuracy on held-out real toyfaces of a recognizer trained on the generated images. The README
table comes from ``python -m facelab.steerface.bench`` (its flags are this config's fields).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from facelab.steerface.strength import MODES, SteerConfig
from facelab.steerface.toyset import TendencyToyConfig

#: the generator of the comparison: the base's toy UNet at 16 px with 64-d toy embeddings
BENCH_UNET: dict[str, Any] = {
    "initial_channels": 32,
    "channel_multipliers": (1, 2, 2),
    "is_attention": (False, False, True),
    "attention_head_channels": 32,
    "n_blocks_per_resolution": 1,
    "context_channels": 64,
    "n_context_tokens": 8,
    "context_dropout_probability": 0.1,
    "unconditioned_probability": 0.1,
}


@dataclass
class TendencyBenchConfig:
    """One comparison: modes x seeds on the toy set; every generator trains ``steps`` steps."""

    toy: TendencyToyConfig = field(default_factory=TendencyToyConfig)
    modes: tuple[str, ...] = ("off", "fixed", "adaptive")
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    theta_mean: float = 30.0
    theta_std: float = 10.0
    reg_weight: float = 10.0
    images_per_identity: int = 16
    sample_steps: int = 25
    clip_sample: bool = True
    """clip each step's predicted x0 to [-1, 1] when sampling (core ``IdentitySampler``): the
    pixel-space toy generators carry identity only with it (core README, toy section)"""
    probe_steps: int = 400
    id_recognizer_steps: int = 300
    fr_steps: int = 300
    """steps of the recognizer trained on the generated images (0: no FR accuracy)"""
    output_dir: str = ""
    """keep the runs here (default: a temporary folder, deleted)"""
    out: str = ""
    """write the rows as JSON here"""

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            from facelab.core.errors import UnknownNameError

            raise UnknownNameError(f"modes: expected a subset of {MODES}, got {list(self.modes)}")


def _synth_config(cfg: TendencyBenchConfig, root: Path, emb: Path, seed: int, out: Path):
    from facelab.core.diffusion.train import (
        AutoencoderConfig,
        EMAConfig,
        ReferenceUNetConfig,
        SynthDataConfig,
        SynthTrainConfig,
    )
    from facelab.core.train import TrainConfig

    d = cfg.toy.embedding_dim
    return SynthTrainConfig(
        data=SynthDataConfig(
            source=str(root),
            image_size=cfg.toy.image_size,
            flip=False,  # a mirror image flips pose and lighting: the labels would be wrong
            contexts="file",
            embeddings=str(emb),
            context_dim=d,
        ),
        unet=ReferenceUNetConfig(**BENCH_UNET, context_input_channels=d),
        autoencoder=AutoencoderConfig(kind="pixel"),
        ema=EMAConfig(max_decay=0.999),
        train=TrainConfig(
            output_dir=str(out),
            max_steps=cfg.steps,
            batch_size=cfg.batch_size,
            optimizer="adamw",
            lr=cfg.lr,
            weight_decay=0.0,
            scheduler="cosine",
            warmup=min(100, cfg.steps // 10),
            warmup_unit="step",
            min_lr=1e-5,
            seed=seed,
            checkpoint_every=10**9,
            log_every=max(1, cfg.steps // 10),
            progress=False,
        ),
        resume=None,
    )


def tendency_rows(cfg: TendencyBenchConfig, log=print) -> list[dict[str, Any]]:
    """Every (seed, mode) row of the comparison (see the module doc)."""
    from safetensors.torch import save_file

    from facelab.core.diffusion.toy import train_toy_recognizer
    from facelab.core.diffusion.train import load_generator, train_diffusion
    from facelab.steerface.hook import SteerTransform
    from facelab.steerface.tendency import probe_accuracy, tendency_report, train_attribute_probe
    from facelab.steerface.toyset import build_tendency_set, heldout_pairs, probe_set

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(cfg.output_dir or tmp)
        for seed in cfg.seeds:
            toy_cfg = replace(cfg.toy, seed=seed)
            t0 = time.perf_counter()
            toyset = build_tendency_set(toy_cfg)
            root = toyset.write_folder(base / f"seed{seed}" / "data")
            emb = base / f"seed{seed}" / "embeddings.safetensors"
            save_file({"embeddings": toyset.embeddings.contiguous()}, str(emb))
            p_img, p_on, p_clear = probe_set(toy_cfg)
            half = p_img.shape[0] // 2
            probe = train_attribute_probe(
                p_img[:half], p_on[:half], p_clear[:half], steps=cfg.probe_steps, seed=seed
            )
            probe_acc = probe_accuracy(probe, p_img[half:], p_on[half:], p_clear[half:])
            id_rec = train_toy_recognizer(
                toyset.float_images(), toyset.labels, steps=cfg.id_recognizer_steps, seed=seed
            )
            heldout = heldout_pairs(toy_cfg) if cfg.fr_steps > 0 else None
            log(f"seed {seed}: data, probe (acc {probe_acc}), recognizer in "
                f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
            for mode in cfg.modes:
                t1 = time.perf_counter()
                steer_cfg = SteerConfig(
                    mode=mode,
                    theta_mean=cfg.theta_mean,
                    theta_std=cfg.theta_std,
                    reg_weight=cfg.reg_weight,
                )
                out = base / f"seed{seed}" / mode
                synth = _synth_config(cfg, root, emb, seed, out)
                hook = SteerTransform(steer_cfg, dim=toy_cfg.embedding_dim)
                res = train_diffusion(synth, context_transform=hook)
                train_s = time.perf_counter() - t1
                sampler = load_generator(
                    out, num_steps=cfg.sample_steps, clip_sample=cfg.clip_sample
                )
                rep = tendency_report(
                    sampler,
                    toyset,
                    probe=probe,
                    id_recognizer=id_rec,
                    heldout=heldout,
                    images_per_identity=cfg.images_per_identity,
                    fr_steps=cfg.fr_steps,
                    seed=seed,
                )
                rep.pop("_images")
                losses = res.train.losses
                row = {
                    "seed": seed,
                    "mode": mode,
                    **rep,
                    "probe_accuracy": probe_acc,
                    "final_mse": losses.get("mse", losses.get("loss")),
                    "theta_mean_deg": losses.get("hook_theta_mean_deg"),
                    "theta_std_deg": losses.get("hook_theta_std_deg"),
                    "train_s": round(train_s, 1),
                    "total_s": round(time.perf_counter() - t1, 1),
                }
                rows.append(row)
                log(json.dumps(_short(row), default=float))
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(
            json.dumps({"config": asdict(cfg), "rows": rows}, indent=2, default=float)
        )
    return rows


_SUMMARY = (
    "tv_identity_mean",
    "tv_marginal_mean",
    "predictability_excess_mean",
    "identity_accuracy",
    "consistency_gap",
    "diversity",
    "fr_accuracy",
)


def _short(row: dict[str, Any]) -> dict[str, Any]:
    keep = ("seed", "mode", *_SUMMARY, "theta_mean_deg", "theta_std_deg", "train_s")
    return {k: row[k] for k in keep if k in row}


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation over seeds, per mode."""
    out = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        rs = [r for r in rows if r["mode"] == mode]
        s: dict[str, Any] = {"mode": mode, "seeds": len(rs)}
        for k in _SUMMARY:
            v = [float(r[k]) for r in rs if r.get(k) is not None]
            if v:
                m = sum(v) / len(v)
                sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
                s[k] = (m, sd)
        out.append(s)
    return out


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The README table: mean +- sd over seeds per mode."""
    head = "| mode | seeds | " + " | ".join(_SUMMARY) + " |"
    lines = [head, "|" + "---|" * (len(_SUMMARY) + 2)]
    for s in summarize(rows):
        cells = [f"{s[k][0]:.3f} ± {s[k][1]:.3f}" if k in s else "–" for k in _SUMMARY]
        lines.append(f"| {s['mode']} | {s['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    import tyro

    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = tyro.cli(TendencyBenchConfig, args=argv, prog="python -m facelab.steerface.bench")
    rows = tendency_rows(cfg)
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["TendencyBenchConfig", "markdown_table", "summarize", "tendency_rows"]
