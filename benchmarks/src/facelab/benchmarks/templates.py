"""Template protection rows: SlerpFace, BioHashing, IronMask (and the unprotected templates)
through ``facelab.slerpface``'s public API, on the templates of one extractor.

The extractor is ``facelab.slerpface.model.SlerpFaceExtractor`` whose backbone is the suite's
trained ArcFace baseline (frozen); its ``group_cov`` + attention are trained with SlerpFace's
recipe loss (``facelab.slerpface.train.GroupBranch`` + an ArcFace head on
``group_embedding(templates, weights)``). With the backbone frozen, its body maps are a fixed
function of the image, so on toyfaces they are computed once and the group branch trains on
them (the same loss and gradients as ``build_trainer(freeze_backbone=True)`` without running
the frozen body every step).

Accuracy, TAR@FAR, bytes and throughput come from ``facelab.slerpface.evaluate`` (``accuracy``:
every gallery template enrolled under its own fresh key, probe raw) and the protectors'
``enroll``; the inversion attack observes ``observations(prot, ...)`` (what the method stores).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

#: the protectors compared, in table order (``facelab.slerpface`` names)
PROTECTORS: tuple[str, ...] = ("unprotected", "slerpface", "biohashing", "ironmask")
ROW_NAMES = {
    "unprotected": "slerpface templates (unprotected)",
    "slerpface": "slerpface",
    "biohashing": "biohashing",
    "ironmask": "ironmask",
}


@dataclass
class Templates:
    templates: torch.Tensor  # (N, m, d)
    weights: torch.Tensor  # (N, m)
    seconds_per_image: float


def build_extractor(backbone: nn.Module, name: str, options: dict[str, Any], group_size: int = 16):
    """A ``SlerpFaceExtractor`` with ``backbone``'s weights (frozen, eval mode)."""
    from facelab.slerpface.model import SlerpFaceExtractor

    ext = SlerpFaceExtractor(name, options, group_size=group_size, flip="sum")
    ext.backbone.load_state_dict(backbone.state_dict())
    ext.backbone.requires_grad_(False)
    return ext.eval()


@torch.no_grad()
def body_maps(extractor: nn.Module, images: torch.Tensor, batch_size: int = 256):
    """The frozen backbone's last-stage maps of the images and of their mirrors."""
    extractor.eval()
    body, flipped = [], []
    for x in images.split(batch_size):
        body.append(extractor.body(x))
        flipped.append(extractor.body(torch.flip(x, dims=(3,))))
    return torch.cat(body), torch.cat(flipped)


def train_group_branch(
    extractor: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    train_cfg: Any,
    *,
    margin_s: float = 32.0,
    margin_m: float = 0.5,
) -> tuple[float, int]:
    """Train the extractor's ``group_cov`` + attention in place; returns (seconds, steps)."""
    from facelab.core.heads import MarginHead
    from facelab.core.train import Trainer
    from facelab.slerpface.model import group_embedding
    from facelab.slerpface.train import GroupBranch

    t0 = time.perf_counter()
    body, flipped = body_maps(extractor, images)
    num_classes = int(labels.max()) + 1
    dim = extractor.num_groups * extractor.group_size
    modules = {
        "groups": GroupBranch(extractor),
        "group_head": MarginHead(dim, num_classes, s=margin_s, m2=margin_m),
    }

    def loss_fn(batch, mods, ctx):
        b, bf, y = batch
        t, w = mods["groups"](b, bf)
        out = mods["group_head"](group_embedding(t, w), y)
        return F.cross_entropy(out.logits, out.targets)

    result = Trainer(train_cfg, modules, loss_fn, TensorDataset(body, flipped, labels)).fit()
    extractor.eval()
    return time.perf_counter() - t0, result.step


def extract(extractor: nn.Module, images: torch.Tensor) -> Templates:
    t0 = time.perf_counter()
    t, w = extractor.extract(images, batch_size=256)
    return Templates(t, w, (time.perf_counter() - t0) / images.shape[0])


def stored_bytes(prot: Any, templates: Templates, seed: int) -> int:
    """Bytes of one stored protected template (every tensor ``enroll`` returns)."""
    t, w = templates.templates[:2], templates.weights[:2]
    keys = prot.new_keys(2, t.shape[1], t.shape[2], seed=seed)
    stored = prot.enroll(t, w, keys, generator=torch.Generator().manual_seed(seed))
    return int(sum(v.element_size() * v[0].numel() for v in stored.values()))


def enroll_seconds_per_image(prot: Any, templates: Templates, seed: int, n: int = 128) -> float:
    from facelab.slerpface.evaluate import CHUNK

    t, w = templates.templates[:n], templates.weights[:n]
    keys = prot.new_keys(t.shape[0], t.shape[1], t.shape[2], seed=seed)
    gen = torch.Generator().manual_seed(seed)
    step = CHUNK.get(prot.method, 4096)
    t0 = time.perf_counter()
    for i in range(0, t.shape[0], step):
        prot.enroll(t[i : i + step], w[i : i + step], keys[i : i + step], generator=gen)
    return (time.perf_counter() - t0) / t.shape[0]


def protector_options(num_groups: int, group_size: int) -> dict[str, Any]:
    """``facelab.slerpface.evaluate.EvalConfig`` fields fitted to the template length (BioHashing
    cannot project to more bits than the template has dimensions)."""
    return {"biohash_bits": min(256, num_groups * group_size)}


def evaluate_protectors(
    eval_templates: Templates,
    pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    seed: int,
    names: tuple[str, ...] = PROTECTORS,
    log: Any = print,
) -> dict[str, dict[str, Any]]:
    """Per protector: accuracy (10-fold), TAR@FAR=1e-3, ROC, bytes, images/s and notes."""
    from facelab.benchmarks.baseline import FAR, pair_roc
    from facelab.slerpface.evaluate import EvalConfig, accuracy

    t = eval_templates.templates
    cfg = EvalConfig(seed=seed, **protector_options(t.shape[1], t.shape[2]))
    out: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(names):
        prot = cfg.protector(name)
        key_seed = seed * 1000 + 20 + k
        acc = accuracy(prot, t, eval_templates.weights, pairs, FAR, key_seed)
        curve, tar = pair_roc(acc["scores"], acc["same"])
        enroll_s = enroll_seconds_per_image(prot, eval_templates, key_seed)
        out[name] = {
            "accuracy": float(acc["accuracy"]),
            "accuracy_std": float(acc["accuracy_std"]),
            "tar_at_far_1e-3": tar,
            "roc": curve,
            "bytes_per_image": stored_bytes(prot, eval_templates, key_seed),
            "infer_images_per_s": 1.0 / (eval_templates.seconds_per_image + enroll_s),
            "params": prot.params(),
            "protector": prot,
        }
        log(f"{name}: accuracy {acc['accuracy']:.4f}, TAR@FAR=1e-3 {tar:.4f}")
    return out


def observations(name: str, templates: Templates, seed: int) -> torch.Tensor:
    """What an attacker holding the stored templates of ``name`` sees (one vector each)."""
    from facelab.slerpface.evaluate import EvalConfig
    from facelab.slerpface.evaluate import observations as observe

    t = templates.templates
    cfg = EvalConfig(seed=seed, **protector_options(t.shape[1], t.shape[2]))
    return observe(cfg.protector(name), t, templates.weights, seed)
