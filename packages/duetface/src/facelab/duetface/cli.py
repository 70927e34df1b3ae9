"""``facelab duetface train | embed | eval | attack``.

* ``train``: the two-stage recipe (``--preset toy`` for CPU minutes, ``--preset paper`` the
  defaults; any field as a flag, e.g. ``--server-train.epochs 5 --data.source /data/faces``);
  writes the bundle (client, client_masks, server) and metrics.json to ``--output-dir``.
* ``embed``: embeddings of a folder of aligned faces through the full protocol (optionally
  through payload bytes), written as safetensors; ``--payload-out`` also writes the payload.
* ``eval``: verification accuracy and TAR@FAR of a bundle on toyfaces held-out pairs and/or
  insightface .bin sets.
* ``attack``: inversion attacks from the payload, the high-frequency channels, the masks and
  the RGB image, plus the inverse-DCT views; JSON and a PNG grid to ``--out``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from facelab.core.recipe import DataConfig, run_cli

PROG = "facelab duetface"
COMMANDS = ("train", "embed", "eval", "attack")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# --------------------------------------------------------------------------------------------
# train


def train_main(argv: Sequence[str]) -> int:
    """Train DuetFace (stage A client, stage B server) and evaluate it."""
    from facelab.core.recipe import parse_with_presets, results_table
    from facelab.duetface.train import DuetFaceConfig, duetface_presets, train

    def body() -> int:
        cfg = parse_with_presets(
            DuetFaceConfig, duetface_presets(), argv, f"{PROG} train", train_main.__doc__ or ""
        )
        result = train(cfg)
        tables = {"duetface": result.verification}
        if result.baseline is not None:
            tables["rgb-baseline"] = result.baseline.verification
        if result.verification:
            print(results_table(tables))
        print(f"bundle saved to {result.output_dir} ({result.wall_time:.0f} s)")
        return 0

    return run_cli(body, f"{PROG} train")


# --------------------------------------------------------------------------------------------
# embed


@dataclass
class EmbedArgs:
    """Embed a folder of aligned faces through client -> payload -> server."""

    model: str
    """a bundle directory written by `facelab duetface train`"""
    images: str
    """an identity-folder tree or a flat folder of aligned face images (model image size)"""
    out: str = "embeddings.safetensors"
    payload_out: str | None = None
    """also write the payload of the first batch (safetensors bytes) here"""
    via_bytes: bool = True
    """serialize every payload and parse it back on the server side, as over a network"""
    payload_dtype: Literal["float32", "float16"] = "float32"
    roi: Literal["template", "mtcnn", "none"] | None = None
    """override the bundle's ROI mode"""
    batch_size: int = 64
    device: str = "auto"


def _load_folder(root: Path, size: int) -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    from PIL import Image

    from facelab.core.data.folders import IdentityFolderDataset, load_image
    from facelab.core.errors import FormatError, ShapeError

    if not root.is_dir():
        raise FormatError(f"images: expected a folder of images, got {str(root)!r}")
    if any(p.is_dir() for p in root.iterdir()):
        ds = IdentityFolderDataset(root)
        images = torch.stack([ds[i][0] for i in range(len(ds))])
        labels, names = ds.labels, list(ds.relative_paths)
    else:
        exts = {e.lower() for e in Image.registered_extensions()}
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in exts)
        if not files:
            raise FormatError(f"images: no image files in {root}")
        images = torch.stack([load_image(p) for p in files])
        labels, names = None, [p.name for p in files]
    if tuple(images.shape[-2:]) != (size, size):
        raise ShapeError(
            f"images: the model takes {size}x{size} aligned faces, the folder holds "
            f"{images.shape[-2]}x{images.shape[-1]}"
        )
    return images, labels, names


def embed_main(argv: Sequence[str]) -> int:
    """Embed aligned faces through the DuetFace protocol."""
    import tyro
    from safetensors.torch import save_file

    from facelab.duetface.protocol import load_client, load_server

    def body() -> int:
        args = tyro.cli(EmbedArgs, args=list(argv), prog=f"{PROG} embed")
        device = _device(args.device)
        dtype = torch.float16 if args.payload_dtype == "float16" else torch.float32
        client = load_client(args.model, roi=args.roi, payload_dtype=dtype).to(device)
        server = load_server(args.model).to(device)
        images, labels, names = _load_folder(Path(args.images), client.image_size)
        outs, sent = [], 0
        for s in range(0, images.shape[0], args.batch_size):
            payload = client.prepare(images[s : s + args.batch_size].to(device))
            data = payload.to_bytes()
            sent += len(data)
            if args.payload_out is not None and s == 0:
                Path(args.payload_out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.payload_out).write_bytes(data)
            outs.append(server.embed(data if args.via_bytes else payload).cpu())
        emb = torch.nn.functional.normalize(torch.cat(outs), dim=1)
        tensors = {"embeddings": emb.contiguous()}
        if labels is not None:
            tensors["labels"] = labels.contiguous()
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out), metadata={"names": json.dumps(names), "model": args.model})
        print(
            f"{emb.shape[0]} embeddings written to {out}; payload {sent / emb.shape[0]:.0f} bytes "
            "per image"
        )
        return 0

    return run_cli(body, f"{PROG} embed")


# --------------------------------------------------------------------------------------------
# eval


