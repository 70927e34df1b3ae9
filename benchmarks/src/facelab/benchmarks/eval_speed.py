"""Speed of ``facelab.core.eval`` against plain numpy references measured in the same run.

Rows (``run_eval_speed(small)``; the columns of the ``speed`` suite):

1. ``verify()`` on 6,000 pairs of 512-d embeddings vs a numpy transcription of insightface's
   ``eval/verification.py`` loops (one pass over the pairs per threshold and fold).
2. 1:1 scoring + TAR@FAR for 10M template pairs (1M when small) over 23,124 templates (the
   size of IJB-C) vs insightface's ``eval_ijbc.py`` way (float64 features, 100k-pair batches,
   sklearn ROC, ``min(zip(...))`` per FAR). Each side runs in a fresh process so its peak
   memory (RSS growth) can be reported.
3. 1:N search of 10k probes in a 1M gallery (1k in 100k when small), top-10, chunked matmul +
   running top-k, exact float32 and bfloat16 + float32 re-ranking, vs numpy (chunked matmul +
   ``argpartition``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch

from facelab.benchmarks.timing import measure, peak_rss_mb

COLUMNS = ["benchmark", "ours", "reference", "ours/s", "reference/s", "speedup", "note"]

IJBC_TEMPLATES = 23124
FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


# --------------------------------------------------------------------------------------------
# 1. verify() vs insightface's loops


def _insightface_verify(e1: np.ndarray, e2: np.ndarray, same: np.ndarray, nfolds: int = 10):
    """insightface's calculate_roc + calculate_val, transcribed with its loops."""
    from scipy.interpolate import BSpline
    from sklearn.model_selection import KFold

    dist = np.sum(np.square(e1 - e2), 1)
    folds = list(KFold(nfolds, shuffle=False).split(np.arange(len(same))))

    def acc(th, d, s):
        p = d < th
        return (np.sum(p & s) + np.sum(~p & ~s)) / d.size

    thr = np.arange(0, 4, 0.01)
    accs = []
    for tr, te in folds:
        a = np.array([acc(t, dist[tr], same[tr]) for t in thr])
        b = int(np.argmax(a))
        for t in thr:  # insightface also evaluates every threshold on the test fold (tpr/fpr)
            acc(t, dist[te], same[te])
        accs.append(acc(thr[b], dist[te], same[te]))
    vthr = np.arange(0, 4, 0.001)
    vals = []
    for tr, te in folds:
        far = np.array([np.sum((dist[tr] < t) & ~same[tr]) / np.sum(~same[tr]) for t in vthr])
        if far.max() >= 1e-3:
            # interp1d(far, thr, kind='slinear') as scipy <= 1.8 evaluated it (repeated x)
            th = BSpline(np.r_[far[0], far, far[-1]], vthr, k=1)(1e-3)
        else:
            th = 0.0
        p = dist[te] < th
        vals.append(np.sum(p & same[te]) / np.sum(same[te]))
    return float(np.mean(accs)), float(np.mean(vals))


