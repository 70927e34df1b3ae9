"""Quality measurements of a trained toy generator (for the README tables and a later family
suite): does it follow the requested 3DMM style?

:func:`style_control` trains the style regressor (:func:`~facelab.morphface.toy.
train_style_regressor`) on real styled toyfaces, samples one image per requested style (the
exact 3DMM parameters of real toyfaces images, each with its own identity's ID vector) and
reports, per attribute, the correlation between the requested value and the value the regressor
reads from the generated image; the same for the same network sampled without style (null
style tokens: the correlation a generator that ignores style gets) and for the real images
(the regressor's own ceiling).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from facelab.morphface.toy import StyledToyFaces, style_agreement, train_style_regressor


def style_control(
    generator: str,
    *,
    identities: int = 24,
    images_per_identity: int = 40,
    image_size: int = 32,
    toy_seed: int = 0,
    context_seed: int = 0,
    num_requests: int = 96,
    regressor_steps: int = 400,
    seed: int = 0,
    num_steps: int | None = None,
) -> dict[str, Any]:
    """Style agreement of a generator trained on styled toyfaces (the toy preset's data
    settings by default). Returns ``{"generated": {...}, "no_style": {...}, "real": {...}}``."""
    from facelab.core.diffusion.identities import random_identities
    from facelab.morphface.train import load_morphface

    kwargs = {} if num_steps is None else {"num_steps": num_steps}
    sampler = load_morphface(generator, **kwargs)
    toy = StyledToyFaces(identities, images_per_identity, size=32, seed=toy_seed, difficulty="easy")
    real = toy.materialize(torch.float32)
    if real.shape[-1] != image_size:
        real = F.interpolate(real, size=(image_size,) * 2, mode="bilinear", antialias=True)
    targets = toy.regression_targets()
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(toy), generator=g)
    test, train_idx = perm[:num_requests], perm[num_requests:]
    reg = train_style_regressor(
        real[train_idx], targets[train_idx], steps=regressor_steps, seed=seed
    )
    table = random_identities(identities, 512, context_seed)
    ctx = table[toy.labels[test]]
    styles = toy.style_params(test)
    seeds = [seed * 100_003 + k for k in range(num_requests)]
    imgs, plain = [], []
    for i in range(0, num_requests, 32):
        sl = slice(i, i + 32)
        imgs.append(
            sampler.sample(
                ctx[sl], styles.index(torch.arange(num_requests)[sl]), seeds=seeds[sl]
            ).images
        )
        plain.append(sampler.sample(ctx[sl], None, seeds=seeds[sl]).images)
    req = targets[test]
    return {
        "generated": style_agreement(reg, torch.cat(imgs), req),
        "no_style": style_agreement(reg, torch.cat(plain), req),
        "real": style_agreement(reg, real[test], req),
    }


__all__ = ["style_control"]
