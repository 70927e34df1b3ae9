"""Verification of a PartialFace model through the protocol: same-subset and cross-subset.

For ``K`` challenges ``(subset k mod S, permutation k mod P)`` every evaluation image is
embedded under each challenge (client encode + model, flip test as every facelab method). Then

* same subset: pair ``(a, b)`` is matched with both sides under challenge ``k``;
* cross subset: ``a`` under challenge ``k`` (the gallery), ``b`` under challenge ``k + 1`` (the
  probe; a different subset whenever ``K > 1`` and ``S > 1``).

The pairs of all ``K`` challenges are pooled into one insightface 10-fold verification (one
threshold for every subset, as a deployed system would have); the per-challenge accuracies are
reported too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from facelab.core.errors import RangeError
from facelab.core.eval import embed, verify
from facelab.core.recipe import EvalSet
from facelab.partialface.model import PartialFaceModel, SubsetView
from facelab.partialface.plan import SubsetPlan


@dataclass
class SubsetVerification:
    """Pooled verification of one evaluation set under one matching mode."""

    accuracy: float
    accuracy_std: float
    val: float
    far: float
    per_challenge: list[float] = field(default_factory=list)
    challenges: list[tuple[int, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "accuracy_std": self.accuracy_std,
            "val_at_far_1e-3": self.val,
            "far": self.far,
            "per_challenge": self.per_challenge,
            "challenges": [list(c) for c in self.challenges],
        }


def eval_challenges(plan: SubsetPlan, num: int) -> list[tuple[int, int]]:
    """``num`` (subset, permutation) pairs cycling through subsets and permutations."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise RangeError(f"num_challenges: expected a positive int, got {num!r}")
    return [(k % plan.num_subsets, k % plan.num_permutations) for k in range(num)]


def embed_under(
    model: PartialFaceModel,
    plan: SubsetPlan,
    images: torch.Tensor,
    challenges: Sequence[tuple[int, int]],
    *,
    flip: bool = True,
    batch_size: int = 128,
) -> list[torch.Tensor]:
    """Normalized embeddings of ``images`` under every challenge."""
    encoder = model.make_encoder(check=False)
    return [
        embed(
            SubsetView(model, plan.positions(s, p), encoder),
            images,
            flip=flip,
            batch_size=batch_size,
        )
        for s, p in challenges
    ]


def _pooled(
    e1: list[torch.Tensor], e2: list[torch.Tensor], issame: torch.Tensor, nfolds: int
) -> tuple[Any, list[float]]:
    per = [verify(a, b, issame, nfolds=nfolds, far_target=None).accuracy for a, b in zip(e1, e2)]
    pooled = verify(torch.cat(e1), torch.cat(e2), issame.repeat(len(e1)), nfolds=nfolds)
    return pooled, per


def evaluate_subsets(
    model: PartialFaceModel,
    plan: SubsetPlan,
    sets: Sequence[EvalSet],
    *,
    num_challenges: int = 6,
    batch_size: int = 128,
    flip: bool = True,
) -> dict[str, dict[str, SubsetVerification]]:
    """``{set name: {"same_subset": ..., "cross_subset": ...}}`` (see the module docstring)."""
    model.check_plan(plan.plan_id)
    challenges = eval_challenges(plan, num_challenges)
    out: dict[str, dict[str, SubsetVerification]] = {}
    for s in sets:
        embs = embed_under(model, plan, s.images, challenges, flip=flip, batch_size=batch_size)
        gallery = [e[0::2] for e in embs]
        probe = [e[1::2] for e in embs]
        nfolds = min(10, s.num_pairs)
        res: dict[str, SubsetVerification] = {}
        k = len(challenges)
        pairs = {
            "same_subset": (gallery, probe, challenges),
            "cross_subset": (
                gallery,
                [probe[(i + 1) % k] for i in range(k)],
                [(challenges[i], challenges[(i + 1) % k]) for i in range(k)],
            ),
        }
        for mode, (g, p, names) in pairs.items():
            if mode == "cross_subset" and k == 1:
                continue
            pooled, per = _pooled(g, p, s.issame, nfolds)
            res[mode] = SubsetVerification(
                accuracy=pooled.accuracy,
                accuracy_std=pooled.accuracy_std,
                val=pooled.val,
                far=pooled.far,
                per_challenge=per,
                challenges=list(names),  # type: ignore[arg-type]
            )
        out[s.name] = res
    return out


def subset_table(
    results: dict[str, dict[str, SubsetVerification]], name: str = "partialface"
) -> str:
    """Markdown table: one row per matching mode, one column per set."""
    sets = sorted(results)
    lines = ["| model | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for mode in ("same_subset", "cross_subset"):
        cells = []
        for s in sets:
            r = results[s].get(mode)
            cells.append(
                "-" if r is None else f"{100 * r.accuracy:.2f} +- {100 * r.accuracy_std:.2f}"
            )
        lines.append(f"| {name} ({mode.replace('_', ' ')}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)
