"""Every installed ``facelab`` command ends bad input the same way: exactly one line
``facelab <command>...: error: <message>`` on stderr and exit status 2.

Each command in ``BAD_INPUT`` gets inputs that are wrong in the ways users get them wrong (a
missing path, an empty folder, a corrupt file, an unknown name, a value out of range). A newly
installed command without a row here fails ``test_every_command_has_a_bad_input_case``, so a
new package cannot ship a command whose errors were never looked at.
"""

from __future__ import annotations

import pytest

from facelab.core import cli

NOPE = "/definitely/not/here"

#: command -> argument lists (``{tmp}`` is replaced by an empty folder, ``{corrupt}`` by a file
#: of garbage bytes named ``corrupt.bin``); every case must end with exit status 2
BAD_INPUT: dict[str, list[list[str]]] = {
    "train": [["--preset", "toy", "--data.source", NOPE], ["--preset", "nope"]],
    "embed": [["--model", NOPE, "--images", NOPE, "--out", "{tmp}/e.safetensors"]],
    "eval": [["--model", NOPE, "--bin", "{corrupt}"], ["--model", "x"]],
    "data": [["info", "{tmp}"], ["info", "{corrupt}"], ["pack", "{tmp}", "{tmp}/out"]],
    "bench": [
        ["speed", "--threads", "0"],
        ["ppfr", "--eval-bins", "{corrupt}"],
        ["quick", "--families", "nope"],
        ["synth", "--generators", "nope"],
        ["fl", "--families", "synth"],
        ["tokenizer", "--toy-weights", "{tmp}"],
    ],
    "duetface": [
        ["train", "--preset", "nope"],
        ["embed", "--model", NOPE, "--images", NOPE, "--out", "{tmp}/x"],
    ],
    "partialface": [["embed", "--run", NOPE, "--images", NOPE, "--out", "{tmp}/x"]],
    "minusface": [["train", "--preset", "nope"], ["protect", "--model", NOPE, "--out", "{tmp}/o"]],
    "glotok": [
        ["train", "--preset", "nope"],
        ["train", "--preset", "toy", "--data.source", NOPE],
        ["eval", "--tokenizer", NOPE],
        ["tokenize", "--tokenizer", "{tmp}", "--out", "{tmp}/t.safetensors"],
        ["sample", "--generator", "{corrupt}", "--tokenizer", NOPE, "--out", "{tmp}/s"],
    ],
    "slerpface": [["enroll", "--templates", NOPE, "--keystore", "{tmp}/k", "--out", "{tmp}/o"]],
    "ariba": [
        ["detect", "--updates", NOPE, NOPE],
        ["detect", "--updates", "{corrupt}", "{corrupt}"],
        ["simulate", "--cfg.num-clients", "2"],
        ["compare", "--cfg.attacks", "nope", "--cfg.out", "{tmp}/o"],
    ],
    "vflafe": [
        ["train", "--clip-norm", "0"],
        ["train", "--mode", "plain", "--target-epsilon", "1e-9"],
        ["compare", "--epsilons", "0", "--out", "{tmp}/o"],
    ],
    "frcsyn": [
        ["nope"],
        ["check", "--subtask", "9.9", "--synthetic", NOPE],
        ["check", "--subtask", "1.1", "--synthetic", "{tmp}"],
        ["check", "--subtask", "1.1", "--synthetic", "{corrupt}"],
        ["run", "--preset", "nope"],
        ["run", "--preset", "toy", "--subtask", "2.1", "--train", NOPE],
        ["eval", "--model", NOPE],
        ["leakage", "--model", NOPE, "--synthetic", NOPE],
        ["table", "--preset", "toy", "--datasets", "x"],
        ["toydata", "{tmp}/o", "--identities", "0"],
    ],
    "immeriris": [
        ["generate", "--out", "{tmp}/g", "--size", "16"],
        ["train", "--preset", "nope"],
        ["train", "--preset", "toy", "--data.num-subjects", "1"],
        ["eval", "--normfree", NOPE, "--out", "{tmp}/e"],
        ["eval", "--normkeep", "{corrupt}", "--out", "{tmp}/e"],
        ["eval", "--no-classical", "--out", "{tmp}/e"],
        ["eval", "--subjects", "1", "--out", "{tmp}/e"],
    ],
    "uiface": [
        ["train", "--preset", "nope"],
        ["sample", "--generator", NOPE, "--out", "{tmp}/o"],
        [
            "sample",
            "--checkpoint",
            "{corrupt}",
            "--encoder",
            "{corrupt}",
            "--decoder",
            "{corrupt}",
            "--out",
            "{tmp}/o",
        ],
        ["sample", "--generator", "{tmp}", "--out", "{tmp}/o"],
        ["eval", "--dataset", NOPE, "--out", "{tmp}/r"],
        ["eval", "--out", "{tmp}/r"],
    ],
    "synth": [
        ["train", "--preset", "nope"],
        ["sample", "--generator", NOPE, "--out", "{tmp}/o"],
        ["sample", "--generator", "{tmp}", "--out", "{tmp}/o", "--steps", "0"],
        ["eval", "--dataset", NOPE, "--recognizer", NOPE],
    ],
    "morphface": [
        ["convert", "--bfm", "{corrupt}", "--out", "{tmp}/m.safetensors"],
        ["convert", "--flame", "{corrupt}", "--out", "{tmp}/m.safetensors"],
        ["convert", "--out", "{tmp}/m.safetensors"],
        ["fit-prior", "--out", "{tmp}/p.safetensors", "--params", NOPE],
        ["fit-prior", "--out", "{tmp}/p.safetensors", "--params", "{corrupt}"],
        ["fit-prior", "--out", "{tmp}/p.safetensors", "--toy-identities", "1"],
        ["train", "--preset", "nope"],
        ["sample", "--generator", NOPE, "--out", "{tmp}/o"],
        ["eval", "--dataset", "{tmp}"],
    ],
    "steerface": [
        ["train", "--preset", "nope"],
        ["train", "--preset", "toy", "--steer.theta-mean", "200"],
        ["train", "--preset", "toy", "--steer.mode", "nope"],
        ["train", "--preset", "toy", "--synth.data.source", NOPE],
        ["sample", "--generator", NOPE, "--out", "{tmp}/o"],
        ["eval", "--dataset", NOPE, "--recognizer", NOPE],
    ],
}

#: commands that read no user input
NO_INPUT = {"version", "selfcheck"}


def _cases() -> list[tuple[str, list[str]]]:
    installed = cli.discover_commands()
    return [(c, argv) for c, argvs in BAD_INPUT.items() if c in installed for argv in argvs]


def test_every_command_has_a_bad_input_case():
    missing = sorted(set(cli.discover_commands()) - set(BAD_INPUT) - NO_INPUT)
    assert not missing, f"add bad-input cases for these commands to BAD_INPUT: {missing}"


@pytest.mark.parametrize(("command", "argv"), _cases(), ids=lambda v: str(v))
def test_bad_input_ends_with_one_error_line_and_status_2(command, argv, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt.bin"
    corrupt.write_bytes(b"garbage\x80\x03 not a pickle")
    args = [a.replace("{tmp}", str(empty)).replace("{corrupt}", str(corrupt)) for a in argv]
    rc = cli.main([command, *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"facelab {command}") and ": error: " in lines[0], lines[0]
    assert "Traceback" not in err
    # a command that failed on bad input left no file behind
    assert not [p for p in empty.rglob("*") if p.is_file()], list(empty.rglob("*"))
