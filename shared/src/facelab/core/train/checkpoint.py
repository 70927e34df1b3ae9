"""Checkpoint folders: naming, completion marker, discovery, pruning.

Layout: ``output_dir/checkpoints/step_000123/`` holds what ``accelerator.save_state`` writes
(weights as safetensors, optimizer, RNG states of every process, custom states) plus
``facelab_state.json`` (step, epoch, position in the epoch, config). The folder is written as
``.tmp_step_000123`` and renamed once complete; the JSON file is written last, so a folder
without it is incomplete and is never resumed from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

from facelab.core.errors import FormatError

STATE_FILE = "facelab_state.json"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")
TMP_PREFIX = ".tmp_"


def checkpoints_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """The trainer state of a complete checkpoint folder; ``FormatError`` if it is not one."""
    path = Path(path)
    if not path.is_dir():
        raise FormatError(
            f"checkpoint: expected a checkpoint folder, got {str(path)!r} (no such folder)"
        )
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise FormatError(
            f"checkpoint: {str(path)!r} is incomplete or not a facelab checkpoint "
            f"(no {STATE_FILE}; it is written last, after every process finished saving)"
        )
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError) as exc:
        raise FormatError(f"checkpoint: {str(state_file)!r} is not valid JSON ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise FormatError(
            f"checkpoint: {str(state_file)!r}: expected format {FORMAT_VERSION}, "
            f"got {state.get('format') if isinstance(state, dict) else type(state).__name__!r}"
        )
    for key in ("step", "epoch", "batch_in_epoch", "world_size", "modules"):
        if key not in state:
            raise FormatError(f"checkpoint: {str(state_file)!r} lacks the key {key!r}")
    return state


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write the completion marker (via a temporary file, then rename) and fsync it."""
    tmp = path / (STATE_FILE + ".part")
    with open(tmp, "w") as f:
        json.dump({"format": FORMAT_VERSION, **state}, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / STATE_FILE)


def fsync_tree(path: Path) -> None:
    """Flush every file of a folder (and the folder entries) to disk before it is renamed."""
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def list_checkpoints(output_dir: str | os.PathLike, warn: bool = True) -> list[tuple[int, Path]]:
    """Complete checkpoints ``(step, path)`` sorted by step. Folders named ``step_N`` without the
    completion marker are skipped with a warning; temporary folders are never listed."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for entry in root.iterdir():
        m = _STEP_DIR.match(entry.name)
        if not m or not entry.is_dir():
            continue
        if not (entry / STATE_FILE).is_file():
            if warn:
                warnings.warn(
                    f"checkpoint {str(entry)!r} is incomplete (no {STATE_FILE}); ignoring it",
                    stacklevel=3,
                )
            continue
        found.append((int(m.group(1)), entry))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def prune_checkpoints(output_dir: str | os.PathLike, keep_last: int | None) -> list[Path]:
    """Delete all but the ``keep_last`` newest complete checkpoints; returns what was deleted.
    Incomplete folders are left alone (they may be someone else's)."""
    if keep_last is None:
        return []
    found = list_checkpoints(output_dir, warn=False)
    doomed = [path for _, path in found[: max(len(found) - keep_last, 0)]]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def stale_temporaries(output_dir: str | os.PathLike) -> list[Path]:
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(TMP_PREFIX) and p.is_dir())
