"""Run a script under ``accelerate launch`` with several CPU processes (gloo ranks).

What every package's multi-process test needs: ``--cpu`` makes accelerate 1.x start a single
process, so this uses ``--multi_gpu`` with ``ACCELERATE_USE_CPU=true`` (torchrun with gloo
ranks), one thread per rank and a free local port.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_cpu(
    script: str | Path,
    *args: str,
    num_processes: int = 2,
    timeout: float = 400,
    hf_home: str | Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``accelerate launch`` ``script args`` on ``num_processes`` CPU ranks; returns the finished
    process (stdout and stderr captured as text; the caller checks ``returncode``)."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    if hf_home is not None:
        env["HF_HOME"] = str(hf_home)
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
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
