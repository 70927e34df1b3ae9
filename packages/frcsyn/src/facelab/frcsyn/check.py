"""Does a training set satisfy an FRCSyn sub-task? Counts, a verdict and the reasons.

The rules (see :mod:`facelab.frcsyn.subtasks`): x.1 at most 500,000 synthetic images and no real
image; x.2 synthetic images only, any number; x.3 the real CASIA-WebFace plus at most 500,000
synthetic images. What the checker can and cannot know:

* image counts are exact (from a manifest, an index, a RecordIO index or a file scan);
* whether images are real is known only when a generator's manifest says so
  (``real_images`` / ``source`` / ``contains_real``); a source without a manifest counts as
  what it was passed as, and the result says so;
* that a real part *is* CASIA-WebFace cannot be proven from files; the checker bounds its size
  by CASIA-WebFace's (494,414 images of 10,575 people) and says that this is all it checks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from facelab.core.errors import FacelabError
from facelab.frcsyn.sources import SourceCount, count_source
from facelab.frcsyn.subtasks import (
    CASIA_WEBFACE_IDENTITIES,
    CASIA_WEBFACE_IMAGES,
    SubTask,
    get_subtask,
)


class SubtaskError(FacelabError):
    """Training data that breaks the rules of the FRCSyn sub-task it is used for."""


@dataclass(frozen=True)
class CheckResult:
    """The verdict of :func:`check_subtask`: ``ok`` and, when not, the ``reasons``."""

    subtask: SubTask
    synthetic: tuple[SourceCount, ...]
    real: tuple[SourceCount, ...]
    synthetic_images: int
    real_images: int
    ok: bool
    reasons: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def num_images(self) -> int:
        return self.synthetic_images + self.real_images

    def summary(self) -> str:
        """A few lines for people: the counts, the verdict, the reasons and notes."""
        st = self.subtask
        lines = [f"FRCSyn sub-task {st.id} ({st.title}): {st.rule}"]
        for role, srcs in (("synthetic", self.synthetic), ("real", self.real)):
            for s in srcs:
                ids = "?" if s.num_identities is None else f"{s.num_identities:,}"
                gen = ""
                if s.manifest is not None and s.manifest.generator:
                    gen = f", generator {s.manifest.generator}"
                lines.append(
                    f"  {role:9s} {s.path}: {s.num_images:,} images, {ids} identities "
                    f"({s.kind}, counted from {s.counted_from}{gen})"
                )
        lines.append(
            f"  total: {self.synthetic_images:,} synthetic + {self.real_images:,} real images"
        )
        lines.append("  verdict: " + ("satisfies" if self.ok else "does NOT satisfy") + f" {st.id}")
        lines += [f"  reason: {r}" for r in self.reasons]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """Raise :class:`SubtaskError` with every reason when the data break the rules."""
        if not self.ok:
            raise SubtaskError(
                f"training data do not satisfy FRCSyn sub-task {self.subtask.id} "
                f"({self.subtask.rule}): " + "; ".join(self.reasons)
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "subtask": self.subtask.id,
            "rule": self.subtask.rule,
            "ok": self.ok,
            "synthetic_images": self.synthetic_images,
            "real_images": self.real_images,
            "synthetic": [s.to_dict() for s in self.synthetic],
            "real": [s.to_dict() for s in self.real],
            "reasons": list(self.reasons),
            "notes": list(self.notes),
        }


def _as_counts(sources: Sequence[str | os.PathLike[str] | SourceCount], scan: bool):
    return tuple(s if isinstance(s, SourceCount) else count_source(s, scan=scan) for s in sources)


def check_subtask(
    subtask: str | SubTask,
    synthetic: Sequence[str | os.PathLike[str] | SourceCount] = (),
    real: Sequence[str | os.PathLike[str] | SourceCount] = (),
    *,
    scan: bool = False,
) -> CheckResult:
    """Count the sources and check them against ``subtask``'s rules.

    ``synthetic``: the generated training sets; ``real``: the real part (sub-tasks x.3 only).
    Each entry is a path (identity folders, an index file, a RecordIO folder or ``.rec``, a
    manifest JSON or a folder with ``manifest.json``) or an already counted
    :class:`SourceCount`. ``scan`` also counts the files of manifest folders and fails on a
    mismatch. Unreadable sources raise; a rule broken is a ``CheckResult`` with ``ok=False``.
    """
    st = get_subtask(subtask)
    syn = _as_counts(synthetic, scan)
    rea = _as_counts(real, scan)
    reasons: list[str] = []
    notes: list[str] = []

    seen: dict[str, str] = {}
    for role, srcs in (("synthetic", syn), ("real", rea)):
        for s in srcs:
            key = os.path.realpath(s.path)
            if key in seen:
                reasons.append(f"{s.path} is given twice (as {seen[key]} and as {role})")
            seen[key] = role

    if not syn:
        reasons.append(
            f"no synthetic training source given; sub-task {st.id} trains on "
            + (
                "CASIA-WebFace combined with synthetic data"
                if st.real_allowed
                else "synthetic data"
            )
        )

    n_syn = 0  # synthetic images (upper bound when a mixed manifest has no real count)
    n_real_inside = 0  # real images declared inside sources passed as synthetic
    unknown_split: list[str] = []
    for s in syn:
        declared = s.declares_real
        if declared is None:
            notes.append(
                f"{s.path}: no manifest says whether its images are real; counted as synthetic, "
                "as passed"
            )
            n_syn += s.num_images
        elif not declared:
            n_syn += s.num_images
        else:
            r = s.real_images
            what = "some real images (count not given)" if r is None else f"{r:,} real images"
            if not st.real_allowed:
                reasons.append(
                    f"{s.path}: its manifest ({s.counted_from}) declares {what}; sub-task {st.id} "
                    "allows synthetic images only"
                )
            else:
                notes.append(
                    f"{s.path}: its manifest declares {what}, counted as part of the real data "
                    "(which must be CASIA-WebFace)"
                )
            if r is None:
                unknown_split.append(s.path)
                n_syn += s.num_images
            else:
                n_syn += s.num_images - r
                n_real_inside += r

    n_real = n_real_inside
    if rea and not st.real_allowed:
        reasons.append(
            f"sub-task {st.id} allows no real data; got real source(s) "
            + ", ".join(s.path for s in rea)
        )
    for s in rea:
        if s.declares_real is False:
            reasons.append(
                f"{s.path}: passed as real data, but its manifest ({s.counted_from}) declares a "
                "synthetic set (no real images)"
            )
        n_real += s.num_images
    if st.real_allowed and (rea or n_real_inside):
        ids = sum(s.num_identities or 0 for s in rea)
        if n_real > CASIA_WEBFACE_IMAGES:
            reasons.append(
                f"the real part holds {n_real:,} images; sub-task {st.id} allows CASIA-WebFace "
                f"only ({CASIA_WEBFACE_IMAGES:,} images of {CASIA_WEBFACE_IDENTITIES:,} people)"
            )
        if ids > CASIA_WEBFACE_IDENTITIES:
            reasons.append(
                f"the real part holds {ids:,} identities; CASIA-WebFace has "
                f"{CASIA_WEBFACE_IDENTITIES:,}"
            )
        notes.append(
            "that the real part is CASIA-WebFace cannot be verified from files; only its size is "
            "checked"
        )

    if st.synthetic_limit is not None and n_syn > st.synthetic_limit:
        over = n_syn - st.synthetic_limit
        if unknown_split:
            reasons.append(
                f"up to {n_syn:,} synthetic images ({', '.join(unknown_split)} declare real images "
                "without a count: add 'real_images' to the manifest); the limit is "
                f"{st.synthetic_limit:,}"
            )
        else:
            reasons.append(
                f"{n_syn:,} synthetic images, {over:,} over the sub-task {st.id} limit of "
                f"{st.synthetic_limit:,}"
            )
    return CheckResult(
        subtask=st,
        synthetic=syn,
        real=rea,
        synthetic_images=n_syn,
        real_images=n_real,
        ok=not reasons,
        reasons=tuple(reasons),
        notes=tuple(notes),
    )
