"""Run a script under ``accelerate launch`` with several CPU processes (gloo ranks).

What every package's multi-process test needs: ``--cpu`` makes accelerate 1.x start a single
process, so this uses ``--multi_gpu`` with ``ACCELERATE_USE_CPU=true`` (torchrun with gloo
ranks), one thread per rank and a free local port.

A port that was free when it was chosen can be taken before torchrun binds it (another test
suite on the same machine, an outgoing connection given that ephemeral port), and a rendezvous
can fail for such reasons of the moment. So the port is chosen at launch time, outside the
kernel's ephemeral range where possible, and a launch whose output shows a port or rendezvous
failure is retried on a fresh port (``retries`` times). Any other failure is returned at once:
a real bug fails every attempt alike and must not be retried away.
"""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
from pathlib import Path

#: ports below the usual Linux ephemeral range (32768-60999), so that no outgoing connection is
#: handed the port between choosing it and torchrun binding it
_PORT_RANGE = (20000, 32000)

#: output of a launch that failed for a reason of the moment (port taken, rendezvous broken)
TRANSIENT_FAILURE = re.compile(
    r"address already in use|EADDRINUSE|errno 98|DistNetworkError|RendezvousError|"
    r"RendezvousTimeoutError|RendezvousConnectionError|Connection refused|"
    r"Connection reset by peer|Broken pipe|TCPStore|failed to bind|Socket Timeout",
    re.IGNORECASE,
)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(rng: random.Random | None = None) -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (a random one below the ephemeral
    range when one is free there, else one the kernel hands out)."""
    rng = rng or random.SystemRandom()
    for _ in range(64):
        port = rng.randrange(*_PORT_RANGE)
        if _bindable(port):
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_cpu(
    script: str | Path,
    *args: str,
    num_processes: int = 2,
    timeout: float = 400,
    hf_home: str | Path | None = None,
    retries: int = 3,
) -> subprocess.CompletedProcess[str]:
    """``accelerate launch`` ``script args`` on ``num_processes`` CPU ranks; returns the finished
    process (stdout and stderr captured as text; the caller checks ``returncode``).

    Each attempt takes a port chosen just before it starts; an attempt that fails with a port or
    rendezvous error (:data:`TRANSIENT_FAILURE`) is repeated on another port, up to ``retries``
    more times. ``timeout`` bounds each attempt."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    if hf_home is not None:
        env["HF_HOME"] = str(hf_home)
    proc: subprocess.CompletedProcess[str] | None = None
    for _ in range(retries + 1):
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(num_processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            str(script),
            *map(str, args),
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 0 or not TRANSIENT_FAILURE.search(proc.stdout + proc.stderr):
            return proc
    assert proc is not None
    return proc


def end_distributed() -> None:
    """End a multi-process script cleanly: wait for every rank, then destroy the default
    process group (no-op without one).

    A gloo rank that exits with its process group alive can abort at interpreter exit
    ("terminate called without an active exception", SIGABRT) while its background threads are
    torn down, more often on a loaded machine. Call this last in every script that
    ``accelerate launch`` starts with several processes, once all ranks are done with
    collectives (the ``Trainer`` cannot do it after ``fit``: a script may fit several stages
    in the same process group).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
