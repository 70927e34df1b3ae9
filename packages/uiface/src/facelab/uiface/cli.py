"""``facelab uiface train | sample | eval``.

* ``train``: the UIFace recipe (``--preset paper|toy``; every field of the base's
  ``SynthTrainConfig`` is a flag);
* ``sample``: a UIFace dataset (identity folders + manifest, resumable, split over the processes
  of ``accelerate launch``) from a generator folder or from the authors' released checkpoint,
  VQ-f4 encoder / decoder and identity embeddings (local paths);
* ``eval``: metrics of one generated dataset, or the whole ablation table of a toy generator.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PROG = "facelab uiface"
COMMANDS = ("train", "sample", "eval")
Variant = Literal[
    "uiface", "two-stage-adaptive", "two-stage-fixed", "single-stage", "empty-context"
]


def _usage() -> str:
    return f"""usage: {PROG} {{train,sample,eval}} [flags]

  train   train the generator (--preset paper|toy; reference conditioning with the empty context)
  sample  write C identities x K images with two-stage UIFace sampling (resumable, multi-GPU)
  eval    metrics of a generated dataset (--dataset), or the ablation table of a toy generator
          (--generator)

run `{PROG} <command> --help` for the flags of one command."""


@dataclass
class SampleArgs:
    """Write a UIFace dataset: C identities x K images (rerun the same command to resume)."""

    out: str
    """output folder (identity folders + manifest.json, or train.rec with --format recordio)"""
    generator: str | None = None
    """a generator folder written by `facelab uiface train` (its output dir or its generator/)"""
    checkpoint: str | None = None
    """the released UIFace checkpoint (reference key layout; instead of --generator)"""
    encoder: str | None = None
    """LDM VQ-f4 encoder state dict (with --checkpoint)"""
    decoder: str | None = None
    """LDM VQ-f4 decoder state dict (with --checkpoint)"""
    contexts: str | None = None
    """ID vectors (.npy as released, or .safetensors 'contexts'/'embeddings'); the first
    --identities rows are used, L2-normalized as in the reference; default: random unit vectors"""
    identities: int = 100
    images_per_identity: int = 50
    batch_size: int = 50
    seed: int = 0
    image_size: int = 112
    """side of the written images (the reference decodes 128 px and resizes to 112)"""
    format: Literal["folders", "recordio"] = "folders"
    preset: Literal["paper", "toy"] = "paper"
    """threshold defaults: the paper's (step_th 500, mse_th 0.006) or our toy calibration"""
    variant: Variant = "uiface"
    """the sampler or one of its ablations"""
    step_th: int | None = None
    mse_th: float | None = None
    guidance_scale: float | None = None
    """stage-2 guidance s in the reference form (1 + s) e_c - s e_u"""
    injection_weight: float | None = None
    steps: int = 50
    clip_sample: bool = False
    """clip each step's predicted x0 to [-1, 1] (core's ``clip_sample``; off = the reference
    sampler). Pixel-space toy generators need it to carry identity"""
    alpha_prev: Literal["diffusers", "reference"] = "diffusers"
    """previous-alpha convention: diffusers' alpha_bar[t_prev], or the reference's
    alpha_bar[t_prev - 1] (reproduces the released datasets)"""
    device: str = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    progress: bool = True


@dataclass
class EvalArgs:
    """Measure a generated dataset (--dataset), or run the ablation of a toy generator
    (--generator): one dataset per variant, identity consistency, diversity, FR accuracy."""

    out: str
    """report folder (report.md, report.json; the ablation's datasets too)"""
    dataset: str | None = None
    """a generated identity-folder dataset"""
    recognizer: str | None = None
    """a save_pretrained recognizer that did not condition the generator (--dataset); the toy
    ablation trains its own on real toyfaces when not given"""
    references: str | None = None
    """real images of the same identities, identity folders with the same names (--dataset)"""
    generator: str | None = None
    """a toy generator folder (`facelab uiface train --preset toy`): runs the ablation"""
    variants: tuple[Variant, ...] = (
        "single-stage",
        "empty-context",
        "two-stage-fixed",
        "two-stage-adaptive",
        "uiface",
    )
    images_per_identity: int = 16
    steps: int = 50
    clip_sample: bool = False
    """clip each step's predicted x0 to [-1, 1] (core's ``clip_sample``; off = the reference
    sampler). Pixel-space toy generators need it to carry identity"""
    seed: int = 0
    train_fr: bool = True
    """train the core ArcFace toy recipe on each dataset; accuracy on held-out real toyfaces"""
    fr_epochs: int = 12
    seeds: tuple[int, ...] = ()
    """with --generator: run the ablation once per seed (sampling and FR seed) and report mean,
    std and the per-seed FR gain of uiface over single-stage (claim.md / claim.json)"""
    preset: Literal["paper", "toy"] = "toy"
    step_th: int | None = None
    mse_th: float | None = None
    progress: bool = True


