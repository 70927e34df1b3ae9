"""Evaluation helpers: verification rows (accuracy, TAR@FAR) and the client/server compute split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from facelab.core.eval import embed, tar_at_far, verify_interleaved
from facelab.duetface.protocol import DuetFaceClient, DuetFaceServer

TAR_FAR = 1e-3


def verification_rows(
    model: nn.Module, sets: Sequence[Any], *, batch_size: int = 128, flip: bool = True
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """10-fold accuracy (insightface protocol, flip test) and TAR at FAR=1e-3 (cosine scores,
    ROC point nearest to the FAR) of an images -> embeddings ``model`` on each ``EvalSet``.

    Returns ``(rows, {set name: VerificationResult})``; one embedding pass per set.
    """
    rows, results = [], {}
    for s in sets:
        emb = embed(model, s.images, flip=flip, batch_size=batch_size)
        res = verify_interleaved(emb, s.issame, nfolds=min(10, s.num_pairs))
        scores = (emb[0::2] * emb[1::2]).sum(1)
        tar = tar_at_far(scores, s.issame, TAR_FAR)[TAR_FAR]
        results[s.name] = res
        rows.append(
            {
                "set": s.name,
                "accuracy": res.accuracy,
                "accuracy_std": res.accuracy_std,
                "tar_at_far_1e-3": float(tar),
                "pairs": s.num_pairs,
            }
        )
    return rows, results


def count_flops(fn: Any, *args: Any) -> int:
    """Floating point operations of one call (``torch.utils.flop_counter``; a multiply-add
    counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn(*args)
    return int(counter.get_total_flops())


def compute_split(
    client: DuetFaceClient, server: DuetFaceServer, images: torch.Tensor
) -> dict[str, float]:
    """FLOPs per image on each side: the client (DCT encode + client model + masks) and the
    server (server model), and their ratio."""
    n = images.shape[0]
    payload = client.prepare(images)
    c = count_flops(client.prepare, images)
    s = count_flops(server.embed, payload)
    return {"client_flops": c / n, "server_flops": s / n, "client_over_server": c / s}
