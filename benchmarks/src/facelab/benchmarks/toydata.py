"""Toy stand-ins for real data paths: ``facelab bench ppfr|templates`` without
``--train-data`` / ``--eval-bins`` write toyfaces as aligned identity folders and an insightface
``.bin`` of held-out people, then run exactly as they would on real data."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class ToyDataSizes:
    identities: int = 200
    images_per_identity: int = 20
    eval_identities: int = 100
    eval_images_per_identity: int = 8
    eval_pairs: int = 1000
    image_size: int = 56
    difficulty: str = "default"


#: the ArcFace toy preset's sizes (``arcface_presets()["toy"]``) and a test size
FULL = ToyDataSizes()
SMALL = ToyDataSizes(6, 4, 8, 4, 40, 32)
#: ``facelab.core.recipe.paper_shape_data()``: the frequency methods' ``paper-shape`` presets
#: (112 px, toyfaces "easy", 100 x 10 training images, 60 x 6 held-out, 600 pairs)
PAPER_SHAPE = ToyDataSizes(100, 10, 60, 6, 600, 112, "easy")


def sizes_for(preset: str, small: bool) -> ToyDataSizes:
    """The toy data a preset trains on: ``paper-shape`` its 112 px set (``small``: the test
    size at 112 px), else the ArcFace toy preset's sizes (``small``: the test size)."""
    if preset == "paper-shape":
        from dataclasses import replace

        return replace(SMALL, image_size=112, difficulty="easy") if small else PAPER_SHAPE
    return SMALL if small else FULL


def write_toy_data(root: str | Path, sizes: ToyDataSizes, seed: int = 0) -> tuple[Path, Path]:
    """``root/train/<label>/<n>.png`` and ``root/toy_eval.bin`` (pairs of held-out people,
    genuine and impostor alternating so every 10-fold fold holds both); returns both paths.
    Written once: existing files are reused (same sizes and seed give the same images)."""
    from PIL import Image

    from facelab.core.data.toyfaces import ToyFaces, make_pairs, to_uint8
    from facelab.core.data.verification import write_bin
    from facelab.core.recipe import TOY_HELDOUT_OFFSET

    tag = (
        f"{sizes.identities}x{sizes.images_per_identity}-{sizes.eval_identities}x"
        f"{sizes.eval_images_per_identity}-{sizes.eval_pairs}-{sizes.image_size}px-"
        f"{sizes.difficulty}-seed{seed}"
    )
    root = Path(root) / tag
    train = root / "train"
    path = root / "toy_eval.bin"
    if not (train / ".complete").is_file():
        ToyFaces(
            sizes.identities,
            sizes.images_per_identity,
            size=sizes.image_size,
            seed=seed,
            difficulty=sizes.difficulty,
        ).write_folders(train, overwrite=True)
        (train / ".complete").write_text("")
    if path.is_file():
        return train, path
    people = ToyFaces(
        sizes.eval_identities,
        sizes.eval_images_per_identity,
        size=sizes.image_size,
        seed=seed,
        identity_offset=TOY_HELDOUT_OFFSET,
        difficulty=sizes.difficulty,
    )
    i1, i2, same = make_pairs(people, sizes.eval_pairs, seed=seed + 1)
    gen, imp = torch.nonzero(same).flatten(), torch.nonzero(~same).flatten()
    n = min(len(gen), len(imp))
    order = torch.stack([gen[:n], imp[:n]], 1).flatten()
    i1, i2, same = i1[order], i2[order], same[order]
    u8 = to_uint8(people.render(torch.stack([i1, i2], 1).flatten())).permute(0, 2, 3, 1).numpy()
    encoded = []
    for img in u8:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        encoded.append(buf.getvalue())
    tmp = path.with_name(f".{path.name}.tmp")
    write_bin(tmp, encoded, [bool(v) for v in same.tolist()])
    tmp.replace(path)
    return train, path
