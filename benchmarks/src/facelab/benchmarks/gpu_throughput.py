"""Training throughput of the core ``Trainer`` at the batch sizes people train with.

The whole step goes through ``facelab.core.train.Trainer`` (loader, autocast, backward, optimizer,
logging): iresnet50 + ArcFace head at 112x112, bf16 autocast on CUDA. The speed options are added
one at a time, so each row shows what one option buys:

    baseline        NCHW, for-each SGD, eager
    +channels_last  TrainConfig(channels_last=True)
    +fused          ... and fused_optimizer=True
    +compile        ... and compile=True (torch.compile, inductor)

Model FLOP utilization (MFU) = counted FLOPs of forward + backward per second over the device's
dense bf16 peak (from its data sheet where the device is known, else the bf16 matmul rate this
run measures, labelled as such). Run it on a GPU::

    python -m facelab.benchmarks.gpu_throughput --batch-sizes 128 256 512 --out results/gpu

On CPU it runs too (fp32, tiny settings in the tests), which checks the code path, not speed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

#: dense bf16 tensor-core peak, TFLOP/s, from the vendors' data sheets (no sparsity)
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10": 125.0,
}

#: the options each variant turns on, cumulatively
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {"channels_last": False, "fused_optimizer": False, "compile": False},
    "+channels_last": {"channels_last": True, "fused_optimizer": False, "compile": False},
    "+fused": {"channels_last": True, "fused_optimizer": True, "compile": False},
    "+compile": {"channels_last": True, "fused_optimizer": True, "compile": True},
}


def spec_peak_tflops(device_name: str) -> float | None:
    """The data-sheet bf16 peak of a device name such as 'NVIDIA H100 80GB HBM3' (None when
    unknown); the longest matching key wins ('H100 SXM' before 'H100')."""
    name = device_name.replace("-", " ")
    hits = [k for k in PEAK_BF16_TFLOPS if k in name]
    if "H100" in name and "HBM3" in name and "H100 SXM" not in hits:
        hits.append("H100 SXM")  # the SXM card reports itself as 'H100 80GB HBM3'
    return PEAK_BF16_TFLOPS[max(hits, key=len)] if hits else None


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 8192) -> float:
    """Measured rate of one large square matmul in ``dtype`` (TFLOP/s)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 10 if device.type == "cuda" else 1
    for _ in range(2):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_image(backbone: str, input_size: int, classes: int) -> int:
    """Forward + backward FLOPs of one image (matmuls and convolutions, torch's counter)."""
    from facelab.benchmarks.speed import _step_flops
    from facelab.core.backbones import get_backbone
    from facelab.core.heads import MarginHead

    model = get_backbone(backbone, input_size=input_size)
    head = MarginHead(512, classes, s=64.0, m2=0.5)
    x = torch.zeros(1, 3, input_size, input_size)
    y = torch.zeros(1, dtype=torch.long)
    return _step_flops(model, head, x, y)


def trainer_throughput(
    batch_size: int,
    variant: str = "baseline",
    *,
    backbone: str = "iresnet50",
    input_size: int = 112,
    classes: int = 10_000,
    steps: int = 30,
    warmup: int = 10,
    output_dir: str | Path = "runs/gpu-throughput",
) -> float:
    """Images/s of ``steps`` Trainer steps after ``warmup`` steps (compilation and cuDNN's
    algorithm search fall in the warm-up)."""
    from facelab.core.backbones import get_backbone
    from facelab.core.errors import UnknownNameError
    from facelab.core.heads import MarginHead
    from facelab.core.train import TrainConfig, Trainer

    if variant not in VARIANTS:
        raise UnknownNameError(f"unknown variant {variant!r}; valid: {list(VARIANTS)}")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    # a fixed pool of random images, cycled: the loader's work is a pinned copy per batch
    pool = max(batch_size * 4, 64)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(pool, 3, input_size, input_size, generator=g) * 2 - 1
    y = torch.randint(0, classes, (pool,), generator=g)
    repeats = -(-(warmup + steps) * batch_size // pool) + 1
    data = TensorDataset(x.repeat(repeats, 1, 1, 1), y.repeat(repeats))
    cfg = TrainConfig(
        output_dir=str(output_dir),
        max_steps=warmup + steps,
        batch_size=batch_size,
        lr=0.1,
        scheduler="constant",
        mixed_precision="bf16" if cuda else "no",
        save_on_exit=False,
        keep_last=None,
        log_every=10**9,
        progress=False,
        **VARIANTS[variant],
    )
    model = get_backbone(backbone, input_size=input_size)
    head = MarginHead(512, classes, s=64.0, m2=0.5)
    calls = {"n": 0, "t0": 0.0}

    def loss_fn(batch: Any, modules: Any, ctx: Any) -> torch.Tensor:
        if calls["n"] == warmup:  # every step before this one has finished
            _sync(device)
            calls["t0"] = time.perf_counter()
        calls["n"] += 1
        images, labels = batch
        out = modules["head"](modules["model"](images), labels)
        return torch.nn.functional.cross_entropy(out.logits.float(), out.targets)

    trainer = Trainer(cfg, {"model": model, "head": head}, loss_fn, data)
    trainer.fit()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - calls["t0"])


