"""The ``speed`` suite: each row is a ratio against a reference measured in the same run."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
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
    checked = FrequencyCodec("compact")  # the default: range and finiteness checked
    t_checked = measure(lambda: checked.encode(x), repeat)

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
    # what the fused encode computes: (n*196, 192) @ (192, 192), 3x the FLOPs above (the colour
    # matrix folded into every DCT basis vector)
    a_fused = torch.randn(n * 196, 192)
    w_fused = torch.randn(192, 192)
    t_fused = measure(lambda: a_fused @ w_fused, repeat)
    rows = [
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
        {
            "benchmark": f"codec compact encode, {n}x3x112x112",
            "ours": "FrequencyCodec.encode",
            "reference": "bare torch matmul, the fused 192x192 transform's FLOPs",
            "ours/s": n / t_ours,
            "reference/s": n / t_fused,
            "speedup": t_fused / t_ours,
            "note": "ours vs the matmul of what it computes (3x the row above's FLOPs)",
        },
        {
            "benchmark": f"codec compact encode, {n}x3x112x112",
            "ours": "FrequencyCodec.encode, input checks on (default)",
            "reference": "bare torch matmul, same FLOPs",
            "ours/s": n / t_checked,
            "reference/s": n / t_mm,
            "speedup": t_mm / t_checked,
            "note": "finite + range check costs one aminmax pass",
        },
    ]
    if torch.cuda.is_available():
        rows.append(_codec_compact_cuda(codec, x, repeat))
    return rows


def _codec_compact_cuda(codec: Any, x: torch.Tensor, repeat: int) -> dict[str, Any]:
    """Compact encode on the GPU against a bare matmul of the block transform's FLOPs there."""
    dev = torch.device("cuda")
    n = x.shape[0]
    xc = x.to(dev)
    t_ours = measure(lambda: codec.encode(xc), 10 * repeat, warmup=3, device=dev)
    a = torch.randn(n * 3 * 196, 64, device=dev)
    basis = torch.randn(64, 64, device=dev)
    t_mm = measure(lambda: a @ basis, 10 * repeat, warmup=3, device=dev)
    return {
        "benchmark": f"codec compact encode, {n}x3x112x112 ({torch.cuda.get_device_name(dev)})",
        "ours": "FrequencyCodec.encode (CUDA, fp32)",
        "reference": "bare torch matmul, same FLOPs (CUDA, fp32)",
        "ours/s": n / t_ours,
        "reference/s": n / t_mm,
        "speedup": t_mm / t_ours,
        "note": "images/s on the GPU",
    }


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


def _reference_in_process(n: int) -> dict[str, float]:
    from facelab.core.freq import FrequencyCodec

    x = torch.rand(n, 3, 112, 112) * 2 - 1
    codec = FrequencyCodec("reference", check=False)
    t = measure(lambda: codec.encode(x), repeat=2)
    c = codec.encode(x)
    t_dec = measure(lambda: codec.decode(c), repeat=2)
    err = float((codec.decode(c) - x).abs().max())
    return {"encode_s": t, "decode_s": t_dec, "peak_mb": float("nan"), "err": err}


