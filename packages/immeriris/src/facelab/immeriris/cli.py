"""``facelab immeriris generate | train | eval``.

* ``generate``: render a procedural ImmerIris-like set: ``images.safetensors`` (uint8, N x 1 x S
  x S, with the ground-truth ellipses), ``metadata.tsv`` (subject, eye, capture, gaze point,
  brightness level, the six quality factors), and one protocol file per protocol and eye
  (``protocols/<Protocol>-<eye>.tsv``, the format :func:`facelab.immeriris.read_protocol`
  reads). ``--png`` also writes every image as a PNG at the paths the protocol files name.
* ``train``: NormFree or NormKeep (``--model.paradigm``) from a preset (``--preset toy|paper``,
  every field overridable, e.g. ``--train.epochs 3``).
* ``eval``: the classical pipeline and any trained networks on the eight protocols, three eyes,
  both segmentations; writes ``report.md``, ``report.json`` and DET plots.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from facelab.core.errors import FacelabError, UnknownNameError

# --------------------------------------------------------------------------------------------
# generate


@dataclass
class GenerateArgs:
    """Render a procedural ImmerIris-like dataset with its protocol files."""

    out: str
    """output folder"""
    subjects: int = 20
    seed: int = 0
    subject_offset: int = 0
    size: int = 128
    repeats: int = 1
    gaze_angle_deg: float = 20.0
    camera_pitch_deg: float = 0.0
    png: bool = False
    """also write one PNG per image"""


def image_name(subject: int, eye: int, capture: int) -> str:
    return f"S{subject:07d}/{'LR'[eye]}/{capture:04d}.png"


def generate(args: GenerateArgs) -> Path:
    from safetensors.torch import save_file

    from facelab.immeriris.generator import OcularConfig, OcularDataset
    from facelab.immeriris.protocols import build_protocols, protocol_table, write_protocol

    cfg = OcularConfig(
        size=args.size, repeats=args.repeats, gaze_angle_deg=args.gaze_angle_deg,
        camera_pitch_deg=args.camera_pitch_deg,
    )  # fmt: skip
    ds = OcularDataset(args.subjects, cfg, seed=args.seed, subject_offset=args.subject_offset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(ds)
    images = torch.empty(n, 1, cfg.size, cfg.size, dtype=torch.uint8)
    pupil, iris = torch.empty(n, 5), torch.empty(n, 5)
    quality: dict[str, list[torch.Tensor]] = {}
    for start in range(0, n, 512):
        idx = torch.arange(start, min(n, start + 512))
        b = ds.render_truth(idx)
        images[idx] = ((b.images + 1) * 127.5).round().to(torch.uint8)
        pupil[idx], iris[idx] = b.pupil, b.iris
        for k, v in b.quality.items():
            quality.setdefault(k, []).append(v)
    q = {k: torch.cat(v) for k, v in quality.items()}
    meta = ds.metadata()
    names = [
        image_name(int(s), int(e), int(c))
        for s, e, c in zip(meta["subject"], meta["eye"], meta["capture"])
    ]
    save_file(
        {"images": images, "pupil": pupil, "iris": iris},
        str(out / "images.safetensors"),
        metadata={
            "format": "facelab.immeriris.images",
            "version": "1",
            "config": str(cfg.to_dict()),
        },
    )
    with (out / "metadata.tsv").open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        cols = ["image", "subject", "eye", "capture", "gaze_point", "level", *q]
        w.writerow(cols)
        for i in range(n):
            w.writerow(
                [names[i], int(meta["subject"][i]), "LR"[int(meta["eye"][i])], int(meta["capture"][i]),
                 int(meta["gaze_point"][i]), int(meta["level"][i]), *(f"{float(q[k][i]):.4f}" for k in q)]
            )  # fmt: skip
    protocols = build_protocols(meta, q, image_size=cfg.size)
    for (name, eye), p in protocols.items():
        rows = p.gallery.reshape(-1).tolist() + p.probe.reshape(-1).tolist()
        if rows:
            write_protocol(
                out / "protocols" / f"{name}-{eye}.tsv",
                p,
                names,
                meta["subject"],
                meta["eye"],
                meta["capture"],
            )
    (out / "protocols.md").write_text(protocol_table(protocols) + "\n")
    if args.png:
        from matplotlib import pyplot as plt

        for i, name in enumerate(names):
            path = out / name
            path.parent.mkdir(parents=True, exist_ok=True)
            plt.imsave(path, images[i, 0].numpy(), cmap="gray", vmin=0, vmax=255)
    print(f"wrote {n} images of {args.subjects} subjects to {out}")
    print(protocol_table(protocols))
    return out


# --------------------------------------------------------------------------------------------
# train


def train_command(argv: Sequence[str]) -> int:
    """Train NormFree / NormKeep (``--model.paradigm``) from a preset."""
    import logging

    from facelab.core.recipe import parse_with_presets
    from facelab.immeriris.generator import deferred_checks
    from facelab.immeriris.train import RecipeConfig, presets, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with deferred_checks():  # range errors end as one line, not as tyro's usage box
        cfg = parse_with_presets(
            RecipeConfig, presets(), argv, "facelab immeriris train", train_command.__doc__ or "",
            "toy",
        )  # fmt: skip
    cfg.data.check()
    out = train(cfg)
    print(f"trained {out.result.step} steps in {out.wall_time:.0f} s; losses {out.result.losses}")
    print(f"model saved to {out.output_dir / 'model'}")
    return 0


# --------------------------------------------------------------------------------------------
# eval


@dataclass
class EvalArgs:
    """Evaluate the classical pipeline and trained networks on the eight protocols."""

    out: str = "results/immeriris"
    preset: Literal["toy", "paper"] = "toy"
    """toy: 30 test subjects x 99 captures; paper: 110 x 495 (ImmerIris-sized)"""
    normfree: str | None = None
    """a NormFree model folder (train's output_dir/model)"""
    normkeep: str | None = None
    subjects: int | None = None
    seed: int = 0
    repeats: int | None = None
    classical: bool = True
    segmentations: tuple[Literal["oracle", "ours"], ...] = ("oracle", "ours")
    plots: bool = True


def eval_config(args: EvalArgs):
    from facelab.immeriris.evaluate import EvalConfig
    from facelab.immeriris.generator import OcularConfig

    if args.preset not in ("toy", "paper"):
        raise UnknownNameError(f"unknown preset {args.preset!r}; valid: ['paper', 'toy']")
    subjects, repeats = (30, 1) if args.preset == "toy" else (110, 5)
    return EvalConfig(
        num_subjects=args.subjects or subjects,
        seed=args.seed,
        generator=OcularConfig(repeats=args.repeats or repeats),
        segmentations=tuple(args.segmentations),
        classical=args.classical,
    )


def run_eval(args: EvalArgs) -> Path:
    from facelab.immeriris.evaluate import evaluate
    from facelab.immeriris.model import IrisNet

    nets = {}
    for name, path in (("NormKeep", args.normkeep), ("NormFree", args.normfree)):
        if path:
            nets[name] = IrisNet.from_pretrained(path)
    if not nets and not args.classical:
        raise FacelabError(
            "eval: nothing to evaluate: pass --normfree/--normkeep models or keep --classical"
        )
    report = evaluate(eval_config(args), nets)
    out = report.save(args.out, plots=args.plots)
    for eye in ("left", "dual"):
        print(report.frr_table(eye))
        print()
    print(f"report: {out / 'report.md'}")
    return out


# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """ImmerIris: procedural off-axis iris data, NormFree / NormKeep / classical recognition."""
    import tyro

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "train":
        return train_command(args[1:])
    if not args or args[0] in ("-h", "--help"):
        print(
            "usage: facelab immeriris {generate,train,eval} [flags]\n\n"
            "  generate  render a procedural ImmerIris-like set with its protocol files\n"
            "  train     train NormFree / NormKeep from a preset (--preset toy|paper)\n"
            "  eval      classical pipeline and networks on the eight protocols\n"
        )
        return 0
    commands = {"generate": (GenerateArgs, generate), "eval": (EvalArgs, run_eval)}
    if args[0] not in commands:
        raise UnknownNameError(
            f"unknown subcommand {args[0]!r}; valid: ['eval', 'generate', 'train']"
        )
    cls, fn = commands[args[0]]
    parsed = tyro.cli(cls, args=args[1:], prog=f"facelab immeriris {args[0]}")
    fn(parsed)
    return 0
