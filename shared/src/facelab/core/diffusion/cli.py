"""``facelab synth train|sample|eval``: train the ID-conditioned generator, write a synthetic
dataset, measure it."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

USAGE = """usage: facelab synth {train,sample,eval} [flags]

  train   train the generator (--preset toy|paper, every recipe field is a flag)
  sample  write C identities x K images (identity folders or RecordIO) with a manifest; resumable
  eval    identity consistency, diversity, separability and FR accuracy of a generated dataset

run `facelab synth <command> --help` for the flags of one command."""


@dataclass
class SampleArgs:
    """Write a synthetic dataset: C identities x K images, resumable (rerun the same command)."""

    generator: str
    """a generator folder written by `facelab synth train` (its output dir or its generator/)"""
    out: str
    """output folder (identity folders + manifest.json, or train.rec with --format recordio)"""
    identities: int = 100
    """number of identities C (random unit vectors unless --contexts is given)"""
    contexts: str | None = None
    """ID vectors: a .safetensors ('contexts' or 'embeddings') or .npy file of (C, D) rows"""
    normalize: bool = False
    """L2-normalize the vectors of --contexts (otherwise non-unit vectors are an error)"""
    virtual_threshold: float | None = None
    """keep random identities only if their cosine to every kept one is below this"""
    images_per_identity: int = 50
    batch_size: int = 64
    seed: int = 0
    image_size: int = 112
    format: Literal["folders", "recordio"] = "folders"
    steps: int = 50
    eta: float = 0.0
    guidance_scale: float = 1.0
    guidance_form: Literal["reference", "diffusers"] = "reference"
    alpha_prev: Literal["diffusers", "reference"] = "diffusers"
    clip_sample: bool = False
    """clip each step's predicted x0 to [-1, 1] (turn on for pixel-space generators)"""
    device: str = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    progress: bool = True


@dataclass
class EvalArgs:
    """Measure a generated dataset under an independent recognizer."""

    dataset: str
    """a generated identity-folder dataset (`facelab synth sample --out`)"""
    recognizer: str
    """a save_pretrained recognizer that did NOT condition the generator"""
    references: str | None = None
    """real images of the same identities (identity folders with the same names)"""
    train_fr: bool = False
    """also train the core ArcFace recipe on the dataset and verify on held-out real data"""
    fr_preset: str = "toy"
    fr_output_dir: str = "runs/synth-fr"
    recognizer_size: int | None = None
    """resize images to this side before embedding (default: as stored)"""
    out: str | None = None
    """write the metrics as JSON here"""


def _load_contexts(args: SampleArgs, width: int):
    import numpy as np
    import torch

    from facelab.core.diffusion.identities import random_identities, virtual_identities
    from facelab.core.errors import FormatError

    if args.contexts is None:
        if args.virtual_threshold is not None:
            return virtual_identities(args.identities, args.virtual_threshold, width, args.seed)
        return random_identities(args.identities, width, args.seed)
    p = Path(args.contexts)
    if not p.is_file():
        raise FileNotFoundError(f"contexts: {p} does not exist")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as exc:
            raise FormatError(f"{p}: not a plain .npy array ({exc})") from None
        ctx = torch.from_numpy(np.asarray(arr, dtype=np.float32))
    else:
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(p))
        except Exception as exc:
            raise FormatError(f"{p}: not a readable safetensors file ({exc})") from None
        key = "contexts" if "contexts" in tensors else "embeddings"
        if key not in tensors:
            raise FormatError(
                f"{p}: expected a tensor 'contexts' or 'embeddings', got {sorted(tensors)}"
            )
        ctx = tensors[key].float()
    if args.identities and ctx.dim() == 2 and ctx.shape[0] > args.identities:
        ctx = ctx[: args.identities]
    if args.normalize:
        ctx = torch.nn.functional.normalize(ctx, dim=-1)
    return ctx


