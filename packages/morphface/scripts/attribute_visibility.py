"""How much each styled attribute changes a real styled-toyfaces image (the README's
"How visible is expression" numbers).

    OMP_NUM_THREADS=1 uv run python packages/morphface/scripts/attribute_visibility.py \
        [--size 32] [--style default|expressive] [--identities 24] [--images 10]

For each of yaw, pitch, smile, mouth opening and brow raise, every image is rendered twice with
the attribute moved by -d/2 and +d/2 (d = the attribute's standard deviation over the images,
the step ``bench.style_response`` requests), everything else fixed. Prints, per attribute, d,
the RMS of the image difference (images in [-1, 1]) and the mean over images of the largest
per-pixel difference, as JSON. This is the signal a denoiser trained with a per-pixel MSE gets
for following the attribute.
"""

from __future__ import annotations

import argparse
import json

import torch


def main(argv: list[str] | None = None) -> int:
    from facelab.morphface.toy import EXPRESSIVE_STYLE, REGRESSED, StyledToyFaces

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--style", choices=["default", "expressive"], default="default")
    p.add_argument("--identities", type=int, default=24)
    p.add_argument("--images", type=int, default=10, help="images per identity")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    style = EXPRESSIVE_STYLE if args.style == "expressive" else None
    toy = StyledToyFaces(
        args.identities, args.images, size=args.size, seed=args.seed, difficulty="easy", style=style
    )
    spread = toy.regression_targets().std(0)

    def render(name: str, values: torch.Tensor) -> torch.Tensor:
        # StyledToyFaces keeps its image parameters in ToyFaces' table (see toy.py); a fresh
        # cache makes materialize() render them again
        saved = toy._imp[name]
        toy._imp[name], toy._cache = values, {}
        try:
            return toy.materialize(torch.float32)
        finally:
            toy._imp[name], toy._cache = saved, {}

    out = {}
    for k, name in enumerate(REGRESSED):
        d = float(spread[k])
        base = toy._imp[name]
        diff = render(name, base + d / 2) - render(name, base - d / 2)
        out[name] = {
            "d": round(d, 4),
            "rms": round(float(diff.pow(2).mean().sqrt()), 4),
            "max_pixel": round(float(diff.abs().amax((1, 2, 3)).mean()), 3),
        }
    print(json.dumps({"size": args.size, "style": args.style, "attributes": out}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
