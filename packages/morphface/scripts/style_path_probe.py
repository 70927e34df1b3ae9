"""Where does the toy generator's style control fail? Train a variant of the *earlier* toy
recipe (tokens only, ID drop 0.15, 1,500 steps) and measure it (the README's "Style path
diagnostics" table).

    OMP_NUM_THREADS=1 uv run python packages/morphface/scripts/style_path_probe.py OUT_DIR \
        [--style-only] [--id-drop P] [--pixel-input] [--steps N]

The base configuration is the ``toy`` preset with the style path the paper's way (tokens only:
``encoder.pixel_input=False``), the ID vector dropped in 15 % of the steps and 1,500 steps,
which is what the toy preset was before this diagnosis. The variants:

* ``--style-only``: the ID vector is dropped in (almost) every training step (the denoiser's
  ``unconditioned_probability`` 0.999), so the 3DMM renderings are the only condition: can the
  style path learn pose at all?
* ``--id-drop P``: the ID vector is dropped with probability P instead of 0.15.
* ``--pixel-input``: the renderings are *also* added at the denoiser's input, pixel-aligned
  (``encoder.pixel_input``, the recipe option this diagnosis led to; the toy preset now has it
  with ``--id-drop 0.5 --steps 6000``).

It trains (``--steps``, default 1,500), then prints ``bench.condition_sensitivity`` and
``bench.style_control`` (swapped styles), and writes both with the CPU seconds to
``OUT_DIR/probe.json``. (The README's ``--pixel-input`` rows were measured with an earlier
version of this script that patched the input path in and gave the renderings to every guidance
branch; the recipe option gives the no-style branch zero maps, as in training.)
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

COLUMNS = ("yaw", "pitch", "smile", "mouth_open", "brow_raise")
#: the earlier toy recipe's ID drop and length (the diagnosis's base)
BASE_ID_DROP = 0.15
BASE_STEPS = 1500


def _row(part: dict[str, float]) -> str:
    return " / ".join(f"{part[f'{c}_corr']:.2f}" for c in COLUMNS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 1,500)")
    p.add_argument("--style-only", action="store_true")
    p.add_argument("--id-drop", type=float, default=None)
    p.add_argument("--pixel-input", action="store_true")
    p.add_argument("--measure-only", action="store_true", help="measure OUT_DIR's generator")
    a = p.parse_args()
    if a.style_only and a.id_drop is not None:
        p.error("--style-only and --id-drop both set the ID drop probability; give one")
    torch.set_num_threads(1)
    from facelab.morphface.bench import condition_sensitivity, style_control, toy_train_config
    from facelab.morphface.train import train

    out = Path(a.out)
    cfg = toy_train_config(out, steps=a.steps or BASE_STEPS, progress=False)
    drop = 0.999 if a.style_only else (a.id_drop if a.id_drop is not None else BASE_ID_DROP)
    cfg = replace(
        cfg,
        unet=replace(cfg.unet, unconditioned_probability=drop),
        encoder=replace(cfg.encoder, pixel_input=bool(a.pixel_input)),
    )
    t0 = time.process_time()
    if not a.measure_only:
        train(cfg)
    train_s = time.process_time() - t0
    generator = str(out / "generator")
    result: dict = {"args": vars(a), "train_cpu_s": train_s}
    sens = condition_sensitivity(generator)
    result["sensitivity"] = sens
    rel = {t: {k: f"{v / r['style'] - 1:+.1%}" for k, v in r.items()} for t, r in sens.items()}
    print("loss change vs own style + ID:", json.dumps(rel))
    sc = style_control(generator)
    result["style_control"] = sc
    result["measure_cpu_s"] = time.process_time() - t0 - train_s
    (out / "probe.json").write_text(json.dumps(result, indent=1))
    ident = sc["identity"]
    print("with style :", _row(sc["generated"]))
    print("null style :", _row(sc["no_style"]))
    print("own style  :", _row(sc["generated_own"]))
    print("real       :", _row(sc["real"]))
    print(
        "identification with / null style:",
        f"{ident['generated']['identification_accuracy']:.3f} /",
        f"{ident['no_style']['identification_accuracy']:.3f}",
    )


if __name__ == "__main__":
    main()