def codec_reference(n: int = 64, fresh_process: bool = True) -> list[dict[str, Any]]:
    """Reference mode images/s and the peak memory of encode (measured in a fresh process;
    ``fresh_process=False``: in this one, without the memory figure, for --small)."""
    if fresh_process:
        out = subprocess.run(
            [sys.executable, "-c", _REF_MEMORY_SCRIPT, str(n)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ},
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
    else:
        r = _reference_in_process(n)
    memory = (
        f"peak RSS growth {r['peak_mb']:.0f} MiB"
        if r["peak_mb"] == r["peak_mb"]
        else "peak RSS not measured (--small: no fresh process)"
    )
    return [
        {
            "benchmark": f"codec reference encode, {n}x3x112x112 -> 192x112x112",
            "ours": "FrequencyCodec.encode",
            "reference": "-",
            "ours/s": n / r["encode_s"],
            "reference/s": float("nan"),
            "speedup": float("nan"),
            "note": f"{memory}; output alone {n * 192 * 112 * 112 * 4 / 2**20:.0f} MiB",
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


# --------------------------------------------------------------------------------------------
# iresnet50 training step against a bare matmul of the same FLOPs


def _step_flops(
    model: torch.nn.Module, head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> int:
    """FLOPs of one forward + backward of the batch (torch's FlopCounterMode: matmuls and
    convolutions), counted on its first image and scaled: those FLOPs are per image. The count
    runs in eval mode (BatchNorm over one image has no batch statistics; it adds no counted
    FLOPs either way)."""
    from torch.utils.flop_counter import FlopCounterMode

    training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            out = head(model(x[:1]), y[:1])
            torch.nn.functional.cross_entropy(out.logits, out.targets).backward()
    finally:
        model.train(training)
        model.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
    return int(counter.get_total_flops()) * x.shape[0]


def iresnet50_train_step(small: bool) -> list[dict[str, Any]]:
    """Images/s of an iresnet50 + ArcFace head SGD step at 112x112 (fp32 on CPU, bf16 autocast
    on CUDA) and the same FLOPs as one bare matmul in the same precision: the ratio is the share
    of the machine's matmul throughput the training step reaches."""
    from facelab.core.backbones import get_backbone
    from facelab.core.heads import MarginHead

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    batch = 32 if (cuda or not small) else 2
    steps = 10 if cuda else (1 if small else 3)
    dtype = torch.bfloat16 if cuda else torch.float32
    g = torch.Generator().manual_seed(0)
    model = get_backbone("iresnet50", input_size=112).to(device)
    head = MarginHead(512, 1000, s=64.0, m2=0.5).to(device)
    opt = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.1, momentum=0.9)
    x = (torch.rand(batch, 3, 112, 112, generator=g) * 2 - 1).to(device)
    y = torch.randint(0, 1000, (batch,), generator=g).to(device)
    flops = _step_flops(model, head, x, y)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=cuda):
            out = head(model(x), y)
            loss = torch.nn.functional.cross_entropy(out.logits.float(), out.targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # CPU at --small size: one timed step, no warm-up (an iresnet50 step takes seconds; the
    # FLOP count above already ran the layers once)
    t_step = measure(step, steps, warmup=0 if (small and not cuda) else 1, device=device)
    # a square matmul with the step's FLOPs (2 n^3 = flops), same dtype and device
    n = max(256, round((flops / 2) ** (1 / 3) / 64) * 64)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    reps = max(1, round(flops / (2 * n**3)))
    t_mm = measure(lambda: [a @ b for _ in range(reps)], 3, warmup=1, device=device)
    what = "bf16 autocast, CUDA" if cuda else f"fp32, CPU, {torch.get_num_threads()} threads"
    return [
        {
            "benchmark": f"iresnet50 + ArcFace head training step, 112x112, batch {batch} ({what})",
            "ours": "get_backbone('iresnet50') + MarginHead, SGD",
            "reference": f"bare matmul, same FLOPs ({reps} x {n}^3)",
            "ours/s": batch / t_step,
            "reference/s": batch / t_mm,
            "speedup": t_mm / t_step,
            "note": f"images/s; {flops / batch / 1e9:.1f} GFLOP per image (fwd+bwd); speedup = "
            "share of the matmul throughput the step reaches",
        }
    ]


# --------------------------------------------------------------------------------------------
# the suite


def _benchmark_functions(small: bool) -> list[tuple[str, str, tuple[str, ...]]]:
    """(label, module, entry function names to try) of the row producers folded into the suite,
    in table order. ``<method>_bench.py`` modules are found by file name; their entry is
    ``run_<method>_bench(small)`` (or ``run_<method>_speed(small)``)."""
    found: list[tuple[str, str, tuple[str, ...]]] = [
        ("trainer overhead", "facelab.benchmarks.trainer_overhead", ("run_trainer_overhead",)),
        ("eval", "facelab.benchmarks.eval_speed", ("run_eval_speed",)),
        ("slerpface", "facelab.benchmarks.slerpface_speed", ("run_slerpface_speed",)),
    ]
    for path in sorted(Path(__file__).parent.glob("*_bench.py")):
        method = path.stem.removesuffix("_bench")
        names = (f"run_{method}_bench", f"run_{method}_speed")
        found.append((method, f"facelab.benchmarks.{path.stem}", names))
    return found


def _resolve(module: str, names: tuple[str, ...]) -> Callable[[bool], list[dict[str, Any]]]:
    """The first of ``names`` in ``module`` (ImportError / AttributeError when there is none)."""
    mod = importlib.import_module(module)
    for name in names:
        fn = getattr(mod, name, None)
        if callable(fn):
            return fn
    raise AttributeError(f"{module} has none of {', '.join(f'{n}(small)' for n in names)}")


def _row_error(label: str, status: str) -> dict[str, Any]:
    nan = float("nan")
    return {
        "benchmark": label,
        "ours": "-",
        "reference": "-",
        "ours/s": nan,
        "reference/s": nan,
        "speedup": nan,
        "note": status,
    }


def _call_rows(label: str, fn: Callable[[], list[dict[str, Any]]]) -> tuple[list[dict], str]:
    """(rows, status): status "ok", "not built" (a facelab package it needs is missing) or
    "failed: <error>" (any other exception, or rows without the speed columns)."""
    try:
        rows = fn()
        for r in rows:
            missing = [c for c in COLUMNS if c not in r]
            if missing:
                raise KeyError(f"row lacks columns {missing}")
        return [{c: r[c] for c in COLUMNS} for r in rows], "ok"
    except ModuleNotFoundError as err:
        if (err.name or "").startswith("facelab."):
            return [_row_error(label, f"not built ({err})")], "not built"
        text = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        return [_row_error(label, f"failed: {text}")], f"failed: {text}"
    except Exception as err:
        text = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        return [_row_error(label, f"failed: {text}")], f"failed: {text}"


def run(
    small: bool = False,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
    **_: Any,
) -> SuiteResult:
    """Every speed row: codec, trainer overhead, eval, SlerpFace, method benchmarks, iresnet50."""
    from facelab.benchmarks.progress import Progress

    prog = Progress("speed", progress)
    torch.manual_seed(seed)
    n = 32 if small else 256
    repeat = 2 if small else 5
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    producers: list[tuple[str, Callable[[], list[dict[str, Any]]] | str]] = [
        (
            "codec",
            lambda: (
                codec_compact(n, repeat)
                + codec_reference(8 if small else 64, fresh_process=not small)
            ),
        )
    ]
    for label, module, names in _benchmark_functions(small):
        try:
            fn = _resolve(module, names)
        except ImportError as e:  # the module or what it benchmarks is not built yet
            producers.append((label, f"not built ({type(e).__name__}: {e})"))
            continue
        except AttributeError as e:
            producers.append((label, f"not built ({e})"))
            continue
        producers.append((label, lambda fn=fn: fn(small)))
    producers.append(("iresnet50 training step", lambda: iresnet50_train_step(small)))
    for label, producer in producers:
        with prog.stage(label) as record:
            if isinstance(producer, str):
                rows.append(_row_error(label, producer))
                record.status = "not built"
                continue
            got, status = _call_rows(label, producer)
            rows += got
            record.status = status.split(":")[0]
            if status.startswith("failed"):
                failed.append(label)
    return SuiteResult(
        suite="speed",
        columns=COLUMNS,
        rows=rows,
        settings={"small": small, "seed": seed, "threads": torch.get_num_threads()},
        notes=[
            "speedup = reference time / our time, both measured in this run on this machine",
            "absolute rates depend on the machine and its load (see Machine); compare ratios",
        ],
        failed=failed,
        timings=prog.summary(),
    )
