"""Speed and memory of one aggregation: ARIBA against Flower's Krum on the same replies.

Both strategies get the same Flower ``Message`` replies (full models, as ClientApps send them)
and run ``aggregate_train``: each pays for reading the ``ArrayRecord``s, ARIBA for the
fragment statistics and FedAvg over the kept clients, Krum for its pairwise distances. The
detector alone (``detect`` on tensors already in memory) is timed too. Peak memory is the
growth of the peak RSS of a fresh process over what the replies themselves take.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import torch


def model_shapes(num_params: int) -> dict[str, tuple[int, ...]]:
    """A CNN-like layout (conv filters, then linear rows) of about ``num_params`` values."""
    if num_params >= 1_000_000:
        return {
            "conv1.weight": (64, 3, 3, 3),
            "conv1.bias": (64,),
            "conv2.weight": (128, 64, 3, 3),
            "conv2.bias": (128,),
            "conv3.weight": (256, 128, 3, 3),
            "conv3.bias": (256,),
            "fc1.weight": (512, 1218),
            "fc1.bias": (512,),
            "fc2.weight": (10, 512),
            "fc2.bias": (10,),
        }  # 1,000,074 values
    return {
        "conv1.weight": (16, 3, 3, 3),
        "conv2.weight": (32, 16, 3, 3),
        "conv3.weight": (64, 32, 3, 3),
        "fc1.weight": (128, 600),
        "fc2.weight": (10, 128),
    }  # 105,744 values


def make_updates(num_clients: int, num_params: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    shapes = model_shapes(num_params)
    common = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    return [
        {k: 0.01 * (common[k] + torch.randn(s, generator=g)) for k, s in shapes.items()}
        for _ in range(num_clients)
    ]


def make_replies(updates: list[dict[str, torch.Tensor]]):
    from flwr.app import ArrayRecord

    from facelab.ariba.strategy import reply

    zero = {k: torch.zeros_like(v) for k, v in updates[0].items()}
    return ArrayRecord(zero), [reply(u, 100, node_id=10 + i) for i, u in enumerate(updates)]


def make_replies_lean(num_clients: int, num_params: int, seed: int = 0):
    """``make_replies(make_updates(...))`` without holding all the tensors at once: the
    process's peak memory is then the replies plus one update."""
    from flwr.app import ArrayRecord

    from facelab.ariba.strategy import reply

    g = torch.Generator().manual_seed(seed)
    shapes = model_shapes(num_params)
    common = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    replies = []
    for i in range(num_clients):
        u = {k: 0.01 * (common[k] + torch.randn(s, generator=g)) for k, s in shapes.items()}
        replies.append(reply(u, 100, node_id=10 + i))
    zero = {k: torch.zeros(s) for k, s in shapes.items()}
    return ArrayRecord(zero), replies


def time_aggregation(num_clients: int, num_params: int, repeat: int = 3) -> dict[str, Any]:
    """Median seconds of ``ARIBA.aggregate_train``, ``Krum.aggregate_train`` and ``detect``
    on the same round."""
    import statistics

    from flwr.serverapp.strategy import Krum

    from facelab.ariba.detect import detect
    from facelab.ariba.simulate import quiet_flower
    from facelab.ariba.strategy import ARIBA

    quiet_flower()
    updates = make_updates(num_clients, num_params)
    global_arrays, replies = make_replies(updates)
    f = max(1, num_clients // 10)

    def run(fn) -> float:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    ariba = ARIBA(global_arrays=global_arrays, truth_key=None, memory=0.0)
    krum = Krum(num_malicious_nodes=f)
    return {
        "clients": num_clients,
        "params": sum(v.numel() for v in updates[0].values()),
        "ariba_s": run(lambda: ariba.aggregate_train(1, replies)),
        "krum_s": run(lambda: krum.aggregate_train(1, replies)),
        "detect_s": run(lambda: detect(updates, num_clients // 2 - 1)),
    }


def _peak_growth(which: str, num_clients: int, num_params: int, threads: int) -> float:
    code = f"""
import json, resource, sys, torch
torch.set_num_threads({threads})
from facelab.ariba.bench import make_replies_lean
from facelab.ariba.simulate import quiet_flower
quiet_flower()
g, replies = make_replies_lean({num_clients}, {num_params})
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def current():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return peak()
base = max(current(), 0.0)
if {which!r} == "ariba":
    from facelab.ariba.strategy import ARIBA
    ARIBA(global_arrays=g, truth_key=None, memory=0.0).aggregate_train(1, replies)
else:
    from flwr.serverapp.strategy import Krum
    Krum(num_malicious_nodes=max(1, {num_clients} // 10)).aggregate_train(1, replies)
print(json.dumps(peak() - base))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def speed_rows(small: bool) -> list[dict[str, Any]]:
    """Rows in the columns of ``facelab.benchmarks.speed.COLUMNS``. Peak memory: the growth
    of a fresh process's peak RSS during one ``aggregate_train`` over its RSS just before
    (the replies built one client at a time, so building them does not set the peak)."""
    clients, params = (20, 100_000) if small else (100, 1_000_000)
    t = time_aggregation(clients, params, repeat=1 if small else 3)
    label = f"one aggregation, {clients} clients x {t['params'] / 1e6:.2f}M params"
    rows = [
        {
            "benchmark": label,
            "ours": "ARIBA.aggregate_train",
            "reference": "flwr Krum.aggregate_train",
            "ours/s": 1.0 / t["ariba_s"],
            "reference/s": 1.0 / t["krum_s"],
            "speedup": t["krum_s"] / t["ariba_s"],
            "note": f"rounds/s; ARIBA {t['ariba_s']:.2f} s, Krum {t['krum_s']:.2f} s per round",
        },
        {
            "benchmark": label,
            "ours": "detect (tensors in memory)",
            "reference": "flwr Krum.aggregate_train",
            "ours/s": 1.0 / t["detect_s"],
            "reference/s": 1.0 / t["krum_s"],
            "speedup": t["krum_s"] / t["detect_s"],
            "note": f"rounds/s; detect {t['detect_s']:.2f} s",
        },
    ]
    if not small:
        threads = torch.get_num_threads()
        mem_a = _peak_growth("ariba", clients, params, threads)
        mem_k = _peak_growth("krum", clients, params, threads)
        rows.append(
            {
                "benchmark": label + ", peak memory",
                "ours": "ARIBA.aggregate_train",
                "reference": "flwr Krum.aggregate_train",
                "ours/s": float("nan"),
                "reference/s": float("nan"),
                "speedup": mem_k / mem_a if mem_a > 0 else float("nan"),
                "note": f"peak RSS growth ARIBA {mem_a:.0f} MiB, Krum {mem_k:.0f} MiB (fresh processes; speedup = Krum/ARIBA memory)",
            }
        )
    return rows
