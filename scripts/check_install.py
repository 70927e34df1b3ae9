"""Install-alone check: build each package's wheel, install it into a fresh virtual environment
with only its declared dependencies (facelab siblings come from the freshly built wheels, never
from the source tree), import it and run ``facelab --help``.

Usage: python scripts/check_install.py core duetface ...   (short names as in the Makefile)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def folder(short: str) -> Path:
    if short == "core":
        return ROOT / "shared"
    if short == "benchmarks":
        return ROOT / "benchmarks"
    return ROOT / "packages" / short


def uv() -> list[str]:
    exe = shutil.which("uv")
    return [exe] if exe else [sys.executable, "-m", "uv"]


def facelab_deps(short: str, seen: set[str] | None = None) -> list[str]:
    """The package's facelab siblings, transitively (from the pyproject dependencies)."""
    import re
    import tomllib

    seen = set() if seen is None else seen
    deps = tomllib.loads((folder(short) / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        m = re.match(r"facelab-([a-z0-9_]+)", dep)
        if m and m.group(1) not in seen:
            seen.add(m.group(1))
            facelab_deps(m.group(1), seen)
    return sorted(seen)


def wheel_of(wheels: Path, short: str) -> Path:
    found = sorted(wheels.glob(f"facelab_{short}-*.whl"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one wheel for facelab-{short} in {wheels}, got {found}")
    return found[0]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def main(shorts: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="facelab-install-") as tmp:
        wheels = Path(tmp) / "wheels"
        for short in shorts:
            run(
                [*uv(), "build", "--wheel", "--out-dir", str(wheels), str(folder(short))],
                stdout=subprocess.DEVNULL,
            )
        failed = []
        for short in shorts:
            name = f"facelab-{short}"
            module = f"facelab.{short}"
            venv = Path(tmp) / f"venv-{short}"
            try:
                run([*uv(), "venv", "--quiet", "--python", sys.executable, str(venv)])
                py = venv / "bin" / "python"
                # the package and its facelab siblings from the fresh wheels (by path, so an
                # unrelated index package of the same name can never win), the rest from the index
                local = [wheel_of(wheels, s) for s in [short, *facelab_deps(short)]]
                run([*uv(), "pip", "install", "--quiet", "--python", str(py), *map(str, local)])
                env = {
                    k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")
                }
                run(
                    [
                        str(py),
                        "-c",
                        f"import {module}; print('{name}', {module}.__name__, 'imports')",
                    ],
                    env=env,
                    cwd=tmp,
                )
                out = run(
                    [str(venv / "bin" / "facelab"), "--help"],
                    env=env,
                    cwd=tmp,
                    capture_output=True,
                    text=True,
                )
                print(out.stdout)
            except subprocess.CalledProcessError as exc:
                print(f"FAILED install-alone check of {name}: {exc}", file=sys.stderr)
                failed.append(name)
            finally:
                shutil.rmtree(venv, ignore_errors=True)
        if failed:
            print("install-alone check failed for: " + ", ".join(failed), file=sys.stderr)
            return 1
    print("install-alone check passed for: " + ", ".join(f"facelab-{s}" for s in shorts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
