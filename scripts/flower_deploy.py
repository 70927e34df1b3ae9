"""Run a Flower app as a real deployment on this machine and collect its result.

One ``flower-superlink``, one ``flower-supernode`` per node config (each with its
``--node-config``), ``flwr run`` of an app project, a wait for the run to end, then every
process is shut down (also on failure or timeout). Everything is local and offline:
``--insecure`` on 127.0.0.1, free ports picked at run time, a fresh ``FLWR_HOME`` in a
temporary folder, Flower's telemetry, update check and runtime dependency installation off
(the apps run from the environment this script runs in). No Ray.

The app's ServerApp must accept a run-config key ``result-file`` (a path) and write its result
there as JSON; that file is how the outcome comes back (the facelab apps of ``vflafe`` and
``ariba`` do). Standard library plus facelab-core (which every package installs), so a
package's tests can load it by path.

Usage (from the repository root, in the workspace environment)::

    uv run python scripts/flower_deploy.py vflafe --parties 2 --epochs 2 --batch-size 64
    uv run python scripts/flower_deploy.py ariba --num-clients 3 --rounds 2
    uv run python scripts/flower_deploy.py app APP_DIR --node party-id=0 --node party-id=1

``vflafe`` / ``ariba`` write the package's Flower app project, deploy it, run the same config
in process and print both results and the round times side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from facelab.core.flower_app import toml_value

__all__ = ["DeployError", "Deployment", "alive", "deploy", "free_port", "toml_value"]


class DeployError(RuntimeError):
    """The deployment did not produce a result (the message carries the logs' tails)."""


@dataclass
class Deployment:
    """What a deployed run gave back."""

    run_id: int
    result: dict
    """The JSON the ServerApp wrote to ``result-file``."""
    startup_s: float
    """SuperLink up (health check) and every SuperNode process started."""
    run_s: float
    """``flwr run`` start to the result: FAB build + upload, ServerApp start, the run."""
    wall_s: float
    """Everything, shutdown included."""
    cpu_s: float
    """User + system CPU seconds, up to the result, of every process of the deployment
    (SuperLink, SuperNodes, their SuperExecs, the ServerApp, every ClientApp process,
    ``flwr run``); the shutdown is not counted."""
    cpu_by_process: dict[str, float] = field(default_factory=dict)
    """``cpu_s`` by program (``flwr-clientapp``: every ClientApp process that has ended)."""
    logs: dict[str, str] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)
    """Every process of the deployment seen at the shutdown (all gone when this returns)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str, bin_dir: Path) -> str:
    exe = bin_dir / name
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if found is None:
        raise DeployError(
            f"{name}: not found next to {sys.executable} nor on PATH (is flwr installed?)"
        )
    return found


def _children_map() -> dict[int, list[int]]:
    """ppid -> pids of the processes alive now (Linux /proc)."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        out.setdefault(int(fields[1]), []).append(int(entry))
    return out


def _tree(pids: Sequence[int]) -> list[int]:
    """``pids`` and all their descendants alive now."""
    children = _children_map()
    seen: list[int] = []
    stack = list(pids)
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.append(p)
        stack.extend(children.get(p, []))
    return seen


