"""Write insightface_iresnet_reference.safetensors: insightface's own iresnet outputs for
deterministic weights, the reference that test_backbones.py compares facelab's iresnets to.

    python shared/tests/data/make_insightface_reference.py \
        INSIGHTFACE/recognition/arcface_torch/backbones/iresnet.py [--commit SHA]

Needs a local copy of insightface's ``iresnet.py`` (arcface_torch) and torch; nothing of it is
kept here. Weights come from ``seeded_state_dict`` in test_backbones.py (numpy's legacy
RandomState seeded by each key's CRC32), the input from ``reference_input``; each model runs in
float64, eval mode.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
DEPTHS = (18, 34, 50, 100)


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("iresnet", type=Path, help="insightface arcface_torch/backbones/iresnet.py")
    ap.add_argument("--commit", default="unknown", help="the insightface commit of that file")
    args = ap.parse_args()
    tests = _load(HERE.parent / "test_backbones.py", "facelab_test_backbones")
    insightface = _load(args.iresnet, "insightface_iresnet")
    x = tests.reference_input()
    out = {}
    for depth in DEPTHS:
        model = getattr(insightface, f"iresnet{depth}")().double().eval()
        model.load_state_dict(tests.seeded_state_dict(model.state_dict()), strict=True)
        with torch.no_grad():
            out[f"r{depth}"] = model(x).contiguous()
        print(f"r{depth}: |y| max {out[f'r{depth}'].abs().max():.4g}")
    meta = {
        "insightface_commit": args.commit,
        "iresnet_py_sha256": hashlib.sha256(args.iresnet.read_bytes()).hexdigest(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    save_file(out, str(HERE / "insightface_iresnet_reference.safetensors"), metadata=meta)


if __name__ == "__main__":
    main()
