"""``facelab glotok tokenize | train | train-ar | sample | eval | ablation``.

* ``train``: the tokenizer recipe (``--preset toy`` CPU minutes on toyfaces, default;
  ``--preset paper`` ImageNet-style folders at 256 px); any field as a flag
  (``--loss.hist-weight 0``, ``--model.no-residual``, ``--train.max-steps 100``).
* ``tokenize``: token indices of a dataset under a trained tokenizer (safetensors).
* ``train-ar``: the class-conditional AR generator on a token file or on the fly.
* ``sample``: images for given classes (PNG grid + safetensors).
* ``eval``: PSNR / SSIM / usage / perplexity / uniformity / rFID of a tokenizer, gFID of a
  generator (toy FID extractor = a facelab recognizer directory; Inception from a local file).
* ``ablation``: the paper's ablation and the AR comparison on toyfaces over seeds.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from facelab.glotok.data import ImageDataConfig

PROG = "facelab glotok"
COMMANDS = ("tokenize", "train", "train-ar", "sample", "eval", "ablation")


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _logging() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")


def train_main(argv: Sequence[str]) -> int:
    """Train the GloTok tokenizer (presets: toy, paper)."""
    from facelab.core.recipe import parse_with_presets
    from facelab.glotok.train import TokenizerRecipe, presets, train

    cfg = parse_with_presets(
        TokenizerRecipe,
        presets(),
        argv,
        f"{PROG} train",
        train_main.__doc__ or "",
        default_preset="toy",
    )
    _logging()
    result = train(cfg)
    print(json.dumps(result.metrics, indent=2))
    print(f"tokenizer saved to {result.output_dir / 'tokenizer'} ({result.wall_time:.0f} s)")
    return 0


def train_ar_main(argv: Sequence[str]) -> int:
    """Train the class-conditional AR generator on a tokenizer's tokens (presets: toy, paper)."""
    from facelab.core.recipe import parse_with_presets
    from facelab.glotok.generate import ARRecipe, ar_presets, train_ar

    cfg = parse_with_presets(
        ARRecipe,
        ar_presets(),
        argv,
        f"{PROG} train-ar",
        train_ar_main.__doc__ or "",
        default_preset="toy",
    )
    _logging()
    result = train_ar(cfg)
    print(
        f"generator saved to {result.output_dir / 'generator'} after {result.train.step} steps; losses {result.train.losses}"
    )
    return 0


@dataclass
class TokenizeArgs:
    """Write the token indices of a dataset under a trained tokenizer."""

    tokenizer: str
    """a tokenizer directory (save_pretrained)"""
    out: str = "tokens.safetensors"
    data: ImageDataConfig = field(default_factory=lambda: _toy_data())
    batch_size: int = 128
    device: str = "auto"


def _toy_data() -> ImageDataConfig:
    return ImageDataConfig(image_size=32, toy_identities=50, toy_images_per_identity=40)


def tokenize_main(argv: Sequence[str]) -> int:
    """Token indices (semantic + visual) of a dataset, as safetensors."""
    import tyro

    from facelab.core.errors import ShapeError
    from facelab.glotok.generate import tokenize_dataset
    from facelab.glotok.model import GloTok

    args = tyro.cli(TokenizeArgs, args=list(argv), prog=f"{PROG} tokenize")
    tok = GloTok.from_pretrained(args.tokenizer).to(_device(args.device))
    if args.data.image_size != tok.cfg.image_size:
        raise ShapeError(
            f"data.image_size {args.data.image_size} differs from the tokenizer's {tok.cfg.image_size}"
        )
    tokens = tokenize_dataset(tok, args.data, args.out, args.batch_size)
    print(
        f"{tokens['labels'].shape[0]} images -> {tuple(tokens['semantic'].shape[1:])} semantic + visual tokens in {args.out}"
    )
    return 0


@dataclass
class SampleArgs:
    """Sample images for classes with the AR generator and decode them with the tokenizer."""

    generator: str
    tokenizer: str
    classes: tuple[int, ...] = (0, 1, 2, 3)
    per_class: int = 4
    cfg_scale: float = 1.5
    temperature: float = 1.0
    top_k: int | None = None
    seed: int = 0
    out: str = "samples"
    """folder: samples.png (one row per class) and samples.safetensors"""
    no_cache: bool = False
    device: str = "auto"


