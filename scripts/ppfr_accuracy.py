"""Where the accuracy of the privacy-preserving recognizers goes, on toyfaces.

MinusFace (``minusface``): one stage 1, then a ladder of stage-2 recognizers trained with the
same budget, initial weights and data order on what the server could be given, from the most
to the least informative:

* ``r (stage 1)``: the stage-1 recognizer on the 192-channel residue itself;
* ``d(r)``: the decoded residue without shuffling (measurement a);
* ``d(P r), one fixed P``: every face shuffled by the same permutation, i.e. a recognizer that
  knows the permutation (measurement d): what the decoding of shuffled channels costs without
  the need to become invariant to random permutations;
* ``X_p = d(P_i r)``: MinusFace, a fresh random permutation per face; also with 2x and 4x the
  stage-2 steps (measurement b);
* the RGB baseline with the same steps (the same recipe, backbone and head);

and the generator's reconstruction error ``L1(X, X')`` / PSNR and how much of ``X_p`` and
``d(r)`` is clipped by ``d`` (measurement c).

DuetFace (``duetface``): the client (stage A), the server with masks, the plain server (no
masks; the same initialisation and data order) and the RGB baseline, all with the same budget;
``--preset quick`` is the configuration of the quick benchmark suite (32 px), ``paper-shape``
the 112 px preset.

    uv run python scripts/ppfr_accuracy.py minusface --preset toy --seeds 1337 1 2
    uv run python scripts/ppfr_accuracy.py duetface --preset quick --seeds 0 1 2
    uv run python scripts/ppfr_accuracy.py duetface --preset paper-shape --seeds 1337

Accuracy: held-out toyfaces verification (identities never trained on), 10-fold, no flip test.
Every row is appended to ``results/ppfr_accuracy/<method>-<preset>.jsonl``; ``--summary``
prints the table (mean, min..max over seeds) from there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "ppfr_accuracy"


def _accuracy(model: nn.Module, heldout) -> float:
    from facelab.core.recipe import evaluate_sets

    model.eval()
    return float(evaluate_sets(model, [heldout], flip=False)[heldout.name].accuracy)


# --------------------------------------------------------------------------------------------
# MinusFace


class _Stage2View(nn.Module):
    """Faces -> what a stage-2 variant feeds its recognizer -> embeddings."""

    def __init__(self, transform, recognizer: nn.Module) -> None:
        super().__init__()
        self.transform, self.recognizer = transform, recognizer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.recognizer(self.transform(images, None))


def _mf_transform(mode: str, generator, fixed_perm: torch.Tensor, eval_seed: int = 0):
    """``(images, rng) -> recognizer input`` for a stage-2 variant (uint8-quantized, [-1, 1])."""
    from facelab.minusface.client import protect_uint8
    from facelab.minusface.protocol import quantize, to_model_input
    from facelab.minusface.shuffle import shuffle_channels

    eval_rng = torch.Generator().manual_seed(eval_seed)

    @torch.no_grad()
    def transform(images, rng):
        rng = eval_rng if rng is None else rng
        if mode == "plain":
            return to_model_input(protect_uint8(generator, images, shuffle=False))
        if mode == "random":
            return to_model_input(protect_uint8(generator, images, rng=rng))
        r = generator.residue(images)
        perms = fixed_perm.view(1, 1, -1).expand(r.shape[0], 1, -1)
        shuffled, _ = shuffle_channels(r, 1, perms=perms.contiguous())
        return to_model_input(quantize(generator.decode(shuffled[:, 0])))

    return transform


def _mf_stage2(cfg, dataset, num_classes, generator, mode: str, steps: int):
    from facelab.core.train.data import mix_seed
    from facelab.minusface.train import shuffle_rng, stage2_trainer

    run_cfg = dataclasses.replace(cfg, stage2=dataclasses.replace(cfg.stage2, max_steps=steps))
    trainer = stage2_trainer(run_cfg, dataset, num_classes, generator)
    perm_rng = torch.Generator().manual_seed(mix_seed(cfg.stage2.seed, 0xF1CED))
    fixed = torch.randperm(generator.channels, generator=perm_rng)
    transform = _mf_transform(mode, generator, fixed)
    seed = cfg.stage2.seed

    def loss_fn(batch, modules, ctx):
        from facelab.core.recipe import margin_loss

        images, labels = batch
        x = transform(images, shuffle_rng(seed, ctx))
        return margin_loss(modules["head"], modules["recognizer"](x), labels)

    trainer.loss_fn = loss_fn
    trainer.fit()
    return _Stage2View(transform, trainer.unwrap("recognizer"))


def _save(row: dict) -> None:
    """Print a row and append it to the method's results file at once (runs are long)."""
    print(json.dumps(row), flush=True)
    path = OUT / f"{row['method']}-{row['preset']}.jsonl"
    with open(path, "a") as f:
        f.write(json.dumps(row | {"threads": torch.get_num_threads()}) + "\n")


