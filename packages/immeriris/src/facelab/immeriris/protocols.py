"""The eight ImmerIris protocols, built from the six quality factors; protocol files.

ImmerIris defines four *isolated* protocols (one challenge at a time: Occlusion, Dilation,
Light, Gaze) and four *combined* ones (Control, Fix, Select, Any), each for the left eye, the
right eye and both eyes. The paper's exact selection rules are not available to us; these are
ours, written so that each protocol isolates what its name says (thresholds in
:class:`QualityThresholds`):

=========  =============================================================================
gallery    every protocol: centre gaze, normal light (levels 3-7), clean; the first
           ``gallery_per_class`` such images of each eye (capture order)
Control    probes as the gallery: centre gaze, normal light, clean
Occlusion  centre gaze, normal light, eyelid or eyelash occlusion extreme, otherwise clean
Dilation   centre gaze, normal light, extreme dilation, otherwise clean
Light      centre gaze, extreme light (levels 0-1, 9-10), otherwise clean (dilation free:
           the display's brightness drives it)
Gaze       off-centre gaze (the 8 outer points of the 3x3 grid), normal light, clean
Fix        centre gaze, anything else
Select     any gaze and light, passing a quality gate (no extreme occlusion, glare or blur)
Any        every image
=========  =============================================================================

"clean" means none of: extreme eyelid or eyelash occlusion, extreme dilation, specular glare,
motion blur. Probes never include gallery images. A *dual-eye* probe is a capture whose left
and right images are both probes of that protocol (the gallery likewise); its score against a
gallery capture is the mean of the two eyes' scores (:func:`facelab.immeriris.metrics.fuse`).

Protocol files (for the real ImmerIris data): one tab-separated file per protocol and eye, a
header line then one line per image::

    role    image                   subject  eye    capture
    gallery S0001/L/S0001_L_0003.png  S0001  left   0003
    probe   S0001/L/S0001_L_0117.png  S0001  left   0117

``role`` is ``gallery`` or ``probe``; ``image`` a path relative to the data root; ``subject`` any
identifier; ``eye`` ``left`` or ``right``; ``capture`` an identifier shared by the two images of
one capture (it pairs them in dual-eye files, where both eyes appear). Lines starting with
``#`` are comments. This is the format we assume; the official files, if they differ, need a
one-line converter. :func:`write_protocol` writes the generated protocols in it.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facelab.core.errors import FormatError, RangeError, UnknownNameError
from facelab.immeriris.generator import CENTRE_GAZE

PROTOCOLS = ("Control", "Occlusion", "Dilation", "Light", "Gaze", "Fix", "Select", "Any")
EYES = ("left", "right", "dual")
ISOLATED = ("Occlusion", "Dilation", "Light", "Gaze")
COMBINED = ("Control", "Fix", "Select", "Any")
HEADER = ("role", "image", "subject", "eye", "capture")


@dataclass(frozen=True)
class QualityThresholds:
    """When a quality factor counts as *extreme* (ours; see the module doc)."""

    eyelid: float = 0.30  # fraction of the iris annulus under the lids
    eyelash: float = 0.08  # fraction of the annulus under lashes
    dilation_low: float = 0.25  # pupil / iris radius below this ...
    dilation_high: float = 0.55  # ... or above this
    specular: float = 0.04  # fraction of the annulus under glints / glare
    blur: float = 2.5  # motion-blur length in pixels (at 128 px images; scaled with size)
    normal_levels: tuple[int, int] = (3, 7)  # display brightness levels counted as normal
    extreme_levels: tuple[int, ...] = (0, 1, 9, 10)


@dataclass
class Protocol:
    """One protocol for one eye: indices into the image set (single eye) or (K, 2) pairs of
    (left, right) indices (dual), and their identity labels."""

    name: str
    eye: str
    gallery: torch.Tensor
    probe: torch.Tensor
    gallery_labels: torch.Tensor
    probe_labels: torch.Tensor

    @property
    def dual(self) -> bool:
        return self.eye == "dual"

    def __repr__(self) -> str:
        return f"Protocol({self.name}-{self.eye}: {len(self.gallery)} gallery, {len(self.probe)} probes)"


def quality_flags(
    quality: Mapping[str, torch.Tensor],
    gaze_point: torch.Tensor,
    level: torch.Tensor,
    thresholds: QualityThresholds | None = None,
    image_size: int = 128,
) -> dict[str, torch.Tensor]:
    """Boolean flags per image: occluded, dilated, glare, blurred, off_axis, light_normal,
    light_extreme, clean."""
    t = thresholds or QualityThresholds()
    occluded = (quality["eyelid"] > t.eyelid) | (quality["eyelash"] > t.eyelash)
    dil = quality["dilation"]
    dilated = (dil < t.dilation_low) | (dil > t.dilation_high)
    glare = quality["specular"] > t.specular
    blurred = quality["blur"] > t.blur * image_size / 128
    lo, hi = t.normal_levels
    light_normal = (level >= lo) & (level <= hi)
    light_extreme = torch.isin(level, torch.tensor(t.extreme_levels))
    return {
        "occluded": occluded,
        "dilated": dilated,
        "glare": glare,
        "blurred": blurred,
        "off_axis": gaze_point != CENTRE_GAZE,
        "light_normal": light_normal,
        "light_extreme": light_extreme,
        "clean": ~(occluded | dilated | glare | blurred),
    }


def probe_rule(name: str, f: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The probe condition of protocol ``name`` (before removing gallery images)."""
    centre, normal = ~f["off_axis"], f["light_normal"]
    if name == "Control":
        return centre & normal & f["clean"]
    if name == "Occlusion":
        return centre & normal & f["occluded"] & ~(f["dilated"] | f["glare"] | f["blurred"])
    if name == "Dilation":
        return centre & normal & f["dilated"] & ~(f["occluded"] | f["glare"] | f["blurred"])
    if name == "Light":
        return centre & f["light_extreme"] & ~(f["occluded"] | f["glare"] | f["blurred"])
    if name == "Gaze":
        return f["off_axis"] & normal & f["clean"]
    if name == "Fix":
        return centre
    if name == "Select":
        return ~(f["occluded"] | f["glare"] | f["blurred"])
    if name == "Any":
        return torch.ones_like(centre)
    raise UnknownNameError(f"unknown protocol {name!r}; valid: {list(PROTOCOLS)}")