def _sampling(args) -> object:
    from facelab.uiface.sampler import sampling_presets, variant

    cfg = sampling_presets()[args.preset]
    over = {
        k: getattr(args, k)
        for k in ("step_th", "mse_th", "guidance_scale", "injection_weight")
        if getattr(args, k, None) is not None
    }
    cfg = dataclasses.replace(cfg, **over)
    name = getattr(args, "variant", None)
    return variant(name, cfg) if name else cfg


def sample_command(args: SampleArgs) -> int:
    import torch
    from accelerate import PartialState

    from facelab.core.diffusion.identities import random_identities
    from facelab.core.errors import FacelabError
    from facelab.uiface.generate import generate, load_contexts, load_released, load_sampler
    from facelab.uiface.sampler import UIFaceSampler

    cfg = _sampling(args)
    kwargs = {
        "num_steps": args.steps,
        "alpha_prev": args.alpha_prev,
        "clip_sample": args.clip_sample,
    }
    if (args.generator is None) == (args.checkpoint is None):
        raise FacelabError("give exactly one of --generator and --checkpoint")
    if args.checkpoint is not None:
        if not args.encoder or not args.decoder:
            raise FacelabError("--checkpoint needs the VQ-f4 --encoder and --decoder state dicts")
        base = load_released(args.checkpoint, args.encoder, args.decoder, **kwargs)
    else:
        base = load_sampler(args.generator, **kwargs)
    sampler = UIFaceSampler(base, cfg)  # checks step_th against T and the empty context
    width = base.denoiser.context_width
    if args.contexts is not None:
        ctx = load_contexts(args.contexts, args.identities, width)
    else:
        if args.identities < 1:
            raise FacelabError(f"identities: expected at least 1, got {args.identities}")
        ctx = random_identities(args.identities, width, args.seed)
    device = PartialState().device if args.device == "auto" else torch.device(args.device)
    base.denoiser.to(device=device, dtype=getattr(torch, args.dtype))
    base.autoencoder.to(device=device)
    res = generate(
        sampler,
        ctx,
        args.out,
        images_per_identity=args.images_per_identity,
        batch_size=args.batch_size,
        seed=args.seed,
        image_size=args.image_size,
        format=args.format,
        progress=args.progress,
    )
    print(
        f"{res.identities_written} identities written, {res.identities_skipped} already there; "
        f"{res.images_written} images in {res.seconds:.1f} s "
        f"({res.images_per_second:.2f} images/s) -> {res.out_dir}"
    )
    return 0


def eval_command(args: EvalArgs) -> int:
    from facelab.core.errors import FacelabError

    if (args.dataset is None) == (args.generator is None):
        raise FacelabError("give exactly one of --dataset (measure it) and --generator (ablation)")
    out = Path(args.out)
    if args.dataset is not None:
        return _eval_dataset(args, out)
    return _eval_ablation(args, out)