def _tree_cpu(pids: Sequence[int]) -> dict[str, float]:
    """User + system CPU seconds of ``pids`` and their descendants by program name: over the
    processes that exist now (zombies included), their own time plus that of their children
    that ended and were reaped (``cutime``, ``cstime``), which counts every process once."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in _tree(pids):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        if len(argv) > 1 and argv[1]:  # python entry points: the script's name
            name = Path(argv[1].decode(errors="replace")).name
        fields = stat[stat.rfind(")") + 2 :].split()
        own = (int(fields[11]) + int(fields[12])) / tick
        reaped = (int(fields[13]) + int(fields[14])) / tick
        out[name] = out.get(name, 0.0) + own
        if reaped:
            out[name + " (reaped children)"] = out.get(name + " (reaped children)", 0.0) + reaped
    return out


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (exists and is not a zombie; Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def _stop(procs: Sequence[subprocess.Popen], grace: float = 10.0) -> list[int]:
    """SIGTERM ``procs`` and every descendant (Flower's SuperExec, ServerApp and ClientApp
    processes start in sessions of their own), SIGKILL what is left after ``grace`` seconds,
    reap ours. Returns the pids still alive at the end (should be none)."""
    pids = _tree([p.pid for p in procs if p.poll() is None])
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + grace
    while time.monotonic() < end and any(alive(p) for p in pids):
        for p in procs:
            p.poll()
        time.sleep(0.1)
    for pid in _tree(pids):
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    time.sleep(0.2)
    return [pid for pid in pids if alive(pid)]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise DeployError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        if time.monotonic() > end:
            raise DeployError(f"{what}: not up within {timeout:.0f} s:\n{_tail(log)}")
        time.sleep(0.25)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path.name}: no log)"
    return f"--- {path.name} ---\n" + "\n".join(text.splitlines()[-lines:])


def deploy(
    app_dir: str | Path,
    node_configs: Sequence[Mapping[str, object]],
    run_config: Mapping[str, object] | None = None,
    *,
    timeout: float = 600.0,
    workdir: str | Path | None = None,
    keep_logs: bool = True,
) -> Deployment:
    """Deploy the Flower app project ``app_dir`` on this machine: a SuperLink, one SuperNode
    per entry of ``node_configs`` (its ``--node-config``), ``flwr run`` with ``run_config``
    overrides plus ``result-file``; wait up to ``timeout`` seconds for the result; stop every
    process. Raises ``DeployError`` (with the logs' tails) when no result comes."""
    t_start = time.perf_counter()
    app_dir = Path(app_dir).resolve()
    if not (app_dir / "pyproject.toml").is_file():
        raise DeployError(
            f"app_dir: expected a Flower app project with pyproject.toml, got {app_dir}"
        )
    if not node_configs:
        raise DeployError("node_configs: expected at least one SuperNode")
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="flower-deploy-")
        workdir = tmp.name
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    home = work / "flwr-home"
    home.mkdir(exist_ok=True)
    result_file = work / "result.json"
    result_file.unlink(missing_ok=True)

    bin_dir = Path(sys.executable).parent
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        PATH=str(bin_dir) + os.pathsep + env.get("PATH", ""),
        PYTHONUNBUFFERED="1",
    )
    env.setdefault("OMP_NUM_THREADS", "1")  # every ClientApp is a process of its own
    if env.get("PYTHONDONTWRITEBYTECODE") and "PYTHONPYCACHEPREFIX" not in env:
        # Flower starts a fresh Python process per ClientApp message. Where writing bytecode
        # next to the sources is switched off, each of them would compile torch, sklearn and
        # flwr from source again (~10 s of CPU each here); the deployment's processes share a
        # bytecode cache in the work folder instead (the environment is not modified).
        env.pop("PYTHONDONTWRITEBYTECODE")
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")  # removed at the end

    link_port = free_port()
    address = f"127.0.0.1:{link_port}"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\n'
        f'address = "{address}"\ninsecure = true\n'
    )
    overrides = {**dict(run_config or {}), "result-file": str(result_file)}
    rc_file = work / "run-config.toml"
    rc_file.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in overrides.items()))

    procs: list[subprocess.Popen] = []
    logs: dict[str, Path] = {}

    def start(name: str, cmd: list[str]) -> subprocess.Popen:
        logs[name] = work / f"{name}.log"
        with open(logs[name], "wb") as out:
            p = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True
            )
        procs.append(p)
        return p

    run_id = -1
    leftover: list[int] = []
    seen: list[int] = []
    try:
        link = start(
            "superlink",
            [
                _bin("flower-superlink", bin_dir),
                "--insecure",
                "--host", "127.0.0.1",
                "--port", str(link_port),
                "--isolation", "subprocess",
                "--disable-runtime-dependency-installation",
            ],
        )  # fmt: skip
        _wait_http(f"http://{address}/health", link, 120.0, "flower-superlink", logs["superlink"])
        for i, nc in enumerate(node_configs):
            start(
                f"supernode-{i}",
                [
                    _bin("flower-supernode", bin_dir),
                    "--insecure",
                    "--superlink", address,
                    "--port", str(free_port()),
                    "--node-config", " ".join(f"{k}={toml_value(v)}" for k, v in nc.items()),
                ],
            )  # fmt: skip
        startup_s = time.perf_counter() - t_start
        t_run = time.perf_counter()
        runner = start(
            "flwr-run",
            [
                _bin("flwr", bin_dir), "run", str(app_dir), "deploy",
                "--run-config", str(rc_file), "--stream",
            ],
        )  # fmt: skip
        end = time.monotonic() + timeout
        while not result_file.exists():
            for p in procs:
                if p is not runner and p.poll() is not None:
                    raise DeployError(
                        f"{p.args[0]} exited with {p.returncode} during the run:\n"
                        + "\n".join(_tail(f) for f in logs.values())
                    )
            if runner.poll() is not None and not result_file.exists():
                time.sleep(1.0)  # the file is written before the run ends; last look
                if not result_file.exists():
                    raise DeployError(
                        f"the run ended (flwr run exited with {runner.returncode}) without a "
                        "result:\n" + "\n".join(_tail(f) for f in logs.values())
                    )
            if time.monotonic() > end:
                raise DeployError(
                    f"no result within {timeout:.0f} s:\n"
                    + "\n".join(_tail(f) for f in logs.values())
                )
            time.sleep(0.5)
        run_s = time.perf_counter() - t_run
        result = json.loads(result_file.read_text())
        m = re.search(r"run (\d+)", logs["flwr-run"].read_text(errors="replace"))
        run_id = int(m.group(1)) if m else -1
        cpu_by = _tree_cpu([p.pid for p in procs if p.poll() is None])
    finally:
        seen = _tree([p.pid for p in procs])
        leftover = _stop(procs)
        texts = {k: v.read_text(errors="replace") for k, v in logs.items() if v.exists()}
        shutil.rmtree(work / "pycache", ignore_errors=True)
        if tmp is not None:
            tmp.cleanup()
    if leftover:
        raise DeployError(f"processes still alive after the shutdown: {leftover}")
    return Deployment(
        run_id=run_id,
        result=result,
        startup_s=startup_s,
        run_s=run_s,
        wall_s=time.perf_counter() - t_start,
        cpu_s=sum(cpu_by.values()),
        cpu_by_process=cpu_by,
        logs=texts if keep_logs else {},
        pids=seen,
    )