@dataclass
class EvalArgs:
    """Verification of a DuetFace bundle through the full protocol."""

    model: str
    """a bundle directory written by `facelab duetface train`"""
    data: DataConfig = field(default_factory=DataConfig)
    """evaluation data: toyfaces held-out pairs (rendered at the model's image size) and/or
    --data.eval-bins"""
    roi: Literal["template", "mtcnn", "none"] | None = None
    batch_size: int = 128
    out: str | None = None
    """write the results as JSON here"""
    device: str = "auto"


def eval_main(argv: Sequence[str]) -> int:
    """Evaluate a DuetFace bundle (10-fold accuracy, TAR@FAR=1e-3)."""
    import tyro

    from facelab.core.recipe import build_eval_sets, results_table, write_json
    from facelab.duetface.evaluate import verification_rows
    from facelab.duetface.protocol import load_pipeline

    def body() -> int:
        args = tyro.cli(EvalArgs, args=list(argv), prog=f"{PROG} eval")
        pipeline = load_pipeline(args.model, roi=args.roi).to(_device(args.device))
        data = dataclasses.replace(args.data, image_size=pipeline.client.image_size)
        sets = build_eval_sets(data)
        rows, results = verification_rows(pipeline, sets, batch_size=args.batch_size)
        print(results_table({"duetface": results}))
        for r in rows:
            print(f"{r['set']}: TAR@FAR=1e-3 {r['tar_at_far_1e-3']:.4f}")
        if args.out:
            write_json(Path(args.out), {"model": args.model, "rows": rows})
        return 0

    return run_cli(body, f"{PROG} eval")


# --------------------------------------------------------------------------------------------
# attack


@dataclass
class AttackArgs:
    """Inversion attacks on what the server sees, against the RGB image."""

    model: str
    """a bundle directory written by `facelab duetface train`"""
    observations: tuple[Literal["rgb", "payload", "high_freq", "masks"], ...] = (
        "rgb",
        "payload",
        "high_freq",
        "masks",
    )
    train_identities: int = 100
    test_identities: int = 30
    images_per_identity: int = 8
    toy_seed: int = 0
    """toyfaces seed; the attack's people are disjoint from training and evaluation people"""
    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-3
    width: int = 16
    depth: int = 2
    seed: int = 0
    recognizer: str | None = None
    """a save_pretrained RGB recognizer for identity leakage (independent of this model)"""
    far: float = 1e-3
    out: str = "runs/duetface-attack"
    device: str = "auto"


#: toyfaces identities used by the attack CLI (disjoint from recipe train/eval identities)
ATTACK_TRAIN_OFFSET = 2_000_000
ATTACK_TEST_OFFSET = 3_000_000


def attack_main(argv: Sequence[str]) -> int:
    """Inversion attacks on the payload vs the RGB image, and the inverse-DCT views."""
    import tyro

    from facelab.core.data.toyfaces import ToyFaces
    from facelab.core.hub import from_pretrained
    from facelab.core.privacy import AttackConfig
    from facelab.core.recipe import write_json
    from facelab.duetface.attack import evaluate_privacy, idct_view_metrics
    from facelab.duetface.protocol import load_client

    def body() -> int:
        args = tyro.cli(AttackArgs, args=list(argv), prog=f"{PROG} attack")
        device = _device(args.device)
        client = load_client(args.model).to(device)
        size = client.image_size

        def faces(n: int, offset: int) -> ToyFaces:
            return ToyFaces(
                n, args.images_per_identity, size=size, seed=args.toy_seed, identity_offset=offset
            )

        train = faces(args.train_identities, ATTACK_TRAIN_OFFSET)
        test = faces(args.test_identities, ATTACK_TEST_OFFSET)
        train_images = train.render(torch.arange(len(train)))
        test_images = test.render(torch.arange(len(test)))
        recognizer = from_pretrained(args.recognizer) if args.recognizer else None
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        rows = evaluate_privacy(
            client,
            train_images,
            test_images,
            observations=args.observations,
            config=AttackConfig(width=args.width, depth=args.depth),
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            recognizer=recognizer,
            test_labels=test.labels,
            far=args.far if recognizer is not None else None,
            grid_path=str(out / "attack_grid.png"),
            device=device,
        )
        views = idct_view_metrics(test_images, client.client.positions)
        write_json(
            out / "attack.json",
            {
                "model": args.model,
                "attacks": rows,
                "idct_views": views,
                "args": dataclasses.asdict(args),
            },
        )
        print("| attack | observation | SSIM | PSNR | identity leakage |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['attack']} | {r['observation']} | {r['ssim']:.3f} | {r['psnr']:.2f} | "
                f"{r['identity_leakage']:.3f} |"
            )
        print(
            f"inverse DCT of the client channels alone: SSIM {views['client_only_ssim']:.3f}, "
            f"of the server channels alone: SSIM {views['server_only_ssim']:.3f}"
        )
        print(f"written to {out}")
        return 0

    return run_cli(body, f"{PROG} attack")


# --------------------------------------------------------------------------------------------


_MAIN = {"train": train_main, "embed": embed_main, "eval": eval_main, "attack": attack_main}


def main(argv: Sequence[str] | None = None) -> int:
    """DuetFace: collaborative privacy-preserving FR by frequency channel splitting."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(f"usage: {PROG} {{{','.join(COMMANDS)}}} [flags]\n")
        print((__doc__ or "").split("\n\n", 1)[1] if __doc__ else "")
        return 0
    name, rest = args[0], args[1:]
    if name not in _MAIN:
        print(f"{PROG}: unknown command {name!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return int(_MAIN[name](rest) or 0)
    except SystemExit as exc:  # tyro --help / usage errors
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
