"""``facelab partialface train | embed | eval | attack``.

* ``train``: the recipe (``--preset toy`` or ``paper`` plus field overrides such as
  ``--train.max-steps 100``); writes ``model/``, ``plan.json`` and ``metrics.json``.
* ``embed``: a folder of aligned faces through the protocol (server challenge -> client payload
  -> server embedding); writes the embeddings and, on request, the payload bytes.
* ``eval``: same-subset and cross-subset verification of a trained run on held-out toyfaces
  and/or ``.bin`` sets.
* ``attack``: inversion attacks from one subset's channels vs the pruned / DuetFace / full
  spectrum; writes a JSON table and PNG grids.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from facelab.core.errors import FormatError, ShapeError
from facelab.core.recipe import (
    DataConfig,
    build_eval_sets,
    parse_with_presets,
    run_cli,
    write_json,
)

PROG = "facelab partialface"


def _train(argv: Sequence[str]) -> int:
    from facelab.partialface.evaluate import subset_table
    from facelab.partialface.train import PartialFaceConfig, partialface_presets, train

    def body() -> int:
        cfg = parse_with_presets(
            PartialFaceConfig,
            partialface_presets(),
            argv,
            f"{PROG} train",
            "Train a PartialFace model on random frequency-channel subsets.",
        )
        rr = train(cfg)
        if rr.verification:
            print(subset_table(rr.verification))
        print(
            f"model saved to {rr.output_dir / 'model'}, plan (keep it secret) to "
            f"{rr.output_dir / 'plan.json'} ({rr.wall_time:.0f} s)"
        )
        return 0

    return run_cli(body, f"{PROG} train")


@dataclass
class EmbedArgs:
    """Embed a folder of aligned faces through the PartialFace protocol."""

    run: str
    """a training output folder (holds model/ and plan.json)"""
    images: str
    """an identity-folder tree or a flat folder of aligned face images (the model's size)"""
    out: str = "embeddings.safetensors"
    subset: int | None = None
    """challenge subset (default: drawn by the server)"""
    permutation: int | None = None
    """challenge permutation (default: drawn by the server)"""
    seed: int | None = None
    """seed the server's challenge draws (reproducible, not secret); default CSPRNG"""
    payload_out: str | None = None
    """also write the payload bytes (what crosses from client to server) here"""
    batch_size: int = 128


def _load_folder(root: Path) -> tuple[torch.Tensor, list[str], torch.Tensor | None]:
    from PIL import Image

    from facelab.core.data.folders import IdentityFolderDataset, load_image

    if not root.is_dir():
        raise FormatError(f"images: expected a folder of images, got {str(root)!r}")
    if any(p.is_dir() for p in root.iterdir()):
        ds = IdentityFolderDataset(root)
        images = torch.stack([ds[i][0] for i in range(len(ds))])
        return images, list(ds.relative_paths), ds.labels
    exts = {e.lower() for e in Image.registered_extensions()}
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in exts)
    if not files:
        raise FormatError(f"images: no image files in {root}")
    return torch.stack([load_image(p) for p in files]), [p.name for p in files], None


