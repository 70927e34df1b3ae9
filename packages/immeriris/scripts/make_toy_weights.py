"""Make the toy NormFree weights the package ships (``facelab.immeriris.toy_normfree()``, in
``src/facelab/immeriris/weights/normfree-toy/``); the claim test and ``facelab bench quick``
load them.

    uv run python packages/immeriris/scripts/make_toy_weights.py            # train, then export
    uv run python packages/immeriris/scripts/make_toy_weights.py --model runs/imm-nf/model

Without ``--model`` it trains the ``toy`` preset's NormFree (1,000 steps of 64 on 200
procedural subjects, about 6 CPU-minutes on one thread) with ``--seed`` into ``--workdir`` and
exports that. The export is the trained network in float16 (1.7 MB) in the facelab-hub layout
(``config.json`` + ``model.safetensors``); ``IrisNet.from_pretrained`` loads it back into
float32. The committed weights are training seed 1337 (the preset's default).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE.parent / "src" / "facelab" / "immeriris" / "weights" / "normfree-toy"


def export(model_dir: str | Path, out: str | Path) -> Path:
    """Write the network saved in ``model_dir`` to ``out`` in float16."""
    from facelab.immeriris import IrisNet

    net = IrisNet.from_pretrained(model_dir)
    if net.paradigm != "normfree":
        raise SystemExit(f"--model: expected a NormFree network, got paradigm {net.paradigm!r}")
    return net.half().save_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="a trained NormFree folder (default: train one)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--workdir", default="runs/immeriris-toy-weights")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)

    import dataclasses

    import torch

    torch.set_num_threads(args.threads)
    model = args.model
    if model is None:
        from facelab.immeriris.train import preset, train

        cfg = preset("toy", "normfree")
        cfg = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, seed=args.seed, output_dir=args.workdir)
        )
        train(cfg)
        model = Path(args.workdir) / "model"
    dest = export(model, args.out)
    size = sum(f.stat().st_size for f in dest.iterdir()) / 2**20
    print(f"exported {model} to {dest} ({size:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
