"""Does the toy generator draw people a recognizer identifies? (the toy preset's check)

The toy preset conditions on one random unit vector per toyfaces identity (``contexts =
"identity"``). An *independent* recognizer (IResNet-18 at width 8 with an ArcFace head, trained
on real images of the same identities that the generator never conditioned on, never on
generated images) then embeds

* generated images (K per identity, drawn from the identity's vector) and
* real held-out images of the same identities (the ceiling),

and we report identity consistency (genuine vs impostor = random-pair cosine), closed-set
identification accuracy against the real identities' centroids (chance = 1 / identities), and
the within-identity diversity. ``uv run python shared/scripts/synth_toy.py`` runs it end to end.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch
from torch import nn

from facelab.core.diffusion.metrics import identity_consistency, intra_class_diversity


def train_toy_recognizer(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int = 400,
    batch_size: int = 32,
    seed: int = 0,
    embedding_size: int = 128,
) -> nn.Module:
    """IResNet-18 (width 8) + ArcFace (s 32, m 0.3) on the core trainer; returns the backbone."""
    from torch.utils.data import TensorDataset

    from facelab.core.backbones import get_backbone
    from facelab.core.recipe import HeadConfig, build_head, margin_loss
    from facelab.core.train import TrainConfig, Trainer

    n_cls = int(labels.max()) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = get_backbone(
            "r18", input_size=images.shape[-1], embedding_size=embedding_size, base_width=8
        )
        head = build_head(HeadConfig(s=32.0, m=0.3), embedding_size, n_cls)

    def loss_fn(batch, mods, ctx):
        x, y = batch
        flip = torch.rand(x.shape[0], device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return margin_loss(mods["head"], mods["backbone"](x), y)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            output_dir=tmp,
            max_steps=steps,
            batch_size=batch_size,
            lr=0.1,
            scheduler="cosine",
            warmup=20,
            warmup_unit="step",
            seed=seed,
            save_on_exit=False,
            progress=False,
            log_every=50,
        )
        trainer = Trainer(
            cfg, {"backbone": backbone, "head": head}, loss_fn, TensorDataset(images, labels)
        )
        trainer.fit()
        return trainer.unwrap("backbone").eval()


def toy_identity_report(
    sampler: Any,
    data: Any,
    *,
    images_per_identity: int = 8,
    reference_images: int = 10,
    recognizer_steps: int = 400,
    guidance_scale: float = 1.0,
    seed: int = 0,
    batch_size: int = 48,
) -> dict[str, Any]:
    """Metrics of a toy generator trained on ``data`` (a ``SynthDataConfig`` with
    ``contexts="identity"``): see the module docstring."""
    from facelab.core.data.toyfaces import ToyFaces
    from facelab.core.diffusion.identities import random_identities
    from facelab.core.diffusion.sampling import image_seed
    from facelab.core.eval import embed

    n_ids, per = data.toy_identities, data.toy_images_per_identity
    real = ToyFaces(
        n_ids,
        per + reference_images,
        size=data.image_size,
        seed=data.toy_seed,
        difficulty=data.toy_difficulty,
    )
    imgs = real.render(slice(None))
    lab = real.labels
    pos = torch.arange(len(real)) % (per + reference_images)
    train_mask = pos < per  # the generator's training images; the rest are held out
    rec = train_toy_recognizer(imgs[train_mask], lab[train_mask], steps=recognizer_steps, seed=seed)
    ctx_table = random_identities(n_ids, data.context_dim, data.context_seed)
    ids = torch.arange(n_ids).repeat_interleave(images_per_identity)
    gen = []
    for start in range(0, ids.numel(), batch_size):
        part = ids[start : start + batch_size]
        seeds = [image_seed(seed, int(c), start + k) for k, c in enumerate(part)]
        gen.append(
            sampler.sample(ctx_table[part], seeds=seeds, guidance_scale=guidance_scale).images
        )
    gen_images = torch.cat(gen)
    e_gen = embed(rec, gen_images, flip=True)
    e_ref = embed(rec, imgs[~train_mask], flip=True)
    ref_lab = lab[~train_mask]
    out: dict[str, Any] = {
        "identities": n_ids,
        "generated_per_identity": images_per_identity,
        "generated": identity_consistency(e_gen, ids, references=e_ref, reference_labels=ref_lab)
        | intra_class_diversity(e_gen, ids),
        "real_heldout": identity_consistency(
            e_ref, ref_lab, references=e_ref, reference_labels=ref_lab
        )
        | intra_class_diversity(e_ref, ref_lab),
    }
    # the unconditional (empty-context) samples of the same model: what identity looks like
    # without the ID vector
    unc = sampler.sample(None, batch_size=min(48, ids.numel()), guidance_scale=0.0).images
    e_unc = embed(rec, unc, flip=True)
    sims = (
        torch.nn.functional.normalize(e_unc, dim=1)
        @ torch.nn.functional.normalize(
            torch.stack([e_ref[ref_lab == k].mean(0) for k in range(n_ids)]), dim=1
        ).T
    )
    out["unconditional_max_centroid_cos"] = float(sims.amax(1).mean())
    out["recognizer"] = {"steps": recognizer_steps, "train_images": int(train_mask.sum())}
    out["images"] = gen_images
    return out


def summarize(report: dict[str, Any]) -> str:
    """A markdown table of a ``toy_identity_report``."""
    rows = [
        "| images | genuine cos | impostor (random pairs) cos | gap | identification acc | chance |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("generated", "real_heldout"):
        m = report[name]
        rows.append(
            f"| {name} | {m['genuine_cos']:.3f} | {m['impostor_cos']:.3f} | {m['consistency_gap']:.3f} | "
            f"{100 * m['identification_accuracy']:.1f} % | {100 * m['identification_chance']:.1f} % |"
        )
    return "\n".join(rows)


__all__ = ["summarize", "toy_identity_report", "train_toy_recognizer"]