def embed_folder(args: EmbedArgs) -> tuple[Path, int]:
    """Run the protocol on a folder; returns (output path, payload bytes per image)."""
    from safetensors.torch import save_file

    from facelab.partialface.protocol import PartialFaceClient, PartialFaceServer, Payload
    from facelab.partialface.train import load_trained

    model, plan = load_trained(args.run)
    images, names, labels = _load_folder(Path(args.images))
    size = model.image_size
    if tuple(images.shape[-2:]) != (size, size):
        raise ShapeError(
            f"images: the model takes aligned {size}x{size} faces, got {tuple(images.shape[-2:])}"
        )
    server = PartialFaceServer(model, plan, seed=args.seed, batch_size=args.batch_size)
    challenge = server.challenge(args.subset, args.permutation)
    payload = PartialFaceClient(max_positions=plan.subset_size).respond(images, challenge)
    wire = payload.to_bytes()
    if args.payload_out is not None:
        path = Path(args.payload_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(wire)
    emb = server.embed(Payload.from_bytes(wire), challenge)
    tensors = {"embeddings": emb.contiguous()}
    if labels is not None:
        tensors["labels"] = labels.contiguous()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(tensors, str(tmp), metadata={"names": json.dumps(names), "plan_id": plan.plan_id})
    tmp.replace(out)
    return out, len(wire) // len(names)


def _embed(argv: Sequence[str]) -> int:
    import tyro

    def body() -> int:
        args = tyro.cli(EmbedArgs, args=list(argv), prog=f"{PROG} embed")
        out, per_image = embed_folder(args)
        print(f"embeddings written to {out} ({per_image} payload bytes per image)")
        return 0

    return run_cli(body, f"{PROG} embed")


def _default_eval_data() -> DataConfig:
    return DataConfig(
        eval_identities=100, eval_images_per_identity=6, eval_pairs=600, toy_difficulty="easy"
    )


@dataclass
class EvalArgs:
    """Same-subset and cross-subset verification of a trained PartialFace run."""

    run: str
    """a training output folder (holds model/ and plan.json)"""
    data: DataConfig = field(default_factory=_default_eval_data)
    """evaluation data (held-out toyfaces and/or --data.eval-bins); image size = the model's"""
    challenges: int = 6
    out: str | None = None
    """write the results as JSON here"""
    batch_size: int = 128


def _eval(argv: Sequence[str]) -> int:
    import dataclasses

    import tyro

    from facelab.partialface.evaluate import evaluate_subsets, subset_table
    from facelab.partialface.train import load_trained

    def body() -> int:
        args = tyro.cli(EvalArgs, args=list(argv), prog=f"{PROG} eval")
        model, plan = load_trained(args.run)
        data = dataclasses.replace(args.data, image_size=model.image_size)
        res = evaluate_subsets(
            model,
            plan,
            build_eval_sets(data),
            num_challenges=args.challenges,
            batch_size=args.batch_size,
        )
        print(subset_table(res))
        if args.out is not None:
            write_json(
                Path(args.out),
                {s: {m: r.to_dict() for m, r in v.items()} for s, v in res.items()},
            )
        return 0

    return run_cli(body, f"{PROG} eval")


@dataclass
class AttackArgs:
    """Inversion attacks: one subset's channels vs the pruned, DuetFace and full spectrum."""

    out: str = "results/partialface-attack"
    plan: str = "reference"
    """the plan whose subset is attacked: a preset or a plan file (e.g. RUN/plan.json)"""
    image_size: int = 32
    train_identities: int = 100
    test_identities: int = 20
    images_per_identity: int = 6
    difficulty: str = "easy"
    """toyfaces nuisance strength (as the toy training preset)"""
    seed: int = 0
    kinds: tuple[Literal["subset", "pruned", "duetface", "full"], ...] = (
        "subset",
        "pruned",
        "duetface",
        "full",
    )
    subset: int = 0
    permutation: int = 0
    steps: int = 600
    batch_size: int = 32
    width: int = 16
    depth: int = 2
    recognizer: str | None = None
    """a save_pretrained RGB recognizer for identity leakage (e.g. from `facelab train`)"""


def run_attack_command(args: AttackArgs) -> list[dict]:
    from facelab.core.data.toyfaces import ToyFaces
    from facelab.core.hub import from_pretrained
    from facelab.core.privacy import save_grid
    from facelab.core.recipe import TOY_HELDOUT_OFFSET
    from facelab.partialface.attack import AttackSettings, run_attacks
    from facelab.partialface.plan import resolve_plan
    from facelab.partialface.spectrum import SubsetEncoder

    plan = resolve_plan(args.plan)
    train_set = ToyFaces(
        args.train_identities,
        args.images_per_identity,
        size=args.image_size,
        seed=args.seed,
        difficulty=args.difficulty,
    )
    test_set = ToyFaces(
        args.test_identities,
        args.images_per_identity,
        size=args.image_size,
        seed=args.seed,
        identity_offset=TOY_HELDOUT_OFFSET,
        difficulty=args.difficulty,
    )
    train_images = train_set.render(slice(None))
    test_images = test_set.render(slice(None))
    recognizer = from_pretrained(args.recognizer) if args.recognizer else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = AttackSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        width=args.width,
        depth=args.depth,
        seed=args.seed,
    )
    rows = run_attacks(
        train_images,
        test_images,
        plan,
        kinds=args.kinds,
        settings=settings,
        challenge=(args.subset, args.permutation),
        recognizer=recognizer,
        test_labels=test_set.labels if recognizer is not None else None,
        grid_path=out / "reconstructions.png",
    )
    encoder = SubsetEncoder()
    save_grid(
        out / "pruned_spectrum.png",
        test_images[:8],
        {"pruned-spectrum inverse DCT": encoder.decode_pruned(test_images[:8])},
    )
    write_json(out / "attacks.json", {"plan_id": plan.plan_id, "rows": rows})
    return rows


def _attack(argv: Sequence[str]) -> int:
    import tyro

    def body() -> int:
        args = tyro.cli(AttackArgs, args=list(argv), prog=f"{PROG} attack")
        rows = run_attack_command(args)
        print("| attack | observation | SSIM | PSNR | identity leakage |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['attack']} | {r['observation']} | {r['ssim']:.3f} | {r['psnr']:.2f} | "
                f"{r['identity_leakage']:.3f} |"
            )
        print(f"written to {args.out}")
        return 0

    return run_cli(body, f"{PROG} attack")


COMMANDS = {"train": _train, "embed": _embed, "eval": _eval, "attack": _attack}


def _help() -> None:
    print(f"usage: {PROG} {{{','.join(COMMANDS)}}} [flags]\n")
    print("PartialFace: privacy-preserving face recognition on random frequency components.\n")
    print("  train   train a model on random channel subsets (--preset toy|paper)")
    print("  embed   embed a folder of faces through the challenge/response protocol")
    print("  eval    same-subset and cross-subset verification of a trained run")
    print("  attack  inversion attacks: one subset vs pruned / DuetFace / full spectrum")
    print(f"\nrun `{PROG} <command> --help` for the flags of one command.")


def main(argv: Sequence[str] | None = None) -> int:
    """PartialFace: train, embed through the protocol, evaluate, attack."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        _help()
        return 0
    if args[0] not in COMMANDS:
        print(f"{PROG}: unknown command {args[0]!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args[0]](args[1:])
    except SystemExit as exc:  # tyro --help / parse errors
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
