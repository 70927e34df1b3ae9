"""``scripts/gpu_check.sh``: every step's command line still parses, in both modes.

The script lists its steps without running them (``GPU_CHECK_LIST=nul``); each ``facelab ...``
command then goes through the real ``facelab`` dispatcher and its tyro / argparse parser in this
process, stopped right after a successful parse (no data, no training, no GPU). The smoke mode
(``GPU_CHECK_SMOKE=1``, CPU, tiny sizes) runs the commands for real; it is minutes of CPU, so it
is not a test (see the README's "On a GPU").
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import subprocess
from pathlib import Path

import pytest
import tyro

from facelab.core import cli

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


class Parsed(BaseException):
    """Raised in place of running a command once its arguments have parsed."""


def listed_steps(smoke: bool, out: Path) -> list[tuple[str, list[str]]]:
    """(name, argv) of every step, as the script would run them in this mode."""
    env = dict(os.environ, GPU_CHECK_LIST="nul", GPU_CHECK_SMOKE="1" if smoke else "0")
    got = subprocess.run(
        ["bash", str(SCRIPT), str(out)], env=env, capture_output=True, check=True
    ).stdout.decode()
    fields = got.split("\0")
    steps, i = [], 0
    while i < len(fields) - 1:
        assert fields[i] == "STEP", fields[i : i + 3]
        name, n = fields[i + 1], int(fields[i + 2])
        steps.append((name, fields[i + 3 : i + 3 + n]))
        i += 3 + n
    return steps


@pytest.fixture
def stop_after_parse(monkeypatch):
    """tyro.cli / subcommand dispatch / facelab's ArgumentParser raise ``Parsed`` instead of
    returning (or calling the command) once the arguments have parsed."""
    real_cli = tyro.cli
    real_sub = tyro.extras.subcommand_cli_from_dict

    def stub(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            raise Parsed((fn.__name__, args, kwargs))

        return run

    def fake_cli(f, *args, **kwargs):
        if inspect.isfunction(f):  # tyro would call it: parse only
            f = stub(f)
        raise Parsed(real_cli(f, *args, **kwargs))

    def fake_sub(commands, *args, **kwargs):
        return real_sub({k: stub(v) for k, v in commands.items()}, *args, **kwargs)

    real_parse = argparse.ArgumentParser.parse_args

    def fake_parse(self, *args, **kwargs):
        raise Parsed(real_parse(self, *args, **kwargs))

    monkeypatch.setattr(tyro, "cli", fake_cli)
    monkeypatch.setattr(tyro.extras, "subcommand_cli_from_dict", fake_sub)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", fake_parse)


def check_parses(name: str, argv: list[str], capsys) -> None:
    if argv[:2] == ["python3", "-c"]:
        compile(argv[2], name, "exec")
        return
    if argv[0] == "facelab":
        run = functools.partial(cli.main, argv[1:])
    elif argv[:2] == ["python3", "-m"]:
        import importlib

        run = functools.partial(importlib.import_module(argv[2]).main, argv[3:])
    else:
        raise AssertionError(f"step {name}: no parse check for {argv[:3]}")
    try:
        rc = run()
    except Parsed:
        return
    raise AssertionError(
        f"step {name}: {' '.join(argv)} did not parse (exit {rc}): {capsys.readouterr().err}"
    )


@pytest.mark.parametrize("smoke", [False, True], ids=["gpu", "smoke"])
def test_every_step_command_parses(smoke, tmp_path, stop_after_parse, capsys):
    steps = listed_steps(smoke, tmp_path)
    names = [n for n, _ in steps]
    # one step per package's CUDA path, and the benchmark rows
    for expected in [
        "core-toy-bf16", "trainer-throughput", "duetface-toy-bf16", "partialface-toy-bf16",
        "minusface-toy-bf16", "slerpface-toy", "synth-train", "synth-sample", "uiface-train",
        "uiface-sample", "steerface-train", "steerface-sample", "morphface-train",
        "morphface-sample", "frcsyn-eval", "glotok-train", "glotok-train-ar", "glotok-sample",
        "immeriris-train", "immeriris-eval", "ariba-simulate", "vflafe-train", "bench-rows",
    ]:  # fmt: skip
        assert expected in names
    for name, argv in steps:
        check_parses(name, argv, capsys)
        if argv[0] == "facelab" and "--device" in argv:  # the device each mode asks for
            assert argv[argv.index("--device") + 1] == ("cpu" if smoke else "cuda"), name


def test_a_broken_flag_is_caught(stop_after_parse, capsys):
    """The check fails on a flag a command no longer has (so it can fail)."""
    with pytest.raises(AssertionError, match="did not parse"):
        check_parses("x", ["facelab", "synth", "sample", "--no-such-flag", "1"], capsys)
    with pytest.raises(AssertionError, match="did not parse"):
        check_parses("x", ["facelab", "ariba", "simulate", "--cfg.no-such", "1"], capsys)
