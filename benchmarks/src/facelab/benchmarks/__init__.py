"""facelab-benchmarks: cross-method benchmark suites, run with ``facelab bench SUITE``."""

from facelab.benchmarks.registry import SUITES, run_suite

__all__ = ["SUITES", "run_suite"]