# ---------------------------------------------------------------------------- command line


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return float("nan") if n == 0 else (s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2]))


def _print_rows(rows: list[dict]) -> None:
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


def _print_cpu(dep: Deployment) -> None:
    parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(dep.cpu_by_process.items()))
    print(f"deployment CPU s by process: {parts}")


def _cmd_vflafe(a: argparse.Namespace) -> int:
    import torch

    from facelab.vflafe.flower import (
        AppConfig,
        FlowerOutcome,
        node_configs,
        run_local,
        write_app_project,
    )

    torch.set_num_threads(1)  # as every deployed process (OMP_NUM_THREADS=1)
    cfg = AppConfig(
        dataset=a.dataset, parties=a.parties, epochs=a.epochs, batch_size=a.batch_size,
        mode=a.mode, noise_multiplier=a.noise_multiplier, seed=a.seed,
        noise_seed=a.noise_seed,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="vflafe-app-") as tmp:
        app = write_app_project(Path(tmp) / "app", cfg)
        dep = deploy(app, node_configs(cfg), timeout=a.timeout)
    got = FlowerOutcome.from_dict(dep.result)
    rows = [
        {
            "run": f"deployed: SuperLink + {cfg.parties} SuperNodes, flwr run",
            "test accuracy": f"{got.accuracy:.4f}",
            "rounds": len(got.step_times),
            "median round s": f"{_median(got.step_times):.3f}",
            "start-up s": f"{dep.startup_s:.1f}",
            "run s": f"{dep.run_s:.1f}",
            "CPU s": f"{dep.cpu_s:.1f}",
        }
    ]
    if not a.no_local:
        t0 = time.perf_counter()
        local, _ = run_local(cfg)
        rows.append(
            {
                "run": "in process (LocalGrid)",
                "test accuracy": f"{local.accuracy:.4f}",
                "rounds": len(local.step_times),
                "median round s": f"{_median(local.step_times):.3f}",
                "start-up s": "-",
                "run s": f"{time.perf_counter() - t0:.1f}",
                "CPU s": f"{sum(local.step_cpu_times):.3f} (rounds only)",
            }
        )
    _print_rows(rows)
    _print_cpu(dep)
    return 0


