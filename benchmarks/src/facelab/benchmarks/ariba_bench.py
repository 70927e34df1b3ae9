"""ARIBA speed: one aggregation of ARIBA against Flower's Krum on the same replies (time and,
at full size, peak memory in fresh processes); see ``facelab.ariba.bench``."""

from __future__ import annotations

from typing import Any


def run_ariba_bench(small: bool) -> list[dict[str, Any]]:
    """100 clients x 1M parameters (``small``: 20 x 0.1M, no memory row)."""
    from facelab.ariba.bench import speed_rows

    return speed_rows(small)