def _eval_dataset(args: EvalArgs, out: Path) -> int:
    from facelab.core.hub import from_pretrained
    from facelab.uiface.evaluate import dataset_metrics, load_folder

    if not Path(args.dataset).is_dir():
        raise FileNotFoundError(f"dataset: {args.dataset} is not a folder")
    rec = from_pretrained(args.recognizer) if args.recognizer else None
    kwargs = {}
    if args.references:
        import torch

        from facelab.core.data.folders import IdentityFolderDataset
        from facelab.core.errors import FormatError

        names = IdentityFolderDataset(args.dataset).classes
        refs, ref_labels, ref_names = load_folder(args.references)
        index = {c: i for i, c in enumerate(names)}
        missing = [c for c in names if c not in ref_names]
        if missing:
            raise FormatError(f"references: no folder for identities {missing[:5]}")
        remap = torch.tensor([index.get(c, -1) for c in ref_names])
        keep = remap[ref_labels] >= 0
        kwargs = {"references": refs[keep], "reference_labels": remap[ref_labels][keep]}
    metrics = dataset_metrics(args.dataset, rec, **kwargs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    for k, v in metrics.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


def _eval_ablation(args: EvalArgs, out: Path) -> int:
    from facelab.core.errors import FacelabError
    from facelab.uiface.evaluate import AblationConfig, FRConfig, run_ablation, toy_setup
    from facelab.uiface.generate import load_sampler
    from facelab.uiface.train import uiface_presets

    if args.preset != "toy":
        raise FacelabError(
            "eval --generator: the ablation needs held-out real images of the generator's "
            "identities, which only the toy preset has; use --dataset for other generators"
        )
    cfg = _sampling(args)
    base = load_sampler(args.generator, num_steps=args.steps, clip_sample=args.clip_sample)
    from facelab.uiface.sampler import UIFaceSampler

    UIFaceSampler(base, cfg)  # bad thresholds / a model without empty context fail here
    data = uiface_presets()["toy"].data
    if base.image_size != data.image_size:
        raise FacelabError(
            f"generator: expected a toy generator of {data.image_size} px, got {base.image_size} px"
        )
    if args.seeds:
        from facelab.uiface.bench import fr_claim, markdown

        res = fr_claim(
            args.generator,
            out,
            seeds=args.seeds,
            variants=args.variants,
            images_per_identity=args.images_per_identity,
            steps=args.steps,
            clip_sample=args.clip_sample,
            fr_epochs=args.fr_epochs,
            sampling=cfg,
            train_fr=args.train_fr,
            progress=args.progress,
        )
        print(markdown(res))
        print(f"report: {out / 'claim.md'}")
        return 0
    setup = toy_setup(data, seed=args.seed)
    abl = AblationConfig(
        variants=tuple(args.variants),
        images_per_identity=args.images_per_identity,
        seed=args.seed,
        image_size=data.image_size,
        train_fr=args.train_fr,
        fr=FRConfig(
            image_size=data.image_size, toy_difficulty=data.toy_difficulty, epochs=args.fr_epochs
        ),
    )
    report = run_ablation(
        base,
        setup.contexts,
        out,
        sampling=cfg,
        cfg=abl,
        recognizer=setup.recognizer,
        references=setup.references,
        reference_labels=setup.reference_labels,
        progress=args.progress,
    )
    print(report.markdown())
    print(f"report: {out / 'report.md'}")
    return 0


def train_command(argv: Sequence[str]) -> int:
    from facelab.core.diffusion.train import SynthTrainConfig
    from facelab.core.recipe import parse_with_presets
    from facelab.uiface.train import train, uiface_presets

    cfg = parse_with_presets(
        SynthTrainConfig,
        uiface_presets(),
        argv,
        f"{PROG} train",
        "Train the UIFace generator (reference conditioning: learnable empty context, "
        "unconditional probability 0.2, context dropout 0.25).",
    )
    res = train(cfg)
    print(
        f"generator saved to {res.output_dir / 'generator'} "
        f"({res.wall_time:.0f} s, {res.train.step} steps)"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """UIFace: two-stage sampling from an empty context with attention injection (ICLR 2025)."""
    import tyro

    from facelab.core.recipe import run_cli

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(
            f"{PROG}: error: unknown command {name!r}; valid: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    prog = f"{PROG} {name}"

    def body() -> int:
        if name == "train":
            return train_command(rest)
        cls, fn = {"sample": (SampleArgs, sample_command), "eval": (EvalArgs, eval_command)}[name]
        return fn(tyro.cli(cls, args=rest, prog=prog, description=cls.__doc__))

    return run_cli(body, prog)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
