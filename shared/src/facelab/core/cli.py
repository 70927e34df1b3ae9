"""The ``facelab`` command.

Subcommands are discovered from the entry-point group ``facelab.commands``: every installed
facelab package registers its own (``facelab duetface ...``, ``facelab bench ...``), so
``facelab --help`` lists exactly what is installed. An entry point is a callable taking the
remaining arguments (``list[str]``) and returning an exit code (or None for 0); its docstring's
first line is the help text.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import distributions, entry_points
from typing import Any, NoReturn

ENTRY_POINT_GROUP = "facelab.commands"


def discover_commands() -> dict[str, Any]:
    """Installed subcommands: name -> importlib.metadata.EntryPoint (not yet loaded)."""
    found: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return dict(sorted(found.items()))


def installed_packages() -> dict[str, str]:
    """Versions of every installed ``facelab-*`` distribution."""
    out: dict[str, str] = {}
    for dist in distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith("facelab-"):
            out[name] = dist.version
    return dict(sorted(out.items()))


def _summary(obj: Callable[..., Any]) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _print_help(commands: dict[str, Any]) -> None:
    print("usage: facelab <command> [args ...]\n")
    print("facelab: privacy-preserving face recognition, synthetic faces, iris and FL security.\n")
    print("installed commands:")
    width = max((len(n) for n in commands), default=8)
    for name, ep in commands.items():
        try:
            summary = _summary(ep.load())
        except Exception as exc:  # a broken plugin must not hide the others
            summary = f"(failed to load: {type(exc).__name__}: {exc})"
        print(f"  {name:<{width}}  {summary}")
    print("\nrun `facelab <command> --help` for the options of one command.")


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = discover_commands()
    if not args or args[0] in ("-h", "--help", "help"):
        _print_help(commands)
        return 0
    name, rest = args[0], args[1:]
    if name not in commands:
        print(
            f"facelab: unknown command {name!r}; installed commands: {', '.join(commands)}",
            file=sys.stderr,
        )
        return 2
    fn = commands[name].load()
    try:
        rc = fn(rest)
    except SystemExit as exc:  # argparse/tyro exit codes pass through
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except Exception as exc:
        return bad_input_exit(f"facelab {name}", exc)
    return int(rc or 0)


#: exit status of every facelab command that ends on bad input (argparse's usage errors too)
EXIT_BAD_INPUT = 2


def bad_input_exit(prog: str, exc: Exception) -> int:
    """End a command on bad input: one line ``<prog>: error: <message>`` on stderr, and
    ``EXIT_BAD_INPUT``. The message says what was expected and what came; a traceback would
    only bury it (``FACELAB_TRACEBACK=1`` re-raises to show one). Anything that is not bad
    input is a bug and is re-raised with its traceback."""
    if not _is_input_error(exc) or os.environ.get("FACELAB_TRACEBACK"):
        raise exc
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return EXIT_BAD_INPUT


class ArgumentParser(argparse.ArgumentParser):
    """argparse for facelab commands: a usage error ends like any bad input, with one line
    ``<prog>: error: <message>`` on stderr and ``EXIT_BAD_INPUT`` (argparse would print the
    whole usage first; ``--help`` still shows it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _is_input_error(exc: BaseException) -> bool:
    """A ``FacelabError`` (bad input) or a missing file. ``facelab.core.errors`` imports torch,
    so it is looked up, not imported: whatever raised a ``FacelabError`` has loaded it."""
    errors = sys.modules.get("facelab.core.errors")
    return isinstance(exc, FileNotFoundError) or (
        errors is not None and isinstance(exc, errors.FacelabError | errors.FacelabTypeError)
    )


def version_command(argv: Sequence[str]) -> int:
    """Print the version of every installed facelab package."""
    if argv and argv[0] in ("-h", "--help"):
        print("usage: facelab version\n\nPrint the version of every installed facelab package.")
        return 0
    for name, version in installed_packages().items():
        print(f"{name} {version}")
    return 0


def subcommands(
    prog: str, commands: dict[str, Callable[..., Any]], argv: Sequence[str], description: str = ""
) -> Any:
    """Dispatch ``prog <sub> [flags]`` to typed functions through tyro.

    Each function's signature (dataclasses and plain typed parameters) becomes the flags of its
    subcommand; its docstring becomes the help.
    """
    import tyro

    return tyro.extras.subcommand_cli_from_dict(
        commands, prog=prog, args=list(argv), description=description
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