def sample_command(args: SampleArgs):
    import torch

    from facelab.core.diffusion.generate import generate_dataset
    from facelab.core.diffusion.train import load_generator

    sampler = load_generator(
        args.generator,
        num_steps=args.steps,
        eta=args.eta,
        guidance_scale=args.guidance_scale,
        guidance_form=args.guidance_form,
        alpha_prev=args.alpha_prev,
        clip_sample=args.clip_sample,
    )
    from accelerate import PartialState

    # under `accelerate launch` every process takes its own GPU
    device = PartialState().device if args.device == "auto" else torch.device(args.device)
    sampler.denoiser.to(device=device, dtype=getattr(torch, args.dtype))
    sampler.autoencoder.to(device=device)
    ctx = _load_contexts(args, sampler.denoiser.context_width)
    res = generate_dataset(
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
        f"{res.images_written} images in {res.seconds:.1f} s ({res.images_per_second:.2f} images/s) "
        f"-> {res.out_dir}"
    )
    return res


def eval_command(args: EvalArgs) -> dict:
    import torch

    from facelab.core.data.folders import IdentityFolderDataset
    from facelab.core.diffusion.metrics import synthetic_quality, train_on_synthetic
    from facelab.core.errors import FormatError
    from facelab.core.hub import from_pretrained

    def load(root: str):
        ds = IdentityFolderDataset(root)
        imgs = torch.stack([ds[i][0] for i in range(len(ds))])
        if args.recognizer_size and imgs.shape[-1] != args.recognizer_size:
            imgs = torch.nn.functional.interpolate(
                imgs, size=(args.recognizer_size,) * 2, mode="bilinear", antialias=True
            )
        return ds, imgs

    rec = from_pretrained(args.recognizer)
    ds, images = load(args.dataset)
    kwargs = {}
    if args.references:
        rds, rimgs = load(args.references)
        index = {c: i for i, c in enumerate(rds.classes)}
        missing = [c for c in ds.classes if c not in index]
        if missing:
            raise FormatError(
                f"references: no folder for identities {missing[:5]} ({len(missing)})"
            )
        # generated label k (ds.classes[k]) -> the reference label of the same name
        remap = torch.tensor([index[c] for c in ds.classes])
        labels = remap[ds.labels]
        kwargs = {"references": rimgs, "reference_labels": rds.labels}
    else:
        labels = ds.labels
    metrics = synthetic_quality(rec, images, labels, **kwargs)
    if args.train_fr:
        fr = train_on_synthetic(args.dataset, preset=args.fr_preset, output_dir=args.fr_output_dir)
        for name, res in fr.items():
            if name != "model":
                metrics[f"fr_{name}_accuracy"] = float(res.accuracy)
    for k, v in metrics.items():
        print(f"{k}: {v:.4f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(metrics, indent=2))
    return metrics


def train_command(argv: Sequence[str]):
    from facelab.core.diffusion.train import SynthTrainConfig, synth_presets, train_diffusion
    from facelab.core.recipe import parse_with_presets

    cfg = parse_with_presets(
        SynthTrainConfig,
        synth_presets(),
        argv,
        "facelab synth train",
        "Train the ID-conditioned generator.",
    )
    res = train_diffusion(cfg)
    print(
        f"generator saved to {res.output_dir / 'generator'} ({res.wall_time:.0f} s, {res.train.step} steps)"
    )
    return res


def main(argv: Sequence[str] = ()) -> int:
    """Identity-conditioned diffusion: train the generator, write synthetic datasets, measure them."""
    import tyro

    from facelab.core.diffusion import INSTALL_HINT, available

    args = list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if not available():
        print(f"facelab synth: error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    sub, rest = args[0], args[1:]
    if sub == "train":
        train_command(rest)
    elif sub == "sample":
        sample_command(tyro.cli(SampleArgs, args=rest, prog="facelab synth sample"))
    elif sub == "eval":
        eval_command(tyro.cli(EvalArgs, args=rest, prog="facelab synth eval"))
    else:
        print(
            f"facelab synth: error: unknown command {sub!r}; expected train, sample or eval",
            file=sys.stderr,
        )
        return 2
    return 0
