"""Calibrate the claim tests: rerun what each quality-threshold test measures over several seeds
and two torch thread counts, and print the distribution its threshold is set from.

A test that asserts a trained model's quality (accuracy, attack SSIM, ...) must hold on any
machine. Another CPU takes another training trajectory (other SIMD kernels, other summation
orders); another torch thread count does too, so seeds x threads {1, 2} stand in for "other
machines". Every measurement here calls the test module's own builder and measure functions
(imported from the test file), so the numbers are exactly what the test asserts on.

    uv run python scripts/calibrate_claims.py --list
    uv run python scripts/calibrate_claims.py minusface duetface            # seeds: the test's + 1..4
    uv run python scripts/calibrate_claims.py core-train --seeds default 1 2 3 4 5 6 7 8 9
    uv run python scripts/calibrate_claims.py --summary minusface           # from the saved runs

Each (claim, threads) runs in a fresh process that sets the thread count before any work and
measures every seed in turn; each measurement appends one JSON line to
``results/calibration/<claim>.jsonl``, and (seed, threads) pairs already there are skipped, so an
interrupted calibration continues where it stopped. ``--summary`` prints min / mean / max of
every measured quantity, overall and per thread count.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "calibration"


def load(relpath: str, name: str):
    """Import a test module (or conftest) by path under a unique module name."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relpath)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------
# one function per claim: (seed or None for the test's own, scratch folder) -> {quantity: value}


def core_train(seed, tmp):
    mod = load("shared/tests/test_train.py", "_cal_core_train")
    *_, measured = mod.train_blobs(tmp, seed=0 if seed is None else seed)
    return measured


def core_attack_image(seed, tmp):
    mod = load("shared/tests/test_privacy.py", "_cal_core_privacy")
    return mod.measure_image_attack(0 if seed is None else seed)


def core_attack_code(seed, tmp):
    mod = load("shared/tests/test_privacy.py", "_cal_core_privacy")
    return mod.measure_code_attack(0 if seed is None else seed)


def partialface_run(seed, tmp):
    mod = load("packages/partialface/tests/test_train_eval.py", "_cal_pf_train_eval")
    s = mod.SEED if seed is None else seed
    run = mod.train_run(tmp / "pf", s)
    baseline = mod.train_baseline(tmp / "rgb", s)
    return mod.measure_matching(run, baseline)


def partialface_attack(seed, tmp):
    mod = load("packages/partialface/tests/test_attack.py", "_cal_pf_attack")
    return mod.measure_attack(0 if seed is None else seed)


def slerpface_train(seed, tmp):
    """test_toyfaces.py: the tiny recipe's group-loss decrease and the protected-matching AUC
    (the test module is left as it is; the AUC is computed as the test computes it)."""
    import dataclasses

    import torch

    from facelab.core.data.toyfaces import ToyFaces, make_pairs
    from facelab.slerpface import generate_keys, match, protect
    from facelab.slerpface.train import train

    mod = load("packages/slerpface/tests/test_toyfaces.py", "_cal_slerp_toyfaces")
    cfg = mod.tiny_recipe(tmp / "slerp")
    if seed is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
    extractor, result = train(cfg)
    hist = result.history
    ds = ToyFaces(30, 4, size=mod.SIZE, identity_offset=100_000, difficulty="easy")
    t, w = extractor.extract(ds.materialize(torch.float32))
    i1, i2, same = make_pairs(ds.labels, 300, seed=1)
    keys = generate_keys(len(i1), 4, 16, seed=0)
    p = protect(t[i1], w[i1], keys, generator=torch.Generator().manual_seed(0))
    s = match(p, t[i2], w[i2], keys).scores
    gen, imp = s[same], s[~same]
    auc = float((gen.unsqueeze(1) > imp.unsqueeze(0)).double().mean())
    return {
        "group_loss_ratio": hist[-1]["group_loss"] / hist[0]["group_loss"],
        "genuine_minus_impostor": float(gen.mean() - imp.mean()),
        "auc": auc,
    }


