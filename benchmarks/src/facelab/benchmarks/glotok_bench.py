"""GloTok speed and memory rows.

1. ``codebook_histogram`` forward + backward: ours (row blocks, recomputed backward) against
   the naive full ``K x K x bins`` tensor with plain autograd, each in a child process so its
   peak RSS growth is its own; at 16,384 codes (full run only) the naive version does not fit
   (its weights tensor alone is 43 GB), so that row reports ours alone.
2. Tokenizer encode and decode images/s against the full forward (encode + decode).
3. AR sampling tokens/s with the KV cache against recomputing the prefix (256 tokens).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import torch

from facelab.benchmarks.timing import measure, peak_rss_mb

BINS = 40


def _row(
    bench: str,
    ours: str,
    ref: str,
    ours_s: float,
    ref_s: float,
    note: str,
    speedup: float | None = None,
) -> dict[str, Any]:
    return {
        "benchmark": bench,
        "ours": ours,
        "reference": ref,
        "ours/s": ours_s,
        "reference/s": ref_s,
        "speedup": (ours_s / ref_s if ref_s > 0 else float("nan")) if speedup is None else speedup,
        "note": note,
    }


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 1024**2


def _child_histogram(side: str, k: int, repeat: int) -> dict[str, Any]:
    from facelab.glotok.histogram import codebook_histogram, codebook_histogram_naive

    torch.manual_seed(0)
    cb = torch.randn(k, 8, requires_grad=True)
    teacher = torch.full((BINS,), 1 / BINS)
    fn = codebook_histogram if side == "ours" else codebook_histogram_naive
    base = max(_current_rss_mb(), peak_rss_mb())
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        p = fn(cb, BINS)
        torch.nn.functional.kl_div(torch.log(p + 1e-10), teacher, reduction="sum").backward()
        times.append(time.perf_counter() - t0)
        cb.grad = None
    return {"seconds": min(times), "extra_mb": peak_rss_mb() - base}


def _run_child(side: str, k: int, repeat: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "facelab.benchmarks.glotok_bench", side, str(k), str(repeat)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def histogram_rows(k: int, with_naive: bool, repeat: int) -> list[dict[str, Any]]:
    ours = _run_child("ours", k, repeat)
    bench = f"codebook_histogram fwd+bwd, {k} codes x 8, {BINS} bins"
    naive_gb = k * k * BINS * 4 / 1e9
    if not with_naive:
        return [
            _row(bench, "row blocks, recomputed backward", "naive K x K x bins (does not fit)", 1 / ours["seconds"], float("nan"),
                 f"calls/s; ours peak +{ours['extra_mb']:.0f} MiB; the naive weights tensor alone is {naive_gb:.0f} GB")
        ]  # fmt: skip
    naive = _run_child("naive", k, repeat)
    mem_ratio = naive["extra_mb"] / max(ours["extra_mb"], 1.0)
    return [
        _row(bench, "row blocks, recomputed backward", "naive K x K x bins + autograd", 1 / ours["seconds"], 1 / naive["seconds"],
             "calls/s (time ratio)"),
        _row(bench + ", peak memory", f"+{ours['extra_mb']:.0f} MiB", f"+{naive['extra_mb']:.0f} MiB", float("nan"), float("nan"),
             "speedup column = naive / ours peak RSS growth (goal >= 5)", speedup=mem_ratio),
    ]  # fmt: skip


def tokenizer_rows(small: bool) -> list[dict[str, Any]]:
    from facelab.glotok.model import GloTok
    from facelab.glotok.train import toy_model_config

    torch.manual_seed(0)
    rows = []
    configs = [("toy 32 px", toy_model_config(), 16 if small else 64)]
    if not small:
        from facelab.glotok.model import GloTokConfig

        configs.append(("paper 256 px", GloTokConfig(), 4))
    for name, cfg, n in configs:
        model = GloTok(cfg).eval()
        x = torch.rand(n, 3, cfg.image_size, cfg.image_size) * 2 - 1
        with torch.no_grad():
            sem, vis = model.encode(x)
            t_full = measure(lambda m=model, x=x: m(x), 3)
            t_enc = measure(lambda m=model, x=x: m.encode(x), 3)
            t_dec = measure(lambda m=model, s=sem, v=vis: m.decode(s, v), 3)
        bench = f"tokenizer {name}, batch {n}"
        rows.append(
            _row(bench, "encode (indices)", "full forward", n / t_enc, n / t_full, "images/s")
        )
        rows.append(
            _row(bench, "decode (from indices)", "full forward", n / t_dec, n / t_full, "images/s")
        )
    return rows


def ar_rows(small: bool) -> list[dict[str, Any]]:
    from facelab.glotok.ar import ARConfig, ARTransformer

    torch.manual_seed(0)
    dim, depth = (64, 2) if small else (128, 4)
    ar = ARTransformer(
        ARConfig(
            num_classes=10,
            grid=16,
            semantic_codes=256,
            visual_codes=768,
            dim=dim,
            depth=depth,
            heads=4,
        )
    ).eval()
    labels = torch.arange(4 if small else 8) % 10
    n_tok = labels.shape[0] * 256

    def run(cache: bool):
        return ar.generate(
            labels, cfg_scale=1.5, use_cache=cache, generator=torch.Generator().manual_seed(0)
        )

    t_cache = measure(lambda: run(True), 1 if small else 3, warmup=0 if small else 1)
    t_plain = measure(lambda: run(False), 1, warmup=0)
    return [
        _row(f"AR sampling, 256 tokens x batch {labels.shape[0]}, dim {dim} depth {depth}, CFG", "KV cache", "recompute the prefix",
             n_tok / t_cache, n_tok / t_plain, "tokens/s (goal >= 3x)")
    ]  # fmt: skip


def run_glotok_bench(small: bool = False) -> list[dict[str, Any]]:
    import facelab.glotok  # noqa: F401  (not built -> ModuleNotFoundError -> "not built" row)

    rows = histogram_rows(768 if small else 2048, True, 1 if small else 2)
    if not small:
        rows += histogram_rows(16_384, False, 1)
    return rows + tokenizer_rows(small) + ar_rows(small)


if __name__ == "__main__":
    side, k, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(json.dumps(_child_histogram(side, k, repeat)))
