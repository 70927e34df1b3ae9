"""The ``speed`` suite: each row is a ratio against a reference measured in the same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import torch

from facelab.benchmarks.report import SuiteResult
from facelab.benchmarks.timing import measure

COLUMNS = ["benchmark", "ours", "reference", "ours/s", "reference/s", "speedup", "note"]


def _images(n: int, size: int = 112, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def codec_compact(n: int = 256, repeat: int = 5) -> list[dict[str, Any]]:
    """Compact encode vs scipy.fft.dctn over all blocks at once, and vs a bare matmul."""
    import scipy.fft

    from facelab.core.freq import FrequencyCodec

    x = _images(n)
    codec = FrequencyCodec("compact", check=False)
    t_ours = measure(lambda: codec.encode(x), repeat)

    # scipy: same colour transform (numpy), blocks arranged once, one vectorized dctn call
    xn = x.numpy()
    m = np.array(
        [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
        dtype=np.float32,
    )

    def scipy_encode() -> np.ndarray:
        ycc = np.einsum("ij,bjhw->bihw", m, (xn + 1) * 127.5)
        ycc[:, 1:] += 128.0
        ycc -= 128.0
        blocks = ycc.reshape(n, 3, 14, 8, 14, 8).transpose(0, 1, 2, 4, 3, 5)
        return scipy.fft.dctn(blocks, axes=(-2, -1), norm="ortho", workers=-1)

    t_scipy = measure(scipy_encode, repeat)
    # bare matmul with the same FLOP count as the block transform: (n*3*196, 64) @ (64, 64)
    a = torch.randn(n * 3 * 196, 64)
    basis = torch.randn(64, 64)
    t_mm = measure(lambda: a @ basis, repeat)
    return [
        {
            "benchmark": f"codec compact encode, {n}x3x112x112",
            "ours": "FrequencyCodec.encode",
            "reference": "scipy.fft.dctn (workers=-1)",
            "ours/s": n / t_ours,
            "reference/s": n / t_scipy,
            "speedup": t_scipy / t_ours,
            "note": "images/s; goal speedup >= 1",
        },
        {
            "benchmark": f"codec compact encode, {n}x3x112x112",
            "ours": "FrequencyCodec.encode",
            "reference": "bare torch matmul, same FLOPs",
            "ours/s": n / t_ours,
            "reference/s": n / t_mm,
            "speedup": t_mm / t_ours,
            "note": "goal speedup >= 0.5 (within 2x)",
        },
    ]


_REF_MEMORY_SCRIPT = """
import json, sys, time, torch
from facelab.benchmarks.timing import peak_rss_mb, measure
from facelab.core.freq import FrequencyCodec
n = int(sys.argv[1])
x = torch.rand(n, 3, 112, 112) * 2 - 1
codec = FrequencyCodec("reference", check=False)
base = peak_rss_mb()
t = measure(lambda: codec.encode(x), repeat=3)
enc_peak = peak_rss_mb() - base
c = codec.encode(x)
t_dec = measure(lambda: codec.decode(c), repeat=3)
err = float((codec.decode(c) - x).abs().max())
print(json.dumps({"encode_s": t, "decode_s": t_dec, "peak_mb": enc_peak, "err": err}))
"""


def codec_reference(n: int = 64) -> list[dict[str, Any]]:
    """Reference mode images/s and the peak memory of encode (a fresh process per measure)."""
    out = subprocess.run(
        [sys.executable, "-c", _REF_MEMORY_SCRIPT, str(n)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ},
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return [
        {
            "benchmark": f"codec reference encode, {n}x3x112x112 -> 192x112x112",
            "ours": "FrequencyCodec.encode",
            "reference": "-",
            "ours/s": n / r["encode_s"],
            "reference/s": float("nan"),
            "speedup": float("nan"),
            "note": f"peak RSS growth {r['peak_mb']:.0f} MiB; output alone {n * 192 * 112 * 112 * 4 / 2**20:.0f} MiB",
        },
        {
            "benchmark": f"codec reference decode (exact), {n} images",
            "ours": "FrequencyCodec.decode",
            "reference": "-",
            "ours/s": n / r["decode_s"],
            "reference/s": float("nan"),
            "speedup": float("nan"),
            "note": f"round-trip max abs error {r['err']:.1e}",
        },
    ]


def run(small: bool = False, seed: int = 0) -> SuiteResult:
    torch.manual_seed(seed)
    n = 32 if small else 256
    repeat = 2 if small else 5
    rows = codec_compact(n, repeat) + codec_reference(8 if small else 64)
    return SuiteResult(
        suite="speed",
        columns=COLUMNS,
        rows=rows,
        settings={"small": small, "seed": seed, "threads": torch.get_num_threads()},
        notes=["speedup = reference time / our time, both measured in this run"],
    )