def _first_per_class(candidates: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the first ``k`` candidates (in index order) of every label."""
    idx = torch.nonzero(candidates).flatten()
    if idx.numel() == 0:
        return idx
    lab = labels[idx]
    order = torch.argsort(lab, stable=True)
    idx, lab = idx[order], lab[order]
    start = torch.searchsorted(lab, lab, right=False)
    rank = torch.arange(lab.numel()) - start
    return torch.sort(idx[rank < k]).values


def build_protocols(
    metadata: Mapping[str, torch.Tensor],
    quality: Mapping[str, torch.Tensor],
    names: tuple[str, ...] = PROTOCOLS,
    eyes: tuple[str, ...] = EYES,
    thresholds: QualityThresholds | None = None,
    gallery_per_class: int = 2,
    image_size: int = 128,
) -> dict[tuple[str, str], Protocol]:
    """Every requested (protocol, eye) over a generated image set.

    ``metadata``: :meth:`OcularDataset.metadata` (label, subject, eye, capture, gaze_point,
    level); samples ``2j`` / ``2j + 1`` must be the left / right image of one capture (the
    dataset's layout). ``quality``: the six factors of every image."""
    label, subject, eye = metadata["label"], metadata["subject"], metadata["eye"]
    n = label.numel()
    if n % 2 or not bool((eye[0::2] == 0).all() and (eye[1::2] == 1).all()):
        raise FormatError("metadata: expected left/right images of each capture at 2j and 2j + 1")
    for k in ("eyelid", "eyelash", "dilation", "specular", "blur"):
        if k not in quality or quality[k].shape != (n,):
            raise FormatError(f"quality: expected factor {k!r} of shape ({n},)")
    flags = quality_flags(
        quality, metadata["gaze_point"], metadata["level"], thresholds, image_size
    )
    enrol = ~flags["off_axis"] & flags["light_normal"] & flags["clean"]
    # single-eye gallery: first k enrolment images per eye class; dual: first k captures of a
    # subject where both eyes qualify
    gallery_single = torch.zeros(n, dtype=torch.bool)
    gallery_single[_first_per_class(enrol, label, gallery_per_class)] = True
    both = enrol[0::2] & enrol[1::2]
    cap_subject = subject[0::2]
    gallery_dual = torch.zeros(n // 2, dtype=torch.bool)
    gallery_dual[_first_per_class(both, cap_subject, gallery_per_class)] = True
    out: dict[tuple[str, str], Protocol] = {}
    for name in names:
        rule = probe_rule(name, flags)
        for e in eyes:
            if e not in EYES:
                raise UnknownNameError(f"unknown eye {e!r}; valid: {list(EYES)}")
            if e == "dual":
                pairs = torch.stack([torch.arange(0, n, 2), torch.arange(1, n, 2)], 1)
                probe_cap = rule[0::2] & rule[1::2] & ~gallery_dual
                g, p = pairs[gallery_dual], pairs[probe_cap]
                out[(name, e)] = Protocol(
                    name, e, g, p, cap_subject[gallery_dual], cap_subject[probe_cap]
                )
            else:
                side = eye == EYES.index(e)
                g = torch.nonzero(gallery_single & side).flatten()
                p = torch.nonzero(rule & side & ~gallery_single).flatten()
                out[(name, e)] = Protocol(name, e, g, p, label[g], label[p])
    return out


def protocol_table(protocols: Mapping[tuple[str, str], Protocol]) -> str:
    """Markdown table of gallery / probe sizes and genuine / impostor pair counts."""
    lines = [
        "| protocol | eye | gallery | probes | genuine pairs | impostor pairs |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for (name, eye), p in protocols.items():
        same = p.gallery_labels.view(-1, 1) == p.probe_labels.view(1, -1)
        gen = int(same.sum())
        lines.append(
            f"| {name} | {eye} | {len(p.gallery)} | {len(p.probe)} | {gen} | {same.numel() - gen} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# protocol files


@dataclass
class ProtocolFile:
    """A protocol read from a file: image paths (relative to the root), subject ids, eyes,
    capture ids and roles, one entry per line."""

    images: list[str]
    subjects: list[str]
    eyes: list[str]
    captures: list[str]
    roles: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def select(self, role: str, eye: str) -> np.ndarray:
        return np.array(
            [i for i, (r, e) in enumerate(zip(self.roles, self.eyes)) if r == role and e == eye],
            dtype=np.int64,
        )

    def dual_pairs(self, role: str) -> tuple[np.ndarray, list[str]]:
        """(K, 2) line indices of (left, right) images sharing a capture, and their subjects."""
        left = {(self.subjects[i], self.captures[i]): i for i in self.select(role, "left")}
        right = {(self.subjects[i], self.captures[i]): i for i in self.select(role, "right")}
        keys = sorted(set(left) & set(right))
        pairs = np.array([[left[k], right[k]] for k in keys], dtype=np.int64).reshape(-1, 2)
        return pairs, [k[0] for k in keys]


def read_protocol(path: str | Path) -> ProtocolFile:
    """Read a protocol file (format in the module doc). Every malformed line is an error that
    names the file and the line."""
    path = Path(path)
    rows: list[list[str]] = []
    with path.open(newline="") as fh:
        lines = [
            (i + 1, ln) for i, ln in enumerate(fh) if ln.strip() and not ln.lstrip().startswith("#")
        ]
    if not lines:
        raise FormatError(
            f"{path}: expected a header line {list(HEADER)} and image lines, got an empty file"
        )
    header = next(csv.reader([lines[0][1]], delimiter="\t"))
    if tuple(h.strip() for h in header) != HEADER:
        raise FormatError(f"{path}:{lines[0][0]}: expected the header {list(HEADER)}, got {header}")
    for lineno, text in lines[1:]:
        fields = [f.strip() for f in next(csv.reader([text], delimiter="\t"))]
        if len(fields) != len(HEADER):
            raise FormatError(
                f"{path}:{lineno}: expected {len(HEADER)} tab-separated fields {list(HEADER)}, got {len(fields)}"
            )
        role, image, subject, eye, _capture = fields
        if role not in ("gallery", "probe"):
            raise FormatError(f"{path}:{lineno}: role: expected 'gallery' or 'probe', got {role!r}")
        if eye not in ("left", "right"):
            raise FormatError(f"{path}:{lineno}: eye: expected 'left' or 'right', got {eye!r}")
        if not image or not subject:
            raise FormatError(f"{path}:{lineno}: expected a non-empty image path and subject")
        rows.append(fields)
    if not rows:
        raise FormatError(f"{path}: expected at least one image line after the header")
    roles, images, subjects, eyes, captures = (list(c) for c in zip(*rows))
    if "gallery" not in roles or "probe" not in roles:
        raise FormatError(
            f"{path}: expected both gallery and probe lines, got roles {sorted(set(roles))}"
        )
    return ProtocolFile(images, subjects, eyes, captures, roles)


def write_protocol(
    path: str | Path, protocol: Protocol, names: list[str], subjects, eyes, captures
) -> Path:
    """Write a generated protocol in the file format (``names`` etc. are per image of the image
    set the protocol indexes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    idx = {
        "gallery": protocol.gallery.reshape(-1).tolist(),
        "probe": protocol.probe.reshape(-1).tolist(),
    }
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(HEADER)
        for role in ("gallery", "probe"):
            for i in idx[role]:
                w.writerow([role, names[i], str(subjects[i]), EYES[int(eyes[i])], str(captures[i])])
    return path


def check_gallery(protocol: Protocol) -> None:
    if len(protocol.gallery) == 0 or len(protocol.probe) == 0:
        raise RangeError(
            f"protocol {protocol.name}-{protocol.eye}: expected a non-empty gallery and probe set, "
            f"got {len(protocol.gallery)} gallery and {len(protocol.probe)} probe entries"
        )