def run(
    batch_sizes: Sequence[int] = (128, 256, 512),
    variants: Sequence[str] = tuple(VARIANTS),
    *,
    backbone: str = "iresnet50",
    input_size: int = 112,
    classes: int = 10_000,
    steps: int = 30,
    warmup: int = 10,
    output_dir: str | Path = "runs/gpu-throughput",
) -> list[dict[str, Any]]:
    """One row per (batch size, variant): images/s, TFLOP/s and MFU."""
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    flops = flops_per_image(backbone, input_size, classes)
    spec = spec_peak_tflops(name) if cuda else None
    measured = matmul_tflops(
        device, torch.bfloat16 if cuda else torch.float32, 8192 if cuda else 512
    )
    rows = []
    for batch in batch_sizes:
        for variant in variants:
            try:
                rate = trainer_throughput(
                    batch,
                    variant,
                    backbone=backbone,
                    input_size=input_size,
                    classes=classes,
                    steps=steps,
                    warmup=warmup,
                    output_dir=output_dir,
                )
                error = ""
            except torch.cuda.OutOfMemoryError as exc:
                rate, error = float("nan"), f"out of memory: {str(exc).splitlines()[0]}"
            finally:
                if cuda:
                    torch.cuda.empty_cache()
            tflops = rate * flops / 1e12
            rows.append(
                {
                    "device": name,
                    "backbone": backbone,
                    "batch": batch,
                    "variant": variant,
                    "images/s": rate,
                    "TFLOP/s": tflops,
                    "MFU (data sheet)": tflops / spec if spec else float("nan"),
                    "MFU (measured matmul)": tflops / measured,
                    "GFLOP/image": flops / 1e9,
                    "peak TFLOP/s (data sheet, measured)": f"{spec or '-'}, {measured:.0f}",
                    "error": error,
                }
            )
            print(_row_line(rows[-1]), flush=True)
    return rows


def _row_line(r: dict[str, Any]) -> str:
    return (
        f"| {r['batch']} | {r['variant']} | {r['images/s']:,.0f} | {r['TFLOP/s']:.1f} | "
        f"{r['MFU (data sheet)']:.1%} | {r['MFU (measured matmul)']:.1%} | {r['error']} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    from facelab.core.cli import ArgumentParser

    p = ArgumentParser(prog="python -m facelab.benchmarks.gpu_throughput", description=__doc__)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--backbone", default="iresnet50")
    p.add_argument("--input-size", type=int, default=112)
    p.add_argument("--classes", type=int, default=10_000)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--out", type=Path, default=None, help="folder for throughput.json")
    args = p.parse_args(argv)
    print("| batch | variant | images/s | TFLOP/s | MFU (data sheet) | MFU (measured matmul) | |")
    print("|---|---|---|---|---|---|---|")
    rows = run(
        args.batch_sizes,
        args.variants,
        backbone=args.backbone,
        input_size=args.input_size,
        classes=args.classes,
        steps=args.steps,
        warmup=args.warmup,
        output_dir=(args.out or Path("runs")) / "gpu-throughput-run",
    )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "throughput.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