def verify_speed(n_pairs: int = 6000, dim: int = 512, repeat: int = 3) -> dict[str, Any]:
    from facelab.core.eval import verify

    rng = np.random.default_rng(0)
    same = np.tile(np.r_[np.ones(300, bool), np.zeros(300, bool)], n_pairs // 600)
    a = rng.normal(size=(n_pairs, dim))
    b = np.where(same[:, None], a + 10 * rng.normal(size=a.shape), rng.normal(size=a.shape))
    e1 = a / np.linalg.norm(a, axis=1, keepdims=True)
    e2 = b / np.linalg.norm(b, axis=1, keepdims=True)
    ours = verify(e1, e2, same, normalize=False)
    ref_acc, ref_val = _insightface_verify(e1, e2, same)
    t_ours = measure(lambda: verify(e1, e2, same, normalize=False), repeat)
    t_ref = measure(lambda: _insightface_verify(e1, e2, same), 1, warmup=0)
    equal = ours.accuracy == ref_acc and ours.val == ref_val
    return {
        "benchmark": f"verify, {n_pairs} pairs x {dim}-d, 10 folds + VAL@FAR",
        "ours": "eval.verify",
        "reference": "insightface loops (numpy)",
        "ours/s": n_pairs / t_ours,
        "reference/s": n_pairs / t_ref,
        "speedup": t_ref / t_ours,
        "note": f"pairs/s; accuracy {ours.accuracy:.4f}, VAL {ours.val:.4f}; "
        f"identical to the reference: {'yes' if equal else 'NO'}",
    }


# --------------------------------------------------------------------------------------------
# 2. 1:1 scoring + TAR@FAR, in child processes (peak memory)


def _pair_problem(n_pairs: int, n_templates: int, dim: int = 512, seed: int = 0):
    """IJB-like: templates of ~3500 subjects, 1% genuine pairs."""
    rng = np.random.default_rng(seed)
    n_subj = max(2, n_templates // 7)
    subj = rng.integers(0, n_subj, n_templates)
    feats = rng.standard_normal((n_subj, dim), dtype=np.float32)[subj]
    feats += 3.5 * rng.standard_normal((n_templates, dim), dtype=np.float32)
    i1 = rng.integers(0, n_templates, n_pairs)
    i2 = rng.integers(0, n_templates, n_pairs)
    # make 1% of the pairs genuine: pick a template of the same subject
    g = rng.random(n_pairs) < 0.01
    order = np.argsort(subj, kind="stable")
    first = np.searchsorted(subj[order], subj[i1[g]])
    count = np.bincount(subj, minlength=n_subj)[subj[i1[g]]]
    i2[g] = order[first + rng.integers(0, count)]
    labels = subj[i1] == subj[i2]
    return feats, i1, i2, labels


def _child_pairs(side: str, n_pairs: int, n_templates: int) -> dict[str, Any]:
    feats, i1, i2, labels = _pair_problem(n_pairs, n_templates)
    base = peak_rss_mb()
    t0 = time.perf_counter()
    if side == "ours":
        from facelab.core.eval import pair_scores, tar_at_far

        scores = pair_scores(feats, i1, i2)
        tars = tar_at_far(scores, labels, FARS)
    else:
        from sklearn.metrics import roc_curve

        f = feats.astype(np.float64)
        f /= np.linalg.norm(f, axis=1, keepdims=True)
        scores = np.zeros(n_pairs)
        for s in range(0, n_pairs, 100000):  # eval_ijbc.py's verification()
            scores[s : s + 100000] = np.sum(f[i1[s : s + 100000]] * f[i2[s : s + 100000]], -1)
        fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
        fpr, tpr = np.flipud(fpr), np.flipud(tpr)
        tars = {}
        for x in FARS:
            _, i = min(zip(abs(fpr - x), range(len(fpr))))
            tars[x] = float(tpr[i])
    dt = time.perf_counter() - t0
    return {
        "seconds": dt,
        "base_mb": base,
        "peak_mb": peak_rss_mb(),
        "tars": {repr(k): v for k, v in tars.items()},
    }


def _run_child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "facelab.benchmarks.eval_speed", *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def pair_speed(n_pairs: int, n_templates: int = IJBC_TEMPLATES) -> dict[str, Any]:
    ours = _run_child("pairs", "ours", str(n_pairs), str(n_templates))
    ref = _run_child("pairs", "reference", str(n_pairs), str(n_templates))
    diff = max(abs(ours["tars"][k] - ref["tars"][k]) for k in ours["tars"])
    tar3 = ours["tars"][repr(1e-3)]
    return {
        "benchmark": f"1:1 scores + TAR@FAR(1e-6..1e-1), {n_pairs / 1e6:g}M pairs, "
        f"{n_templates} templates x 512",
        "ours": "eval.pair_scores + tar_at_far",
        "reference": "insightface eval_ijbc (numpy f64, 100k batches)",
        "ours/s": n_pairs / ours["seconds"],
        "reference/s": n_pairs / ref["seconds"],
        "speedup": ref["seconds"] / ours["seconds"],
        "note": f"pairs/s; process peak RSS ours {ours['peak_mb']:.0f} MiB (limit 8192; "
        f"{ours['base_mb']:.0f} MiB before scoring), reference {ref['peak_mb']:.0f} MiB; "
        f"exact TAR (all scores kept); "
        f"TAR@1e-3 {tar3:.4f}; max |TAR diff| vs reference {diff:.1e}",
    }


# --------------------------------------------------------------------------------------------
# 3. 1:N search


def _numpy_search(p: np.ndarray, g: np.ndarray, k: int, chunk: int = 256):
    idx = np.empty((p.shape[0], k), dtype=np.int64)
    for s in range(0, p.shape[0], chunk):
        sim = p[s : s + chunk] @ g.T
        part = np.argpartition(sim, sim.shape[1] - k, axis=1)[:, -k:].copy()  # k largest
        top = np.take_along_axis(sim, part, 1)
        del sim  # free the block before the next matmul
        idx[s : s + chunk] = np.take_along_axis(part, np.argsort(-top, axis=1), 1)
    return idx


def search_speed(n_probes: int, n_gallery: int, dim: int = 512, k: int = 10) -> list[dict]:
    from facelab.core.eval import search

    rng = np.random.default_rng(0)
    g = rng.standard_normal((n_gallery, dim), dtype=np.float32)
    g /= np.sqrt(np.einsum("ij,ij->i", g, g))[:, None]  # no (N, D) temporary
    p = g[rng.integers(0, n_gallery, n_probes)] + 0.8 * rng.standard_normal(
        (n_probes, dim), dtype=np.float32
    ) / np.sqrt(dim)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    res = {}
    t = {}
    for name, prec in (("float32", "float32"), ("bfloat16", "bfloat16")):
        t0 = time.perf_counter()
        res[name] = search(p, g, k, normalize=False, precision=prec)
        t[name] = time.perf_counter() - t0
    ours_peak = peak_rss_mb()  # process peak so far: the problem itself plus both searches
    t0 = time.perf_counter()
    ref = _numpy_search(p, g, k)
    t_ref = time.perf_counter() - t0
    rows = []
    for name in ("float32", "bfloat16"):
        agree = np.mean(res[name].indices == ref)
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(res[name].indices, ref)])
        rows.append(
            {
                "benchmark": f"1:N search top-{k}, {n_probes} probes x {n_gallery} gallery x {dim}",
                "ours": f"eval.search ({name})",
                "reference": "numpy matmul + argpartition (256-probe chunks)",
                "ours/s": n_probes / t[name],
                "reference/s": n_probes / t_ref,
                "speedup": t_ref / t[name],
                "note": f"probes/s; top-{k} sets equal to numpy: {100 * recall:.2f}%, "
                f"same order {100 * agree:.2f}%; process peak RSS before the reference "
                f"{ours_peak:.0f} MiB (gallery alone {g.nbytes / 2**20:.0f} MiB)",
            }
        )
    return rows


def run_eval_speed(small: bool = False) -> list[dict[str, Any]]:
    """The eval rows of the ``speed`` suite (columns as in ``speed.COLUMNS``)."""
    rows = [verify_speed(6000)]
    rows.append(pair_speed(1_000_000 if small else 10_000_000))
    if small:
        rows += search_speed(1000, 100_000)
    else:
        rows += search_speed(10_000, 1_000_000)
    for r in rows:
        r.setdefault("threads", torch.get_num_threads())
    return [{c: r[c] for c in COLUMNS} for r in rows]


def _child_main(argv: list[str]) -> None:
    if argv and argv[0] == "pairs":
        side, n_pairs, n_templates = argv[1], int(argv[2]), int(argv[3])
        print(json.dumps(_child_pairs(side, n_pairs, n_templates)))
        return
    raise SystemExit(
        f"usage: python -m facelab.benchmarks.eval_speed pairs ours|reference N T; got {argv}"
    )


if __name__ == "__main__":
    _child_main(sys.argv[1:])
