"""``facelab morphface fit-prior|train|sample|eval``: the style prior, the generator, a
synthetic dataset with subject-specific styles, and its measurements."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

USAGE = """usage: facelab morphface {convert,fit-prior,train,sample,eval} [flags]

  convert    a Deep3DFaceRecon BFM .mat -> a 3DMM file (--style.model of `train`)
  fit-prior  fit the subject-specific style prior on per-image 3DMM parameters (--params FILE)
             or on styled toyfaces (--toy-identities N)
  train      train the ID + style conditioned generator (--preset toy|paper, every recipe field
             is a flag)
  sample     write C identities x K images, each identity a new subject drawn from the prior;
             resumable
  eval       per-subject style statistics of a generated dataset (and, with --recognizer, the
             base's identity metrics)

run `facelab morphface <command> --help` for the flags of one command."""


@dataclass
class ConvertArgs:
    """Convert a public 3DMM file into ours (safetensors)."""

    out: str
    """where to write the 3DMM (.safetensors)"""
    bfm: str | None = None
    """a BFM_model_front.mat (Deep3DFaceRecon layout)"""
    flame: str | None = None
    """a FLAME generic_model.pkl with plain numpy arrays (restricted unpickler; no chumpy)"""
    num_shape: int = 300
    """FLAME: identity modes at the start of shapedirs (the rest are expression modes)"""
    normalize: bool = True
    """centre the head and scale its vertical half extent to 1 (the camera's unit)"""


def convert_command(args: ConvertArgs):
    from facelab.core.errors import FormatError
    from facelab.morphface.converters import bfm_from_mat, flame_from_pkl

    if (args.bfm is None) == (args.flame is None):
        raise FormatError("convert: give exactly one of --bfm FILE.mat or --flame FILE.pkl")
    if args.bfm is not None:
        model = bfm_from_mat(args.bfm, normalize=args.normalize)
    else:
        model = flame_from_pkl(args.flame, num_shape=args.num_shape, normalize=args.normalize)
    path = model.save(args.out)
    print(
        f"3DMM {model.name}: {model.num_vertices} vertices, {model.num_faces} faces, "
        f"{model.num_shape} shape / {model.num_expression} expression / {model.num_albedo} "
        f"albedo modes -> {path}"
    )
    return model


@dataclass
class FitPriorArgs:
    """Fit the style prior (subject means + pooled intra-subject covariance)."""

    out: str
    """where to write the prior (.safetensors)"""
    params: str | None = None
    """a per-image parameter file with subject 'labels' (README: format); None = styled toyfaces"""
    toy_identities: int = 200
    toy_images_per_identity: int = 10
    toy_seed: int = 0
    toy_difficulty: str = "easy"
    drop_singletons: bool = False
    """leave subjects with a single image out instead of failing"""


@dataclass
class SampleArgs:
    """Write a synthetic dataset: C new subjects x K images, resumable (rerun the same command)."""

    generator: str
    """a folder written by `facelab morphface train` (its output dir or its generator/)"""
    out: str
    """output folder (identity folders + manifest.json; each identity's styles in meta.json)"""
    prior: str | None = None
    """a style prior from `facelab morphface fit-prior` (needed unless the generator is ID-only)"""
    identities: int = 100
    """number of identities C (filtered random unit vectors unless --contexts)"""
    contexts: str | None = None
    """ID vectors: a .safetensors file with a (C, D) 'contexts' or 'embeddings' tensor"""
    virtual_threshold: float | None = 0.3
    """keep random identities only if their cosine to every kept one is below this"""
    images_per_identity: int = 50
    batch_size: int = 64
    seed: int = 0
    image_size: int = 112
    steps: int | None = None
    """DDIM steps (default: the generator's)"""
    id_scale: float | None = None
    style_scale: float | None = None
    blend: float | None = None
    device: str = "auto"
    progress: bool = True


@dataclass
class EvalArgs:
    """Per-subject style statistics of a generated dataset (from its meta.json files)."""

    dataset: str
    """a dataset written by `facelab morphface sample`"""
    recognizer: str | None = None
    """optional: a save_pretrained recognizer for the base's identity metrics"""
    out: str | None = None
    """write the metrics as JSON here"""


def fit_prior_command(args: FitPriorArgs):
    from facelab.morphface.params import load_params
    from facelab.morphface.prior import StylePrior, subject_statistics

    if args.params:
        params, labels, _ = load_params(args.params)
        if labels is None:
            from facelab.core.errors import FormatError

            raise FormatError(f"{args.params}: the prior needs per-image subject 'labels'")
    else:
        from facelab.morphface.toy import StyledToyFaces

        toy = StyledToyFaces(
            args.toy_identities,
            args.toy_images_per_identity,
            size=32,
            seed=args.toy_seed,
            difficulty=args.toy_difficulty,
        )
        params, labels = toy.style_params(), toy.labels
    prior = StylePrior.fit(params, labels, drop_singletons=args.drop_singletons)
    path = prior.save(args.out)
    icc = subject_statistics(params.pose[:, 0], labels)["icc"]
    print(
        f"style prior of {prior.num_subjects} subjects, {prior.num_images} images "
        f"(D = {prior.layout.dim}; yaw ICC {icc:.2f}) -> {path}"
    )
    return prior


def train_command(argv: Sequence[str]):
    from facelab.core.recipe import parse_with_presets
    from facelab.morphface.train import MorphFaceConfig, morphface_presets, train

    cfg = parse_with_presets(
        MorphFaceConfig,
        morphface_presets(),
        argv,
        "facelab morphface train",
        "Train the ID + 3DMM-style conditioned generator.",
    )
    res = train(cfg)
    print(
        f"generator saved to {res.output_dir / 'generator'} ({res.wall_time:.0f} s, "
        f"{res.train.step} steps)"
    )
    return res


def _contexts(args: SampleArgs, width: int):
    from facelab.core.diffusion.identities import random_identities, virtual_identities
    from facelab.core.errors import FormatError

    if args.contexts is None:
        if args.virtual_threshold is not None:
            return virtual_identities(args.identities, args.virtual_threshold, width, args.seed)
        return random_identities(args.identities, width, args.seed)
    from safetensors.torch import load_file

    p = Path(args.contexts)
    if not p.is_file():
        raise FileNotFoundError(f"contexts: {p} does not exist")
    try:
        tensors = load_file(str(p))
    except Exception as exc:
        raise FormatError(f"{p}: not a readable safetensors file ({exc})") from None
    key = "contexts" if "contexts" in tensors else "embeddings"
    if key not in tensors:
        raise FormatError(
            f"{p}: expected a tensor 'contexts' or 'embeddings', got {sorted(tensors)}"
        )
    return tensors[key].float()[: args.identities]


def sample_command(args: SampleArgs):
    import torch

    from facelab.morphface.prior import StylePrior
    from facelab.morphface.train import load_morphface

    kwargs = {
        k: v
        for k, v in (
            ("num_steps", args.steps),
            ("id_scale", args.id_scale),
            ("style_scale", args.style_scale),
            ("blend", args.blend),
        )
        if v is not None
    }
    sampler = load_morphface(args.generator, **kwargs)
    prior = StylePrior.load(args.prior) if args.prior else None
    if args.device == "auto":
        from accelerate import PartialState

        device = PartialState().device
    else:
        device = torch.device(args.device)
    sampler.to(device)
    ctx = _contexts(args, sampler.denoiser.context_width)
    res = sampler.generate(
        ctx,
        args.out,
        prior=prior,
        images_per_identity=args.images_per_identity,
        batch_size=args.batch_size,
        seed=args.seed,
        image_size=args.image_size,
        progress=args.progress,
    )
    print(
        f"{res.identities_written} identities written, {res.identities_skipped} already there; "
        f"{res.images_written} images in {res.seconds:.1f} s -> {res.out_dir}"
    )
    return res


def style_statistics(dataset: str | Path) -> dict[str, float]:
    """ICC, between- and within-subject variance of yaw, pitch and every expression coefficient
    over the identities of a generated dataset (its ``meta.json`` files)."""
    import torch

    from facelab.core.errors import FormatError
    from facelab.morphface.prior import subject_statistics

    root = Path(dataset)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset: {root} is not a folder")
    poses, exprs, labels = [], [], []
    for k, meta in enumerate(sorted(root.glob("*/meta.json"))):
        try:
            doc = json.loads(meta.read_text())
            for rec in doc["images"]:
                poses.append(rec["pose"])
                exprs.append(rec["expression"])
                labels.append(k)
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise FormatError(
                f"{meta}: no per-image styles (a morphface dataset?): {exc}"
            ) from None
    if not labels:
        raise FormatError(f"{root}: no identity folders with meta.json (a morphface dataset?)")
    pose, expr, lab = torch.tensor(poses), torch.tensor(exprs), torch.tensor(labels)
    out: dict[str, float] = {}
    cols = {"yaw": pose[:, 0], "pitch": pose[:, 1]}
    cols |= {f"expression_{i}": expr[:, i] for i in range(expr.shape[1])}
    for name, v in cols.items():
        for key, val in subject_statistics(v, lab).items():
            out[f"{name}_{key}"] = val
    return out


def eval_command(args: EvalArgs) -> dict:
    metrics = style_statistics(args.dataset)
    if args.recognizer:
        import torch

        from facelab.core.data.folders import IdentityFolderDataset
        from facelab.core.diffusion.metrics import synthetic_quality
        from facelab.core.hub import from_pretrained

        ds = IdentityFolderDataset(args.dataset)
        images = torch.stack([ds[i][0] for i in range(len(ds))])
        metrics |= synthetic_quality(from_pretrained(args.recognizer), images, ds.labels)
    for k, v in metrics.items():
        print(f"{k}: {v:.4f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(metrics, indent=2))
    return metrics


def main(argv: Sequence[str] = ()) -> int:
    """MorphFace: 3DMM-style + identity conditioned face synthesis (prior, train, sample, eval)."""
    import tyro

    args = list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    sub, rest = args[0], args[1:]
    if sub == "convert":
        convert_command(tyro.cli(ConvertArgs, args=rest, prog="facelab morphface convert"))
    elif sub == "fit-prior":
        fit_prior_command(tyro.cli(FitPriorArgs, args=rest, prog="facelab morphface fit-prior"))
    elif sub == "train":
        train_command(rest)
    elif sub == "sample":
        sample_command(tyro.cli(SampleArgs, args=rest, prog="facelab morphface sample"))
    elif sub == "eval":
        eval_command(tyro.cli(EvalArgs, args=rest, prog="facelab morphface eval"))
    else:
        print(
            f"facelab morphface: error: unknown command {sub!r}; expected convert, fit-prior, "
            "train, sample or eval",
            file=sys.stderr,
        )
        return 2
    return 0


__all__ = ["main", "style_statistics"]
