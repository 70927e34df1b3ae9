"""``facelab minusface train | protect | embed | eval | attack``.

* ``train``: the recipe (``--preset paper`` / ``--preset toy`` plus field overrides); writes
  ``OUTPUT_DIR/{generator, stage1_recognizer, recognizer, metrics.json}``.
* ``protect`` (client side): faces -> protected PNGs (one per face, duplicates side by side)
  and optionally a safetensors payload; permutations from the OS CSPRNG unless ``--seed``.
* ``embed`` (server side): protected PNGs or a payload -> embeddings (safetensors).
* ``eval``: verification of client + server on held-out toy identities (and ``.bin`` sets).
* ``attack``: inversion attacks from X_p with and without shuffling.

``--model``/``--run`` accept a run directory (the ``output_dir`` of ``train``) or the saved
model directory itself.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from facelab.core.errors import FormatError, ShapeError

PROG = "facelab minusface"
COMMANDS = ("train", "protect", "embed", "eval", "attack")


def _model_dir(path: str, sub: str) -> Path:
    """``path/sub`` when ``path`` is a run directory, else ``path`` itself."""
    p = Path(path)
    if (p / sub / "config.json").is_file():
        return p / sub
    if (p / "config.json").is_file():
        return p
    raise FormatError(
        f"{path}: expected a run directory with {sub}/ or a saved model directory (config.json)"
    )


def _load_generator(path: str):
    from facelab.minusface.model import MinusFaceGenerator

    return MinusFaceGenerator.from_pretrained(_model_dir(path, "generator"))


def _load_recognizer(path: str):
    from facelab.core.hub import from_pretrained

    return from_pretrained(_model_dir(path, "recognizer"))


def _toy_difficulty(path: str, given: str | None) -> str:
    """``given``, else the toyfaces difficulty the run at ``path`` trained on (its
    metrics.json), else "default"."""
    if given is not None:
        return given
    metrics = Path(path) / "metrics.json"
    if metrics.is_file():
        try:
            data = json.loads(metrics.read_text())["config"]["data"]
            return str(data["toy_difficulty"])
        except (ValueError, KeyError, TypeError):
            pass
    return "default"


def _toy_images(
    identities: int, per_identity: int, size: int, seed: int, offset: int, difficulty: str
):
    from facelab.core.data.toyfaces import ToyFaces

    ds = ToyFaces(
        identities,
        per_identity,
        size=size,
        seed=seed,
        identity_offset=offset,
        difficulty=difficulty,
    )
    return ds.render(slice(None)), ds.labels


def _folder_images(root: str) -> tuple[torch.Tensor, list[str]]:
    """Every image under ``root`` (recursively, sorted) and its relative path."""
    from facelab.core.data.folders import is_image_file, load_image

    base = Path(root)
    if not base.is_dir():
        raise FormatError(f"images: expected a folder of aligned face images, got {root!r}")
    files = sorted(p for p in base.rglob("*") if p.is_file() and is_image_file(p.name))
    if not files:
        raise FormatError(f"images: no image files under {root}")
    images = [load_image(p) for p in files]
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) != 1:
        raise ShapeError(f"images: expected aligned crops of one size, got sizes {sorted(shapes)}")
    return torch.stack(images), [p.relative_to(base).as_posix() for p in files]


# --------------------------------------------------------------------------------------------
# train


def train_command(argv: Sequence[str]) -> int:
    from facelab.core.recipe import parse_with_presets, results_table
    from facelab.minusface.train import MinusFaceConfig, minusface_presets, train

    cfg = parse_with_presets(
        MinusFaceConfig,
        minusface_presets(),
        argv,
        f"{PROG} train",
        "Train MinusFace: stage 1 (generator + residue recognizer), stage 2 (recognizer on "
        "protected images).",
    )
    result = train(cfg)
    if result.verification:
        print(results_table(result.verification))
    print(f"models and metrics.json written to {result.output_dir} ({result.wall_time:.0f} s)")
    return 0


# --------------------------------------------------------------------------------------------
# protect


@dataclass
class ProtectArgs:
    """Client side: faces -> protected images (PNG files, optionally a safetensors payload)."""

    model: str
    """run directory or saved generator directory"""
    out: str
    """folder for the protected PNGs (the input's relative paths, as .png)"""
    images: str = "toyfaces"
    """folder of aligned face crops at the generator's size, or "toyfaces\""""
    payload: str | None = None
    """also write the batch as one safetensors payload here"""
    n_duplicates: int = 1
    seed: int | None = None
    """fixed permutation seed (experiments only; default: the OS CSPRNG)"""
    toy_identities: int = 10
    toy_images_per_identity: int = 2
    toy_seed: int = 0
    toy_identity_offset: int = 1_000_000
    toy_difficulty: str | None = None
    """default: the difficulty the run trained on (metrics.json), else "default\""""
    batch_size: int = 64


def protect_command(args: ProtectArgs) -> int:
    from facelab.minusface.client import MinusFaceClient

    generator = _load_generator(args.model)
    if args.images == "toyfaces":
        images, labels = _toy_images(
            args.toy_identities,
            args.toy_images_per_identity,
            generator.image_size,
            args.toy_seed,
            args.toy_identity_offset,
            _toy_difficulty(args.model, args.toy_difficulty),
        )
        k = args.toy_images_per_identity
        names = [f"{int(y):05d}/{i % k:03d}.png" for i, y in enumerate(labels.tolist())]
    else:
        images, rel = _folder_images(args.images)
        names = [str(Path(r).with_suffix(".png")) for r in rel]
    client = MinusFaceClient(
        generator, args.n_duplicates, seed=args.seed, batch_size=args.batch_size
    )
    payload = client.protect_payload(images)
    paths = payload.to_pngs(args.out, names)
    print(f"{len(paths)} protected images written to {args.out}")
    if args.payload:
        payload.save(args.payload)
        print(f"payload ({payload.nbytes_per_image} bytes per face) written to {args.payload}")
    return 0


# --------------------------------------------------------------------------------------------
# embed


@dataclass
class EmbedArgs:
    """Server side: protected images (PNG folder or payload) -> embeddings (safetensors)."""

    model: str
    """run directory or saved stage-2 recognizer directory"""
    protected: str
    """a folder of protected PNGs (from `protect`) or a payload .safetensors file"""
    out: str = "embeddings.safetensors"
    batch_size: int = 256


def embed_command(args: EmbedArgs) -> int:
    from safetensors.torch import save_file

    from facelab.minusface.client import MinusFaceServer
    from facelab.minusface.protocol import ProtectedImages

    server = MinusFaceServer(_load_recognizer(args.model))
    src = Path(args.protected)
    if src.is_file():
        protected = ProtectedImages.load(src)
        names = [str(i) for i in range(len(protected))]
    elif src.is_dir():
        files = sorted(src.rglob("*.png"))
        if not files:
            raise FormatError(f"protected: no .png files under {src}")
        protected = ProtectedImages.from_pngs(files, server.n_duplicates)
        names = [p.relative_to(src).as_posix() for p in files]
    else:
        raise FormatError(f"protected: expected a PNG folder or a payload file, got {src}")
    emb = server.embed(protected, batch_size=args.batch_size)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file({"embeddings": emb.contiguous()}, str(tmp), metadata={"names": json.dumps(names)})
    tmp.replace(out)
    print(f"{emb.shape[0]} embeddings ({emb.shape[1]}-d) written to {out}")
    return 0


# --------------------------------------------------------------------------------------------
# eval


@dataclass
class EvalArgs:
    """Verification of client + server (and the stage-1 residue recognizer, the baseline when
    the run has them) on held-out toy identities and optional .bin sets."""

    run: str
    """run directory (output_dir of `train`)"""
    eval_identities: int = 100
    eval_images_per_identity: int = 10
    eval_pairs: int = 2000
    toy_seed: int = 0
    toy_difficulty: str | None = None
    """default: the difficulty the run trained on (metrics.json), else "default\""""
    eval_bins: tuple[str, ...] = ()
    seed: int = 0
    """permutation seed of the evaluation"""
    batch_size: int = 128
    out: str | None = None
    """write the results as JSON here"""


def eval_command(args: EvalArgs) -> int:
    from facelab.core.hub import from_pretrained
    from facelab.core.recipe import (
        DataConfig,
        build_eval_sets,
        evaluate_sets,
        results_table,
        write_json,
    )
    from facelab.minusface.client import MinusFacePipeline
    from facelab.minusface.train import ResidueRecognizer

    run = Path(args.run)
    generator = _load_generator(args.run)
    data = DataConfig(
        image_size=generator.image_size,
        toy_seed=args.toy_seed,
        toy_difficulty=_toy_difficulty(args.run, args.toy_difficulty),
        eval_identities=args.eval_identities,
        eval_images_per_identity=args.eval_images_per_identity,
        eval_pairs=args.eval_pairs,
        eval_bins=args.eval_bins,
    )
    sets = build_eval_sets(data)
    if not sets:
        raise ShapeError("eval: no evaluation sets (eval_pairs = 0 and no eval_bins)")
    models = {"minusface": MinusFacePipeline(generator, _load_recognizer(args.run), seed=args.seed)}
    if (run / "stage1_recognizer" / "config.json").is_file():
        models["stage1 (residue)"] = ResidueRecognizer(
            generator, from_pretrained(run / "stage1_recognizer")
        )
    if (run / "baseline" / "model" / "config.json").is_file():
        models["baseline (RGB ArcFace)"] = from_pretrained(run / "baseline" / "model")
    results = {
        name: evaluate_sets(m, sets, batch_size=args.batch_size) for name, m in models.items()
    }
    print(results_table(results))
    if args.out:
        write_json(
            Path(args.out),
            {m: {s: v.to_dict() for s, v in r.items()} for m, r in results.items()},
        )
    return 0


# --------------------------------------------------------------------------------------------
# attack


@dataclass
class AttackArgs:
    """Inversion attacks from the protected images, with and without the channel shuffling."""

    run: str
    """run directory (output_dir of `train`)"""
    train_identities: int = 100
    """the adversary's own people (toyfaces, disjoint from the victims)"""
    train_images_per_identity: int = 5
    test_identities: int = 40
    test_images_per_identity: int = 5
    toy_seed: int = 0
    toy_difficulty: str | None = None
    """default: the difficulty the run trained on (metrics.json), else "default\""""
    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-3
    width: int = 32
    depth: int = 3
    seed: int = 0
    n_duplicates: int | None = None
    """default: what the run's recognizer takes"""
    recognizer: str | None = None
    """independent recognizer for identity leakage (default: the run's baseline/model if any)"""
    far: float | None = 1e-3
    """FAR of the success-rate threshold (needs a recognizer)"""
    out: str | None = None
    """write the rows as JSON here"""
    grid: str | None = None
    """write originals vs reconstructions as a PNG here"""


def attack_command(args: AttackArgs) -> int:
    from facelab.core.hub import from_pretrained
    from facelab.core.privacy import AttackConfig
    from facelab.core.recipe import TOY_HELDOUT_OFFSET, write_json
    from facelab.minusface.evaluate import privacy_eval

    run = Path(args.run)
    generator = _load_generator(args.run)
    n = args.n_duplicates
    if n is None:
        rec_dir = run / "recognizer"
        n = from_pretrained(rec_dir).in_channels // 3 if (rec_dir / "config.json").is_file() else 1
    recognizer = None
    if args.recognizer is not None:
        recognizer = from_pretrained(args.recognizer)
    elif (run / "baseline" / "model" / "config.json").is_file():
        recognizer = from_pretrained(run / "baseline" / "model")
    size = generator.image_size
    difficulty = _toy_difficulty(args.run, args.toy_difficulty)
    train_images, _ = _toy_images(
        args.train_identities,
        args.train_images_per_identity,
        size,
        args.toy_seed,
        2 * TOY_HELDOUT_OFFSET,
        difficulty,
    )
    test_images, test_labels = _toy_images(
        args.test_identities,
        args.test_images_per_identity,
        size,
        args.toy_seed,
        TOY_HELDOUT_OFFSET,
        difficulty,
    )
    report = privacy_eval(
        generator,
        train_images,
        test_images,
        n_duplicates=n,
        attack_config=AttackConfig(width=args.width, depth=args.depth),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        recognizer=recognizer,
        test_labels=test_labels if recognizer is not None else None,
        far=args.far if recognizer is not None else None,
        grid_path=args.grid,
    )
    print(report.table())
    if args.out:
        write_json(Path(args.out), report.to_dict())
    return 0


# --------------------------------------------------------------------------------------------


def _usage() -> str:
    return (
        f"usage: {PROG} {{{','.join(COMMANDS)}}} [flags]\n\n"
        "MinusFace (CVPR 2024): privacy-preserving face recognition by trainable feature "
        "subtraction.\n\n"
        "  train    train the generator and both recognizers (--preset paper|toy)\n"
        "  protect  client: faces -> protected images (PNG / payload)\n"
        "  embed    server: protected images -> embeddings\n"
        "  eval     verification accuracy of client + server\n"
        "  attack   inversion attacks from X_p with and without shuffling\n\n"
        f"run `{PROG} <command> --help` for the flags of one command."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """MinusFace: train, protect, embed, eval, attack (privacy-preserving FR, CVPR 2024)."""
    import tyro

    from facelab.core.recipe import run_cli

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"{PROG}: unknown command {name!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    prog = f"{PROG} {name}"

    def body() -> int:
        if name == "train":
            return train_command(rest)
        cls, fn = {
            "protect": (ProtectArgs, protect_command),
            "embed": (EmbedArgs, embed_command),
            "eval": (EvalArgs, eval_command),
            "attack": (AttackArgs, attack_command),
        }[name]
        return fn(tyro.cli(cls, args=rest, prog=prog, description=cls.__doc__))

    return run_cli(body, prog)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