def minusface_rows(
    preset: str, seed: int, steps_factors: list[int], baseline_all: bool = True
) -> list[dict]:
    from facelab.core.privacy import psnr, ssim
    from facelab.core.recipe import build_eval_sets, build_train_dataset
    from facelab.minusface import minusface_presets
    from facelab.minusface.train import (
        ResidueRecognizer,
        materialize_toy,
        stage1_trainer,
        train_baseline,
    )

    base = minusface_presets()[preset]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:

        def quiet(stage):
            return dataclasses.replace(
                stage, progress=False, save_on_exit=False, checkpoint_every=None, seed=seed
            )

        cfg = dataclasses.replace(
            base,
            output_dir=tmp,
            stage1=quiet(base.stage1),
            stage2=quiet(base.stage2),
            evaluate=False,
        )
        t0 = time.perf_counter()
        dataset, num_classes = build_train_dataset(cfg.data)
        materialize_toy(dataset)
        (heldout,) = build_eval_sets(cfg.data)
        s1 = stage1_trainer(cfg, dataset, num_classes)
        s1_result = s1.fit()
        gen = s1.unwrap("generator").eval().requires_grad_(False)
        rec1 = s1.unwrap("recognizer").eval()
        n1 = cfg.stage1.max_steps
        common = {"method": "minusface", "preset": preset, "seed": seed}

        def row(name, steps, acc, **extra):
            r = common | {"model": name, "steps": steps, "accuracy": acc} | extra
            _save(r)
            rows.append(r)

        row(
            "r (stage 1)",
            n1,
            _accuracy(ResidueRecognizer(gen, rec1), heldout),
            l1=s1_result.losses.get("l1"),
            ce=s1_result.losses.get("ce"),
        )
        # (c) the generator's reconstruction and what d clips
        x = heldout.images[:256]
        with torch.no_grad():
            regen = gen.regenerate(x)
            plain = _mf_transform("plain", gen, torch.arange(gen.channels))(x, None)
            xp = _mf_transform("random", gen, torch.arange(gen.channels))(
                x, torch.Generator().manual_seed(1)
            )
        clipped = lambda t: float(((t <= -1) | (t >= 1)).float().mean())  # noqa: E731
        row(
            "generator",
            n1,
            None,
            recon_l1=float((regen - x).abs().mean()),
            recon_psnr=float(psnr(regen, x).mean()),
            recon_ssim=float(ssim(regen, x).mean()),
            dr_ssim=float(ssim(plain, x).mean()),
            xp_ssim=float(ssim(xp, x).mean()),
            dr_clipped=clipped(plain),
            xp_clipped=clipped(xp),
        )
        n2 = cfg.stage2.max_steps
        for mode, name in (("plain", "d(r)"), ("fixed", "d(P r), one fixed P")):
            view = _mf_stage2(cfg, dataset, num_classes, gen, mode, n2)
            row(name, n2, _accuracy(view, heldout))
        for f in steps_factors:
            view = _mf_stage2(cfg, dataset, num_classes, gen, "random", n2 * f)
            row("X_p (MinusFace)", n2 * f, _accuracy(view, heldout))
            if f != steps_factors[0] and not baseline_all:
                continue
            bcfg = dataclasses.replace(
                cfg,
                stage2=dataclasses.replace(cfg.stage2, max_steps=n2 * f),
                output_dir=str(Path(tmp) / f"b{f}"),
            )
            bl = train_baseline(bcfg)
            row("RGB baseline", n2 * f, _accuracy(bl.model, heldout))
        print(f"# {preset} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


# --------------------------------------------------------------------------------------------
# DuetFace


def duetface_rows(preset: str, seed: int, steps_factors: list[int]) -> list[dict]:
    from facelab.core.recipe import build_eval_sets
    from facelab.duetface import duetface_presets
    from facelab.duetface.train import (
        build_pipeline,
        train_baseline,
        train_client,
        train_server,
        training_data,
    )

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        if preset == "quick":  # the quick suite's configuration (facelab bench quick)
            from facelab.duetface.quick import quick_config

            base = quick_config(small=False, seed=seed, workdir=Path(tmp), progress=False)
        else:
            base = duetface_presets()[preset]

        def quiet(stage, f=1):
            st = dataclasses.replace(
                stage, progress=False, save_on_exit=False, checkpoint_every=None, seed=seed
            )
            if f != 1:
                st = dataclasses.replace(
                    st,
                    epochs=st.epochs * f if st.max_steps is None else st.epochs,
                    max_steps=None if st.max_steps is None else st.max_steps * f,
                    milestones=tuple(m * f for m in st.milestones),
                )
            return st

        t0 = time.perf_counter()
        cfg0 = dataclasses.replace(base, output_dir=tmp)
        dataset, num_classes = training_data(cfg0)
        (heldout,) = build_eval_sets(cfg0.data)
        common = {"method": "duetface", "preset": preset, "seed": seed}

        def row(name, f, acc, **extra):
            r = common | {"model": name, "budget": f"{f}x", "accuracy": acc} | extra
            _save(r)
            rows.append(r)

        for f in steps_factors:
            cfg = dataclasses.replace(
                cfg0,
                output_dir=str(Path(tmp) / f"x{f}"),
                client_train=quiet(base.client_train, f),
                server_train=quiet(base.server_train, f),
            )
            a = train_client(cfg, dataset, num_classes)
            client = a.model.eval().requires_grad_(False)
            row("client (30 low channels)", f, _accuracy(client_embedder(client), heldout))
            b = train_server(cfg, client, dataset, num_classes)
            row(
                "DuetFace (server + masks)",
                f,
                _accuracy(build_pipeline(client, b.model, cfg), heldout),
            )
            n = train_server(
                cfg,
                client,
                dataset,
                num_classes,
                interactive=False,
                train_cfg=dataclasses.replace(
                    cfg.stage("server_train"), output_dir=str(Path(tmp) / f"n{f}")
                ),
            )
            row(
                "server only (no masks)",
                f,
                _accuracy(build_pipeline(client, n.model, cfg), heldout),
            )
            bl = train_baseline(cfg)
            row("RGB baseline", f, _accuracy(bl.model, heldout))
        print(f"# {preset} seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def client_embedder(client) -> nn.Module:
    """Faces -> the client model's own embedding from its 30 low-frequency channels."""
    from facelab.core.freq import FrequencyCodec, select_channels
    from facelab.duetface.protocol import CODEC_MODE

    codec = FrequencyCodec(CODEC_MODE, check=False)

    class ClientView(nn.Module):
        def __init__(self):
            super().__init__()
            self.client = client

        def forward(self, images):
            return self.client(select_channels(codec.encode(images), client.positions))

    return ClientView()


# --------------------------------------------------------------------------------------------


def summarize(path: Path) -> str:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    key = "steps" if rows and "steps" in rows[0] else "budget"
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r[key]), []).append(r)
    lines = [
        f"## {path.stem}",
        "",
        f"| model | {key} | accuracy mean | min..max | seeds | other |",
        "|---|---|---|---|---|---|",
    ]
    for (model, budget), rs in groups.items():
        accs = [r["accuracy"] for r in rs if r["accuracy"] is not None]
        extra_keys = [
            k
            for k in rs[0]
            if k not in ("method", "preset", "seed", "model", key, "accuracy", "threads")
        ]
        other = ", ".join(
            f"{k} {statistics.mean(r[k] for r in rs if r.get(k) is not None):.3f}"
            for k in extra_keys
            if any(r.get(k) is not None for r in rs)
        )
        acc = f"{statistics.mean(accs):.3f} | {min(accs):.3f}..{max(accs):.3f}" if accs else " | "
        lines.append(f"| {model} | {budget} | {acc} | {len(rs)} | {other} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("method", choices=("minusface", "duetface"))
    ap.add_argument("--preset", default="toy")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1337, 1, 2])
    ap.add_argument("--steps-factors", nargs="+", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--baseline-first-only",
        action="store_true",
        help="MinusFace: train the RGB baseline only at the first steps factor",
    )
    ap.add_argument("--summary", action="store_true")
    args = ap.parse_args(argv)
    path = OUT / f"{args.method}-{args.preset}.jsonl"
    if not args.summary:
        torch.set_num_threads(args.threads)
        OUT.mkdir(parents=True, exist_ok=True)
        factors = args.steps_factors or ([1, 2, 4] if args.method == "minusface" else [1])
        for seed in args.seeds:
            if args.method == "minusface":
                minusface_rows(args.preset, seed, factors, not args.baseline_first_only)
            else:
                duetface_rows(args.preset, seed, factors)
    print(summarize(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
