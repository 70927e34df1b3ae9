"""The Flower app project that ``flwr run`` deploys, written for a method's apps (ours).

``flwr run PROJECT`` reads ``PROJECT/pyproject.toml``: ``[tool.flwr.app.components]`` names the
``ServerApp`` / ``ClientApp`` objects, ``[tool.flwr.app.config]`` the run config (``flwr run
--run-config`` may only override keys listed there). The methods with Flower apps (ARIBA,
VFL-AFE) write their project with :func:`write_flower_app`; the apps themselves are imported from
the environment the SuperLink and SuperNodes run in. Plain text: core does not need flwr for it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

from facelab.core.errors import FacelabTypeError, RangeError

#: the flwr versions the apps are written for (as the method packages declare)
FLWR_REQUIREMENT = "flwr>=1.22,<2"


def toml_value(value: Any) -> str:
    """A run-config value as TOML: bool, int, float (finite) or string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RangeError(f"run config: expected a finite number, got {value!r}")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise FacelabTypeError(
        f"run config value: expected a bool, int, float or str, got {type(value).__name__}"
    )


def write_flower_app(
    out_dir: str | Path,
    *,
    distribution: str,
    server_app: str,
    client_app: str,
    run_config: Mapping[str, Any],
    description: str,
) -> Path:
    """Write ``out_dir/pyproject.toml`` of a Flower app project: a project named
    ``<distribution>-app`` at ``distribution``'s installed version that depends on it, the
    components ``server_app`` / ``client_app`` (``"module:object"``) and ``run_config`` under
    ``[tool.flwr.app.config]``. Returns ``out_dir``."""
    for what, ref in (("server_app", server_app), ("client_app", client_app)):
        if ref.count(":") != 1 or not all(ref.split(":")):
            raise RangeError(f"{what}: expected 'module:object', got {ref!r}")
    keys = "\n".join(f"{k} = {toml_value(v)}" for k, v in run_config.items())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pyproject.toml").write_text(
        f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{distribution}-app"
version = "{version(distribution)}"
description = {json.dumps(description)}
license = "MIT"
dependencies = ["{distribution}", "{FLWR_REQUIREMENT}"]

[tool.flwr.app]
publisher = "facelab"

[tool.flwr.app.components]
serverapp = "{server_app}"
clientapp = "{client_app}"

[tool.flwr.app.config]
{keys}
"""
    )
    return out
