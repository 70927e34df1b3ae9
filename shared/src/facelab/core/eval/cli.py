"""``facelab eval``: evaluate a face recognition model and print the results table.

Model (one of):
  --model DIR                      a ``facelab.core.hub.save_pretrained`` directory
  --insightface PATH --backbone r50  an insightface arcface_torch ``backbone.pth``

Targets (any combination):
  --bin lfw.bin cfp_fp.bin ...     insightface verification sets (10-fold accuracy, VAL@FAR)
  --pairs pairs.txt --pairs-root DIR   an LFW-style pair list over aligned images
  --ijb ROOT [--ijb-name IJBC]     IJB-B/C 1:1 template verification (TAR at FAR 1e-6..1e-1)

``--out DIR`` also writes report.md, report.json and ROC/DET plots there.

Heavy modules (backbones, hub, data) are imported only when a command needs them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facelab.core.cli import ArgumentParser, bad_input_exit
from facelab.core.errors import FacelabTypeError, ShapeError
from facelab.core.eval.embed import embed
from facelab.core.eval.metrics import IJB_FARS, RocCurve, roc
from facelab.core.eval.report import EvalReport
from facelab.core.eval.verification import verify

# --------------------------------------------------------------------------------------------
# model loading


def load_model(
    model_dir: str | Path | None = None,
    insightface: str | Path | None = None,
    backbone: str = "r50",
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """A model in eval mode on ``device`` from a hub directory or an insightface checkpoint."""
    if (model_dir is None) == (insightface is None):
        raise FacelabTypeError(
            "model: expected exactly one of --model DIR or --insightface PATH, got "
            f"{'both' if model_dir is not None else 'neither'}"
        )
    if model_dir is not None:
        from facelab.core.hub import from_pretrained

        model = from_pretrained(model_dir, map_location="cpu")
    else:
        from facelab.core.backbones import load_insightface

        model = load_insightface(insightface, backbone)
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------
# evaluation drivers (called by the CLI; usable from Python with any nn.Module)


def _cosine_from_interleaved(emb: torch.Tensor) -> np.ndarray:
    return (emb[0::2] * emb[1::2]).sum(1).double().numpy()


def _add_pair_result(
    report: EvalReport,
    curves: dict[str, RocCurve],
    name: str,
    emb1: torch.Tensor,
    emb2: torch.Tensor,
    issame: Any,
    nfolds: int,
) -> None:
    same = np.asarray(issame, dtype=bool)
    result = verify(emb1, emb2, same, nfolds)
    report.add_verification(name, result)
    scores = (emb1 * emb2).sum(1).double().numpy()
    curve = roc(scores, same)
    curves[name] = curve
    report.rows[-1]["EER"] = curve.eer()[0]
    report.rate_columns.add("EER")


def evaluate_bins(
    model: torch.nn.Module,
    bin_paths: Sequence[str | Path],
    *,
    batch_size: int = 128,
    flip: bool = True,
    nfolds: int = 10,
    image_size: tuple[int, int] = (112, 112),
    resize: bool = False,
    report: EvalReport | None = None,
    curves: dict[str, RocCurve] | None = None,
) -> EvalReport:
    """insightface verification on ``.bin`` sets: one report row per file (name = file stem)."""
    from facelab.core.data.verification import load_bin

    report = report if report is not None else EvalReport()
    curves = curves if curves is not None else {}
    for path in bin_paths:
        path = Path(path)
        images, issame = load_bin(path, image_size, resize=resize)
        emb = embed(model, images, flip=flip, batch_size=batch_size)
        del images
        _add_pair_result(report, curves, path.stem, emb[0::2], emb[1::2], issame, nfolds)
    return report


class _ImageFiles(torch.utils.data.Dataset):
    """Aligned face images read from files (float (3, H, W) in [-1, 1], size checked)."""

    def __init__(self, paths: Sequence[Path], image_size: tuple[int, int]):
        self.paths = list(paths)
        self.image_size = tuple(image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from facelab.core.data.folders import load_image

        img = load_image(self.paths[i])
        if tuple(img.shape[1:]) != self.image_size:
            raise ShapeError(
                f"{self.paths[i]}: expected an aligned {self.image_size[0]}x"
                f"{self.image_size[1]} face, got {img.shape[1]}x{img.shape[2]}"
            )
        return img


def evaluate_pair_list(
    model: torch.nn.Module,
    pairs_txt: str | Path,
    root: str | Path,
    *,
    ext: str = "jpg",
    batch_size: int = 128,
    flip: bool = True,
    nfolds: int = 10,
    image_size: tuple[int, int] = (112, 112),
    num_workers: int = 0,
    report: EvalReport | None = None,
    curves: dict[str, RocCurve] | None = None,
) -> EvalReport:
    """10-fold verification over an LFW-style ``pairs.txt``; each image is embedded once."""
    from facelab.core.data.verification import read_pairs

    report = report if report is not None else EvalReport()
    curves = curves if curves is not None else {}
    pairs, issame = read_pairs(pairs_txt, root, ext)
    flat = [p for pair in pairs for p in pair]
    unique, inverse = np.unique(np.array([str(p) for p in flat]), return_inverse=True)
    ds = _ImageFiles([Path(u) for u in unique], image_size)
    emb = embed(model, ds, flip=flip, batch_size=batch_size, num_workers=num_workers)
    idx = torch.from_numpy(inverse.reshape(-1, 2).astype(np.int64))
    name = Path(pairs_txt).stem
    _add_pair_result(report, curves, name, emb[idx[:, 0]], emb[idx[:, 1]], issame, nfolds)
    return report


def evaluate_ijb(
    model: torch.nn.Module,
    root: str | Path,
    name: str = "IJBC",
    *,
    batch_size: int = 128,
    flip: bool = True,
    num_workers: int = 0,
    image_size: int = 112,
    norm_weighting: bool = False,
    faceness_weighting: bool = False,
    fars: Sequence[float] = IJB_FARS,
    report: EvalReport | None = None,
    curves: dict[str, RocCurve] | None = None,
) -> EvalReport:
    """IJB-B/C 1:1: embed every loose crop (aligned with its 5 landmarks), build templates,
    report TAR at each FAR."""
    from facelab.core.eval.ijb import IJBImages, ijb_verification, load_ijb_meta

    report = report if report is not None else EvalReport()
    curves = curves if curves is not None else {}
    meta = load_ijb_meta(root, name)
    feats = embed(
        model,
        IJBImages(meta, size=image_size),
        flip=flip,
        batch_size=batch_size,
        num_workers=num_workers,
        normalize=not norm_weighting,
        progress=sys.stderr.isatty(),
    )
    tars, scores = ijb_verification(
        feats,
        meta,
        fars,
        norm_weighting=norm_weighting,
        faceness_weighting=faceness_weighting,
        return_scores=True,
    )
    curves[meta.name] = roc(scores, meta.pair_labels)
    report.add_tar_at_far(meta.name, tars, pairs=meta.num_pairs)
    return report


# --------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="facelab eval",
        description="Evaluate a face recognition model on verification sets, pair lists or "
        "IJB-B/C and print the results table.",
    )
    m = p.add_argument_group("model (one of)")
    m.add_argument("--model", type=Path, metavar="DIR", help="a save_pretrained directory")
    m.add_argument(
        "--insightface", type=Path, metavar="PATH", help="an insightface backbone.pth state dict"
    )
    m.add_argument("--backbone", default="r50", help="iresnet of --insightface (default r50)")
    t = p.add_argument_group("targets (at least one)")
    t.add_argument(
        "--bin", type=Path, nargs="+", default=[], metavar="PATH", help="insightface .bin sets"
    )
    t.add_argument("--pairs", type=Path, metavar="TXT", help="LFW-style pairs.txt")
    t.add_argument(
        "--pairs-root", type=Path, metavar="DIR", help="image root of --pairs (name/name_0001.jpg)"
    )
    t.add_argument("--pairs-ext", default="jpg", help="image extension of --pairs")
    t.add_argument(
        "--ijb", type=Path, metavar="DIR", help="IJB folder (with meta/ and loose_crop/)"
    )
    t.add_argument("--ijb-name", default="IJBC", choices=["IJBB", "IJBC"])
    o = p.add_argument_group("options")
    o.add_argument("--batch-size", type=int, default=128)
    o.add_argument("--no-flip", action="store_true", help="no flip test (embed f(x) only)")
    o.add_argument("--nfolds", type=int, default=10)
    o.add_argument("--image-size", type=int, default=112)
    o.add_argument("--resize", action="store_true", help="resize .bin images of another size")
    o.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    o.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for files")
    o.add_argument("--norm-weighting", action="store_true", help="IJB: insightface's N1 mode")
    o.add_argument("--faceness-weighting", action="store_true", help="IJB: insightface's D1")
    o.add_argument(
        "--out", type=Path, metavar="DIR", help="write report.md, report.json and plots here"
    )
    o.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    return p


def run(args: argparse.Namespace, model: torch.nn.Module | None = None) -> EvalReport:
    """Everything ``facelab eval`` does after parsing; ``model`` overrides --model/--insightface."""
    if not (args.bin or args.pairs or args.ijb):
        raise FacelabTypeError("targets: expected at least one of --bin, --pairs or --ijb")
    if args.pairs is not None and args.pairs_root is None:
        raise FacelabTypeError("--pairs: expected --pairs-root DIR with the images too")
    if model is None:
        model = load_model(args.model, args.insightface, args.backbone, args.device)
    flip = not args.no_flip
    size = (args.image_size, args.image_size)
    report = EvalReport(
        title="facelab eval",
        settings={
            "model": str(args.model or args.insightface or type(model).__name__),
            "backbone": args.backbone if args.insightface else "-",
            "flip test": flip,
            "nfolds": args.nfolds,
            "device": str(args.device),
        },
        notes=[
            "verification: insightface 10-fold protocol (squared L2 of normalized embeddings, "
            "best threshold of 9 folds applied to the 10th); VAL at FAR=1e-3",
            "TAR@FAR: ROC point nearest to the FAR (insightface's IJB rule)",
        ],
    )
    curves: dict[str, RocCurve] = {}
    if args.bin:
        evaluate_bins(
            model,
            args.bin,
            batch_size=args.batch_size,
            flip=flip,
            nfolds=args.nfolds,
            image_size=size,
            resize=args.resize,
            report=report,
            curves=curves,
        )
    if args.pairs is not None:
        evaluate_pair_list(
            model,
            args.pairs,
            args.pairs_root,
            ext=args.pairs_ext,
            batch_size=args.batch_size,
            flip=flip,
            nfolds=args.nfolds,
            image_size=size,
            num_workers=args.num_workers,
            report=report,
            curves=curves,
        )
    if args.ijb is not None:
        evaluate_ijb(
            model,
            args.ijb,
            args.ijb_name,
            batch_size=args.batch_size,
            flip=flip,
            num_workers=args.num_workers,
            image_size=args.image_size,
            norm_weighting=args.norm_weighting,
            faceness_weighting=args.faceness_weighting,
            report=report,
            curves=curves,
        )
    if args.out is not None and curves:
        from facelab.core.eval.plots import plot_det, plot_roc

        report.plots["roc"] = str(plot_roc(curves, args.out / "roc.png"))
        report.plots["det"] = str(plot_det(curves, args.out / "det.png"))
    if args.out is not None:
        report.save(args.out)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate a model on .bin sets, pair lists or IJB-B/C and print the table."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        report = run(args)
    except Exception as exc:
        return bad_input_exit("facelab eval", exc)
    print(report.to_json() if args.json else report.table())
    if args.out is not None:
        print(f"\nwrote {args.out / 'report.md'} and {args.out / 'report.json'}")
    return 0
