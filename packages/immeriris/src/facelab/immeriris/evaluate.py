"""Evaluate the classical pipeline, NormKeep and NormFree on the eight protocols.

``evaluate(cfg, networks)`` renders the held-out test subjects (global ids from
``TEST_OFFSET``: never in a training set), measures the six quality factors, builds every
protocol, and scores each method on the shared gallery x every image:

* ``classical``: segmentation -> rubber sheet -> open-iris Gabor codes -> fractional Hamming
  distance (+-15 columns, not normalized: open-iris's matcher default), score ``1 - HD``;
* ``normkeep`` / ``normfree``: cosine similarity of :class:`~facelab.immeriris.model.IrisNet`
  embeddings.

Each method runs on two segmentations, reported apart: ``oracle`` (the generator's truth: no
real system has it) and ``ours`` (:class:`~facelab.immeriris.segment.EllipseSegmenter`, from
the image alone). Images are processed in chunks; iris codes are kept bit-packed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facelab.core.errors import RangeError
from facelab.immeriris.gabor import IrisEncoder
from facelab.immeriris.generator import OcularConfig, OcularDataset
from facelab.immeriris.hamming import hamming_matrix
from facelab.immeriris.metrics import FARS, Verification, det_plot, fuse, verification
from facelab.immeriris.model import IrisNet
from facelab.immeriris.normalize import rubber_sheet
from facelab.immeriris.protocols import (
    EYES,
    PROTOCOLS,
    Protocol,
    QualityThresholds,
    build_protocols,
    protocol_table,
)
from facelab.immeriris.segment import EllipseSegmenter, Segmentation, oracle_segmentation

#: test subjects start here; training sets use ids below it
TEST_OFFSET = 1_000_000
SEGMENTATIONS = ("oracle", "ours")


@dataclass
class EvalConfig:
    """The held-out test set and what to report. The paper's split leaves 110 of 546 subjects
    for testing; the ``toy`` evaluation uses fewer (see the CLI presets)."""

    num_subjects: int = 110
    seed: int = 0
    subject_offset: int = TEST_OFFSET
    captures_per_subject: int | None = None
    generator: OcularConfig = field(default_factory=OcularConfig)
    protocols: tuple[str, ...] = PROTOCOLS
    eyes: tuple[str, ...] = EYES
    thresholds: QualityThresholds = field(default_factory=QualityThresholds)
    gallery_per_class: int = 2
    segmentations: tuple[str, ...] = SEGMENTATIONS
    classical: bool = True
    fars: tuple[float, ...] = FARS
    chunk: int = 128

    def __post_init__(self) -> None:
        if self.num_subjects < 2:
            raise RangeError(
                f"num_subjects: expected at least 2 test subjects, got {self.num_subjects}"
            )
        bad = sorted(set(self.segmentations) - set(SEGMENTATIONS))
        if bad:
            raise RangeError(f"segmentations: expected some of {list(SEGMENTATIONS)}, got {bad}")


@dataclass
class Report:
    """Per method (``"<method> (<segmentation>)"``) and protocol key ``"<Protocol>-<eye>"``."""

    results: dict[str, dict[str, Verification]]
    protocols: dict[tuple[str, str], Protocol]
    segmentation_error: dict[str, float]
    config: dict[str, Any]
    timings: dict[str, float]

    def frr_table(self, eye: str = "left", far: float = 1e-3) -> str:
        """Markdown: FRR (%) at ``far`` per method (rows) and protocol (columns)."""
        names = [p for p in PROTOCOLS if f"{p}-{eye}" in next(iter(self.results.values()), {})]
        lines = [
            f"| method ({eye} eye, FRR % at FAR {far:g}) | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names),
        ]
        for method, res in self.results.items():
            cells = []
            for p in names:
                v = res.get(f"{p}-{eye}")
                if v is None:
                    cells.append("-")
                else:
                    mark = "" if v.support.get(far, 1) >= 1 else "*"
                    cells.append(f"{100 * v.frr[far]:.2f}{mark}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def full_table(self, key: str) -> str:
        """Markdown: every metric of every method on one protocol key."""
        fars = self.config.get("fars", FARS)
        head = (
            "| method | " + " | ".join(f"FRR@{f:g} %" for f in fars) + " | EER % | d' | rank-1 % |"
        )
        lines = [head, "|---|" + "---:|" * (len(fars) + 3)]
        for method, res in self.results.items():
            v = res.get(key)
            if v is None:
                continue
            frr = " | ".join(
                f"{100 * v.frr[f]:.2f}" + ("" if v.support[f] >= 1 else "*") for f in fars
            )
            lines.append(
                f"| {method} | {frr} | {100 * v.eer:.2f} | {v.dprime:.2f} | {100 * v.rank1:.1f} |"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "results": {m: {k: v.to_dict() for k, v in r.items()} for m, r in self.results.items()},
            "protocols": protocol_table(self.protocols),
            "segmentation_error": self.segmentation_error,
            "config": self.config,
            "timings": self.timings,
        }

    def save(self, directory: str | Path, plots: bool = True) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(self.to_dict(), indent=2, default=str))
        md = [
            "# ImmerIris evaluation (procedural data)",
            "",
            "## Protocols",
            "",
            protocol_table(self.protocols),
            "",
        ]
        for eye in ("left", "right", "dual"):
            md += [f"## FRR at FAR 1e-3, {eye}", "", self.frr_table(eye), ""]
        md += [
            "`*`: the FAR allows no impostor pair (fewer than 1/FAR impostors): the rate is the",
            "share of genuine pairs scoring at or below the best impostor.",
            "",
        ]
        for key in sorted({k for r in self.results.values() for k in r}):
            md += [f"### {key}", "", self.full_table(key), ""]
        md += [
            "## Segmentation error (ours vs truth)",
            "",
            json.dumps(self.segmentation_error, indent=2),
            "",
        ]
        (out / "report.md").write_text("\n".join(md))
        if plots:
            for key in sorted({k for r in self.results.values() for k in r}):
                curves = {
                    m: r[key].curve
                    for m, r in self.results.items()
                    if key in r and r[key].curve is not None
                }
                if curves:
                    det_plot(curves, out / f"det_{key}.png", title=f"DET {key}")
        return out


def _pack(bits: torch.Tensor) -> np.ndarray:
    return np.packbits(bits.numpy(), axis=-1)


def _unpack(packed: np.ndarray, channels: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(packed, axis=-1, count=channels).astype(bool))


def segmentation_error(ours: Segmentation, truth: Segmentation) -> dict[str, float]:
    """Median / 90th-percentile centre errors (px) and valid-mask IoU of our segmenter."""
    pc = (ours.pupil[:, :2] - truth.pupil[:, :2]).norm(dim=1)
    ic = (ours.iris[:, :2] - truth.iris[:, :2]).norm(dim=1)
    inter = (ours.valid & truth.valid).sum((1, 2)).float()
    union = (ours.valid | truth.valid).sum((1, 2)).float().clamp_min(1)
    iou = inter / union
    q = torch.tensor([0.5, 0.9])
    a, b = torch.quantile(pc, q).tolist(), torch.quantile(ic, q).tolist()
    m = torch.quantile(iou, q).tolist()
    return {
        "pupil_centre_px_median": a[0], "pupil_centre_px_p90": a[1],
        "iris_centre_px_median": b[0], "iris_centre_px_p90": b[1],
        "valid_iou_median": m[0], "valid_iou_p10": float(torch.quantile(iou, 0.1)),
        "_iou_p90_unused": m[1],
    }  # fmt: skip


def evaluate(
    cfg: EvalConfig,
    networks: Mapping[str, IrisNet] | None = None,
    *,
    keep_curves: bool = True,
    log=print,
) -> Report:
    """Score every method on every protocol; ``networks`` maps a display name (``"NormFree"``,
    ``"NormKeep"``) to a trained :class:`IrisNet`."""
    networks = dict(networks or {})
    t0 = time.perf_counter()
    ds = OcularDataset(
        cfg.num_subjects, cfg.generator, seed=cfg.seed, subject_offset=cfg.subject_offset,
        captures_per_subject=cfg.captures_per_subject,
    )  # fmt: skip
    n = len(ds)
    quality: dict[str, list[torch.Tensor]] = {}
    encoder = IrisEncoder()
    segmenter = EllipseSegmenter()
    packed: dict[str, list[np.ndarray]] = {}
    emb: dict[str, list[torch.Tensor]] = {}
    errs: list[tuple[Segmentation, Segmentation]] = []
    timings = {"render": 0.0, "segment": 0.0, "classical": 0.0, "networks": 0.0}
    channels = encoder.config.channels
    for start in range(0, n, cfg.chunk):
        idx = torch.arange(start, min(n, start + cfg.chunk))
        t = time.perf_counter()
        b = ds.render_truth(idx)
        timings["render"] += time.perf_counter() - t
        for k, v in b.quality.items():
            quality.setdefault(k, []).append(v)
        segs = {"oracle": oracle_segmentation(b)}
        if "ours" in cfg.segmentations:
            t = time.perf_counter()
            segs["ours"] = segmenter(b.images)
            timings["segment"] += time.perf_counter() - t
            if start < 4 * cfg.chunk:  # a sample is enough for the error statistics
                errs.append((segs["ours"], segs["oracle"]))
        for s_name in cfg.segmentations:
            seg = segs[s_name]
            if cfg.classical:
                t = time.perf_counter()
                st = rubber_sheet(b.images, seg.pupil, seg.iris, seg.valid)
                tpl = encoder.encode(st.image, st.mask)
                packed.setdefault(f"classical|{s_name}", []).append(_pack(tpl.codes))
                packed.setdefault(f"classical-mask|{s_name}", []).append(_pack(tpl.masks))
                timings["classical"] += time.perf_counter() - t
            t = time.perf_counter()
            for name, net in networks.items():
                emb.setdefault(f"{name}|{s_name}", []).append(net.embed(b.images, seg))
            timings["networks"] += time.perf_counter() - t
        if start // cfg.chunk % 10 == 0:
            log(
                f"evaluate: {min(n, start + cfg.chunk)}/{n} images ({time.perf_counter() - t0:.0f} s)"
            )
    quality_t = {k: torch.cat(v) for k, v in quality.items()}
    protocols = build_protocols(
        ds.metadata(), quality_t, cfg.protocols, cfg.eyes, cfg.thresholds, cfg.gallery_per_class,
        cfg.generator.size,
    )  # fmt: skip
    # one shared gallery: every image any protocol enrols, against every image
    rows = torch.unique(torch.cat([p.gallery.reshape(-1) for p in protocols.values()]))
    row_of = torch.full((n,), -1, dtype=torch.int64)
    row_of[rows] = torch.arange(rows.numel())

    scores: dict[str, torch.Tensor] = {}
    t = time.perf_counter()
    for s_name in cfg.segmentations:
        if cfg.classical:
            codes = np.concatenate(packed[f"classical|{s_name}"])
            masks = np.concatenate(packed[f"classical-mask|{s_name}"])
            g_codes, g_masks = (
                _unpack(codes[rows.numpy()], channels),
                _unpack(masks[rows.numpy()], channels),
            )
            cols = []
            for c0 in range(0, n, 1024):
                c_codes = _unpack(codes[c0 : c0 + 1024], channels)
                c_masks = _unpack(masks[c0 : c0 + 1024], channels)
                hm = hamming_matrix(g_codes, g_masks, c_codes, c_masks, max_shift=15)
                cols.append(1.0 - hm.distances)
            scores[f"classical ({s_name} seg.)"] = torch.cat(cols, 1)
        for name in networks:
            e = torch.cat(emb[f"{name}|{s_name}"])
            label = f"{name} ({s_name} seg.)"
            scores[label] = (e[rows] @ e.T).double()
    timings["scoring"] = time.perf_counter() - t

    results: dict[str, dict[str, Verification]] = {}
    for method, s in scores.items():
        res: dict[str, Verification] = {}
        for (pname, eye), p in protocols.items():
            if len(p.gallery) == 0 or len(p.probe) == 0:
                continue
            if p.dual:
                left = s[row_of[p.gallery[:, 0]]][:, p.probe[:, 0]]
                right = s[row_of[p.gallery[:, 1]]][:, p.probe[:, 1]]
                m = fuse(left, right)
            else:
                m = s[row_of[p.gallery]][:, p.probe]
            try:
                res[f"{pname}-{eye}"] = verification(
                    m, p.gallery_labels, p.probe_labels, cfg.fars, keep_curves
                )
            except RangeError as e:
                log(f"evaluate: {method} {pname}-{eye} skipped: {e}")
        results[method] = res
    seg_err = {}
    if errs:
        ours = Segmentation(
            *(torch.cat(t) for t in zip(*((o.pupil, o.iris, o.valid) for o, _ in errs)))
        )
        truth = Segmentation(
            *(torch.cat(t) for t in zip(*((o.pupil, o.iris, o.valid) for _, o in errs)))
        )
        seg_err = segmentation_error(ours, truth)
    timings["total"] = time.perf_counter() - t0
    conf = asdict(cfg)
    return Report(results, protocols, seg_err, conf, timings)


def summary_rows(report: Report, far: float = 1e-3) -> list[dict[str, Any]]:
    """Flat rows (method, protocol, eye, FRR at each FAR, EER, d', rank-1) for JSON / suites."""
    rows = []
    for method, res in report.results.items():
        for key, v in res.items():
            pname, eye = key.rsplit("-", 1)
            row = {"method": method, "protocol": pname, "eye": eye}
            row |= {f"frr@{f:g}": v.frr[f] for f in v.frr}
            row |= {
                "eer": v.eer,
                "dprime": v.dprime,
                "rank1": v.rank1,
                "n_genuine": v.n_genuine,
                "n_impostor": v.n_impostor,
            }
            rows.append(row)
    return rows


def nan_safe(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x