def sample_main(argv: Sequence[str]) -> int:
    """Sample class-conditional images (PNG grid + safetensors)."""
    import torch
    import tyro
    from safetensors.torch import save_file
    from torchvision.utils import save_image

    from facelab.glotok.ar import ARTransformer
    from facelab.glotok.generate import SampleConfig, sample_images
    from facelab.glotok.model import GloTok

    args = tyro.cli(SampleArgs, args=list(argv), prog=f"{PROG} sample")
    device = _device(args.device)
    gen = ARTransformer.from_pretrained(args.generator).to(device)
    tok = GloTok.from_pretrained(args.tokenizer).to(device)
    labels = torch.tensor(args.classes, dtype=torch.long).repeat_interleave(args.per_class)
    sc = SampleConfig(args.cfg_scale, args.temperature, args.top_k)
    images = sample_images(gen, tok, labels, sc, seed=args.seed, use_cache=not args.no_cache)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_image((images + 1) / 2, out / "samples.png", nrow=args.per_class)
    save_file({"images": images.contiguous(), "labels": labels}, str(out / "samples.safetensors"))
    print(f"{images.shape[0]} samples written to {out}")
    return 0


@dataclass
class EvalArgs:
    """Reconstruction metrics of a tokenizer (and gFID of a generator) on held-out images."""

    tokenizer: str
    data: ImageDataConfig = field(default_factory=lambda: _toy_data())
    num_images: int = 500
    feature_extractor: str | None = None
    """a facelab recognizer directory for toy FID (ours; labelled 'toy-FID')"""
    inception_weights: str | None = None
    """a local FID Inception-v3 weights file (torch-fidelity's pt_inception-2015-12-05)"""
    teacher_histogram: str | None = None
    """report the KL of the semantic codebook's histogram to this teacher"""
    generator: str | None = None
    """also sample with this generator and report gFID"""
    cfg_scale: float = 1.5
    out: str | None = None
    device: str = "auto"


def eval_main(argv: Sequence[str]) -> int:
    """Tokenizer metrics (PSNR, SSIM, usage, perplexity, uniformity, rFID) and gFID."""
    import tyro

    from facelab.glotok.data import eval_dataset
    from facelab.glotok.evaluate import tokenizer_metrics
    from facelab.glotok.histogram import TeacherHistogram
    from facelab.glotok.metrics import RecognizerFeatures
    from facelab.glotok.model import GloTok

    args = tyro.cli(EvalArgs, args=list(argv), prog=f"{PROG} eval")
    device = _device(args.device)
    tok = GloTok.from_pretrained(args.tokenizer).to(device)
    ext = (
        RecognizerFeatures.from_pretrained(args.feature_extractor).to(device)
        if args.feature_extractor
        else None
    )
    teacher = TeacherHistogram.load(args.teacher_histogram) if args.teacher_histogram else None
    images, _ = eval_dataset(args.data, args.num_images).tensors()
    tok.check_images(images[:1])
    res = tokenizer_metrics(
        tok,
        images.to(device),
        teacher=teacher,
        extractor=ext,
        inception_weights=args.inception_weights,
    )
    if args.generator:
        from facelab.glotok.ar import ARTransformer
        from facelab.glotok.generate import SampleConfig, generation_metrics

        gen = ARTransformer.from_pretrained(args.generator).to(device)
        res |= generation_metrics(
            gen,
            tok,
            args.data,
            ext,
            args.num_images,
            SampleConfig(cfg_scale=args.cfg_scale),
            inception_weights=args.inception_weights,
        )
    label = (
        "inception" if args.inception_weights else ("toy-recognizer" if ext is not None else None)
    )
    doc = {"tokenizer": args.tokenizer, "fid_features": label, "metrics": res}
    print(json.dumps(doc, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(doc, indent=2))
    return 0


def ablation_main(argv: Sequence[str]) -> int:
    """The paper's ablation (baseline -> +hist -> +res) and AR gFID on toyfaces, over seeds."""
    import tyro

    from facelab.glotok.bench import AblationConfig, run_ablation

    cfg = tyro.cli(AblationConfig, args=list(argv), prog=f"{PROG} ablation")
    _logging()
    report = run_ablation(cfg)
    print(report["markdown"])
    return 0


_MAIN = {
    "tokenize": tokenize_main,
    "train": train_main,
    "train-ar": train_ar_main,
    "sample": sample_main,
    "eval": eval_main,
    "ablation": ablation_main,
}


def main(argv: Sequence[str] | None = None) -> int:
    """GloTok: global-perspective image tokenizer and its AR generator."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(f"usage: {PROG} {{{','.join(COMMANDS)}}} [flags]\n")
        print((__doc__ or "").split("\n\n", 1)[1])
        return 0
    name, rest = args[0], args[1:]
    if name not in _MAIN:
        print(
            f"{PROG}: error: unknown command {name!r}; expected one of {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    try:
        return int(_MAIN[name](rest) or 0)
    except SystemExit as exc:  # tyro --help / usage errors
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except Exception as exc:
        from facelab.core.cli import bad_input_exit

        # bad input: one line `facelab glotok <cmd>: error: ...`, exit 2; bugs keep their traceback
        return bad_input_exit(f"{PROG} {name}", exc)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
