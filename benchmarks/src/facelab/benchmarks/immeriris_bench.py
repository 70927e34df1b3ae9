"""ImmerIris speed: Hamming matching, the procedural generator and the iris encoder.

* ``hamming_matrix`` (all vs all, 16 x 256 x 4-bit codes, 31 shifts) against a straightforward
  per-pair numpy reference written like open-iris's matcher (``np.roll`` the probe, count
  mismatches and valid bits per shift, keep the minimum). The reference runs on a sample of pairs
  and is reported per pair; the ratio is the time per comparison.
* ``hamming_distance`` on N pairs (DFT and packed-bit paths) against the same reference.
* The generator (128 px images) rendered in batches against one image at a time (the same
  renderer called per image), and the classical encoder (rubber sheet + Gabor bank + fragile
  bits) batched against one image at a time.

Both sides of each row run in this process on the same data, one torch thread, timed in CPU
seconds of this process (``time.process_time``): on one thread that is the work done, and it
does not change when other jobs share the machine (wall time on a loaded machine would).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from facelab.benchmarks.timing import speed_row as _row


def measure(fn, repeat: int = 2, warmup: int = 1) -> float:
    """Median CPU seconds of ``fn()`` (this process) over ``repeat`` runs after ``warmup``."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def _codes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    codes = torch.rand(n, 16, 256, 4, generator=g) < 0.5
    masks = torch.rand(n, 16, 256, 4, generator=g) < 0.75
    masks[:, :, 40:90] = False  # an eyelid-like sector
    return codes, masks


def _reference_pairs_per_s(a, ma, b, mb, pairs: int) -> float:
    from facelab.immeriris.hamming import reference_hamming_distance

    an, man, bn, mbn = (t.numpy() for t in (a, ma, b, mb))
    t0 = time.process_time()
    for k in range(pairs):
        reference_hamming_distance(
            an[k % len(an)], man[k % len(an)], bn[k % len(bn)], mbn[k % len(bn)]
        )
    return pairs / (time.process_time() - t0)


def hamming_rows(small: bool) -> list[dict[str, Any]]:
    from facelab.immeriris.hamming import hamming_distance, hamming_matrix

    n = 200 if small else 1000
    a, ma = _codes(n, 0)
    b, mb = _codes(n, 1)
    ref = _reference_pairs_per_s(a, ma, b, mb, 40 if small else 200)
    t = measure(
        lambda: hamming_matrix(a, ma, b, mb),
        repeat=1 if not small else 2,
        warmup=0 if not small else 1,
    )
    rows = [
        _row(
            f"hamming_matrix {n} x {n}, 16x256x4 bits, 31 shifts",
            "DFT correlation (float32, exact counts)",
            "per-pair numpy loop (open-iris style)",
            n * n / t,
            ref,
            f"comparisons per CPU second; {t:.2f} CPU s for the matrix; goal speedup >= 50",
        )
    ]
    m = 2000 if not small else 400
    pa, pma = _codes(m, 2)
    pb, pmb = _codes(m, 3)
    for method in ("dft", "packed"):
        tp = measure(
            lambda method=method: hamming_distance(pa, pma, pb, pmb, method=method), repeat=2
        )
        rows.append(
            _row(
                f"hamming_distance {m} pairs, 31 shifts",
                f"vectorized ({method})",
                "per-pair numpy loop (open-iris style)",
                m / tp,
                ref,
                "comparisons per CPU second",
            )
        )
    return rows


def generator_rows(small: bool) -> list[dict[str, Any]]:
    from facelab.immeriris.generator import OcularConfig, OcularDataset

    ds = OcularDataset(8, OcularConfig(size=128), seed=0)
    n = 128 if small else 1024
    idx = torch.arange(n) * 7 % len(ds)
    ds.textures  # noqa: B018 - built once, outside the timing
    t = measure(lambda: ds.render(idx), repeat=2)
    k = 16 if small else 64
    t1 = measure(lambda: [ds.render(idx[i : i + 1]) for i in range(k)], repeat=1)
    return [
        _row(
            "generator, 128x128 NIR ocular images",
            "batched render (chunks of 32)",
            "one image at a time",
            n / t,
            k / t1,
            "images per CPU second, one thread",
        )
    ]


def encoder_rows(small: bool) -> list[dict[str, Any]]:
    from facelab.immeriris.gabor import IrisEncoder
    from facelab.immeriris.generator import OcularConfig, OcularDataset
    from facelab.immeriris.normalize import rubber_sheet
    from facelab.immeriris.segment import oracle_segmentation

    ds = OcularDataset(4, OcularConfig(size=128), seed=0)
    n = 32 if small else 128
    b = ds.render_truth(torch.arange(n) * 5)
    seg = oracle_segmentation(b)
    enc = IrisEncoder()

    def batched(sl=slice(None)):
        st = rubber_sheet(b.images[sl], seg.pupil[sl], seg.iris[sl], seg.valid[sl])
        return enc.encode(st.image, st.mask)

    t = measure(batched, repeat=2)
    k = 8 if small else 32
    t1 = measure(lambda: [batched(slice(i, i + 1)) for i in range(k)], repeat=1)
    return [
        _row(
            "classical encoder: rubber sheet 128x512 + 2 Gabor filters + fragile bits",
            "batched",
            "one image at a time",
            n / t,
            k / t1,
            "images per CPU second, one thread",
        )
    ]


def run_immeriris_bench(small: bool = False) -> list[dict[str, Any]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return hamming_rows(small) + generator_rows(small) + encoder_rows(small)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":  # pragma: no cover
    import sys

    for r in run_immeriris_bench(small="--small" in sys.argv):
        print({k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()})