def slerpface_unlink(seed, tmp):
    """test_unlinkability.py's three D_sys claims on synthetic templates; ``seed`` draws other
    templates and other keys (the tests use 0; no training)."""
    import torch

    from facelab.slerpface import get_protector, unlinkability
    from facelab.slerpface.baselines import link_group_norms
    from facelab.slerpface.evaluate import alpha_sweep, d_sys_with_null, link_scores

    conf = load("packages/slerpface/tests/conftest.py", "_cal_slerp_conftest")
    s = 0 if seed is None else seed
    out = {}
    t, w, labels = conf.make_identities(n_ids=400, per_id=2, seed=s)
    for name in ("slerpface", "unprotected"):
        mated, nonmated = link_scores(get_protector(name), t, w, labels, seed=s)
        out[name] = unlinkability(mated, nonmated).d_sys
        half = nonmated.shape[0] // 2
        out[name + "_null"] = unlinkability(nonmated[:half], nonmated[half:]).d_sys
    prot = get_protector("slerpface")
    mated, nonmated = link_scores(prot, t, w, labels, seed=s, link=link_group_norms)
    linked, _ = d_sys_with_null(mated, nonmated)
    w_free = torch.softmax(
        0.5 * torch.randn(w.shape, generator=torch.Generator().manual_seed(5 + s)), -1
    )
    mated, nonmated = link_scores(prot, t, w_free, labels, seed=s, link=link_group_norms)
    free, null = d_sys_with_null(mated, nonmated)
    out |= {"norms_linked": linked.d_sys, "norms_free": free.d_sys, "norms_free_null": null}
    t, w, labels = conf.make_identities(n_ids=300, per_id=2, noise=1.2, seed=s)
    rows = alpha_sweep(t, w, labels, (0.5, 0.9, 1.0), num_pairs=600, seed=s)
    d = [r["d_sys"] for r in rows[:3]]
    acc = [r["accuracy"] for r in rows[:3]]
    out |= {
        "sweep_d05_minus_d09": d[0] - d[1],
        "sweep_d05_minus_d10": d[0] - d[2],
        "sweep_acc05_minus_acc10": acc[0] - acc[2],
        "sweep_norms_only": rows[3]["d_sys"],
    }
    return out


def duetface(seed, tmp):
    conf = load("packages/duetface/tests/conftest.py", "_cal_duet_conftest")
    mod = load("packages/duetface/tests/test_claims.py", "_cal_duet_claims")
    run = conf.train_toy_run(tmp / "duet", conf.TOY_SEED if seed is None else seed)
    out = mod.measure_accuracy(run)
    out |= mod.measure_inversion(run, conf.faces, 0 if seed is None else seed)
    return out


def minusface(seed, tmp):
    mod = load("packages/minusface/tests/test_claims.py", "_cal_mf_claims")
    run = mod.train_toy(tmp / "mf", seed)
    faces = mod.make_faces(run["cfg"].data.toy_difficulty)
    out = mod.measure_recognition(run)
    out |= mod.measure_looks(run, faces)
    out |= mod.measure_inversion(run, faces, 0 if seed is None else seed)
    return out


CLAIMS: dict[str, tuple[Callable, str]] = {
    "core-train": (core_train, "shared/tests/test_train.py::test_loss_decreases_and_eval_runs"),
    "core-attack-image": (
        core_attack_image,
        "shared/tests/test_privacy.py::test_image_attack_reconstructs_noise_attack_does_not",
    ),
    "core-attack-code": (
        core_attack_code,
        "shared/tests/test_privacy.py::test_vector_code_attack_beats_noise",
    ),
    "partialface-run": (
        partialface_run,
        "packages/partialface/tests/test_train_eval.py (cross-subset, protocol, one space)",
    ),
    "partialface-attack": (
        partialface_attack,
        "packages/partialface/tests/test_attack.py::test_inversion_from_one_subset_...",
    ),
    "slerpface-train": (
        slerpface_train,
        "packages/slerpface/tests/test_toyfaces.py (group loss falls, protected AUC)",
    ),
    "slerpface-unlink": (
        slerpface_unlink,
        "packages/slerpface/tests/test_unlinkability.py (D_sys claims, synthetic templates)",
    ),
    "duetface": (duetface, "packages/duetface/tests/test_claims.py (accuracy, inversion)"),
    "minusface": (minusface, "packages/minusface/tests/test_claims.py (all three)"),
}


# --------------------------------------------------------------------------------------------
# driver


def run_seeds(claim: str, seeds: list[str], threads: int) -> None:
    """Child process: measure each seed in turn and print one RESULT line per seed."""
    import torch

    fn = CLAIMS[claim][0]
    torch.set_num_threads(threads)
    # a test module (conftest) may set the thread count when imported: measure() imports them,
    # so such calls are ignored while the work runs
    _set = torch.set_num_threads
    torch.set_num_threads = lambda n: None  # type: ignore[assignment]
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            values = fn(None if seed == "default" else int(seed), Path(tmp))
            assert torch.get_num_threads() == threads, torch.get_num_threads()
            row = {
                "claim": claim,
                "seed": seed,
                "threads": threads,
                "seconds": round(time.perf_counter() - t0, 1),
                "values": {k: float(v) for k, v in values.items()},
            }
        print("RESULT " + json.dumps(row), flush=True)
    torch.set_num_threads = _set