def _cmd_ariba(a: argparse.Namespace) -> int:
    import torch

    from facelab.ariba.app import SimConfig, node_configs, write_app_project
    from facelab.ariba.attacks import AttackConfig, LocalConfig
    from facelab.ariba.simulate import simulate_summary

    torch.set_num_threads(1)  # as every deployed process (OMP_NUM_THREADS=1)
    cfg = SimConfig(
        strategy=a.strategy, num_clients=a.num_clients, rounds=a.rounds, seed=a.seed,
        attack=AttackConfig(kind=a.attack, num_attackers=a.num_attackers),
        local=LocalConfig(local_epochs=a.local_epochs),
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="ariba-app-") as tmp:
        app = write_app_project(Path(tmp) / "app", cfg)
        dep = deploy(app, node_configs(cfg), timeout=a.timeout)
    runs = [(f"deployed: SuperLink + {cfg.num_clients} SuperNodes, flwr run", dep.result)]
    if not a.no_local:
        runs.append(("in process (InProcessGrid)", simulate_summary(cfg)))
    rows = []
    for name, res in runs:
        last = res["rounds"][-1]
        conf = [r["confusion"] for r in res["rounds"] if r["confusion"] is not None]
        rows.append(
            {
                "run": name,
                "accuracy": f"{last['accuracy']:.4f}",
                "ASR": f"{last['asr']:.4f}",
                "rounds": len(res["rounds"]),
                "pruned / round": " ".join(str(r["pruned"]) for r in res["rounds"]),
                "(tp, fp, fn)": str(tuple(sum(c[i] for c in conf) for i in range(3)))
                if conf
                else "-",
                "median round s": f"{_median([r['seconds'] for r in res['rounds']]):.3f}",
            }
        )
    _print_rows(rows)
    print(
        f"deployment: start-up {dep.startup_s:.1f} s, run {dep.run_s:.1f} s, "
        f"CPU {dep.cpu_s:.1f} s (all processes, up to the result)"
    )
    _print_cpu(dep)
    return 0


def _cmd_app(a: argparse.Namespace) -> int:
    def parse(items: Sequence[str]) -> dict:
        import tomllib

        return tomllib.loads("\n".join(items))

    dep = deploy(
        a.app_dir,
        [parse(n.split()) for n in a.node],
        parse(a.run_config or []),
        timeout=a.timeout,
    )
    print(json.dumps({"run_id": dep.run_id, "startup_s": dep.startup_s, "run_s": dep.run_s,
                      "cpu_s": dep.cpu_s, "result": dep.result}, indent=1))  # fmt: skip
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vflafe", help="VFL-AFE: deployed against in process")
    v.add_argument("--dataset", default="breast_cancer")
    v.add_argument("--parties", type=int, default=2)
    v.add_argument("--epochs", type=int, default=1)
    v.add_argument("--batch-size", type=int, default=64)
    v.add_argument("--mode", default="afe")
    v.add_argument("--noise-multiplier", type=float, default=0.0)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--noise-seed", type=int, default=0, help="-1: secret (runs then differ)")
    v.set_defaults(fn=_cmd_vflafe)
    r = sub.add_parser("ariba", help="ARIBA: deployed against in process")
    r.add_argument("--strategy", default="ariba")
    r.add_argument("--num-clients", type=int, default=3)
    r.add_argument("--rounds", type=int, default=2)
    r.add_argument("--attack", default="badnets")
    r.add_argument("--num-attackers", type=int, default=1)
    r.add_argument("--local-epochs", type=int, default=1)
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(fn=_cmd_ariba)
    g = sub.add_parser("app", help="any Flower app project whose ServerApp writes result-file")
    g.add_argument("app_dir")
    g.add_argument("--node", action="append", required=True, help="one SuperNode's config")
    g.add_argument("--run-config", action="append", help="k=v (TOML values)")
    g.set_defaults(fn=_cmd_app)
    for p in (v, r, g):
        p.add_argument("--timeout", type=float, default=900.0)
        if p is not g:
            p.add_argument("--no-local", action="store_true", help="skip the in-process run")
    a = ap.parse_args(argv)
    try:
        return a.fn(a)
    except DeployError as exc:
        print(f"flower_deploy: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