def saved(claim: str) -> list[dict]:
    path = OUT / f"{claim}.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summary(claim: str) -> str:
    rows = saved(claim)
    if not rows:
        return f"{claim}: no runs saved\n"
    keys = list(rows[0]["values"])
    threads = sorted({r["threads"] for r in rows})
    seeds = sorted({r["seed"] for r in rows}, key=lambda s: (s != "default", s))
    lines = [
        f"## {claim}: {CLAIMS[claim][1]}",
        f"{len(rows)} runs: seeds {', '.join(seeds)} x threads {threads}; "
        f"{statistics.mean(r['seconds'] for r in rows):.0f} s per run",
        "",
        "| quantity | min | mean | max | "
        + " | ".join(f"{t} thr min..max" for t in threads)
        + " | test's own (1 thr) |",
        "|---|---|---|---|" + "---|" * len(threads) + "---|",
    ]
    for k in keys:
        vals = [r["values"][k] for r in rows]
        per = []
        for t in threads:
            v = [r["values"][k] for r in rows if r["threads"] == t]
            per.append(f"{min(v):.3f}..{max(v):.3f}" if v else "")
        own = [r["values"][k] for r in rows if r["seed"] == "default" and r["threads"] == 1]
        lines.append(
            f"| {k} | {min(vals):.3f} | {statistics.mean(vals):.3f} | {max(vals):.3f} | "
            + " | ".join(per)
            + f" | {own[0]:.3f} |"
            if own
            else f"| {k} | {min(vals):.3f} | {statistics.mean(vals):.3f} | {max(vals):.3f} | "
            + " | ".join(per)
            + " | |"
        )
    return "\n".join(lines) + "\n"


def _child(claim: str, threads: int, seeds: list[str], lock: threading.Lock) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--one", claim, "--threads", str(threads), "--seeds", *seeds]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    for line in proc.stdout:
        if not line.startswith("RESULT "):
            continue
        row = json.loads(line[len("RESULT ") :])
        vals = ", ".join(f"{k} {v:.3f}" for k, v in row["values"].items())
        with lock:
            with open(OUT / f"{claim}.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{claim} seed {row['seed']} threads {threads} ({row['seconds']} s): {vals}")
            sys.stdout.flush()
    err = proc.stderr.read()
    if proc.wait() != 0:
        with lock:
            print(f"{claim} threads {threads} seeds {seeds}: FAILED\n{err[-3000:]}", flush=True)


def calibrate(claim: str, seeds: list[str], threads: list[int], jobs: int = 1) -> None:
    """Child processes that each set their thread count before any work; with ``jobs`` 1 one
    per thread count running every pending seed in turn, else one per (seed, threads), ``jobs``
    at a time. Each result is saved as soon as it comes; saved (seed, threads) are skipped."""
    OUT.mkdir(parents=True, exist_ok=True)
    done = {(r["seed"], r["threads"]) for r in saved(claim)}
    lock = threading.Lock()
    if jobs <= 1:
        for t in threads:
            todo = [s for s in seeds if (s, t) not in done]
            if todo:
                _child(claim, t, todo, lock)
        return
    todo = [(s, t) for s in seeds for t in threads if (s, t) not in done]
    with ThreadPoolExecutor(jobs) as pool:
        for f in [pool.submit(_child, claim, t, [s], lock) for s, t in todo]:
            f.result()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("claims", nargs="*", help=f"any of: {', '.join(CLAIMS)} (default: all)")
    ap.add_argument("--seeds", nargs="+", default=["default", "1", "2", "3", "4"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--jobs", type=int, default=1, help="measurements running at once")
    ap.add_argument("--summary", action="store_true", help="only print the saved distributions")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--seed", help=argparse.SUPPRESS)  # --one with a single seed
    args = ap.parse_args(argv)
    if args.one:
        run_seeds(args.one, [args.seed] if args.seed else args.seeds, args.threads[0])
        return 0
    if args.list:
        for k, (_, what) in CLAIMS.items():
            print(f"{k:20s} {what}")
        return 0
    claims = args.claims or list(CLAIMS)
    unknown = [c for c in claims if c not in CLAIMS]
    if unknown:
        ap.error(f"unknown claims {unknown}; valid: {list(CLAIMS)}")
    if not args.summary:
        for c in claims:
            calibrate(c, args.seeds, args.threads, args.jobs)
    for c in claims:
        print(summary(c))
    return 0


if __name__ == "__main__":
    sys.exit(main())
