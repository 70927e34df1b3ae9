"""ARIBA: backdoor identification in federated learning by fragment-wise anomaly detection,
as a Flower strategy (Message API), with backdoor attacks, robust-aggregation baselines and an
offline simulation. Only the paper's abstract is public: the details are ours (see README)."""

from facelab.ariba.app import (
    STRATEGIES,
    SimConfig,
    build_strategy,
    evaluate_arrays,
    make_client_app,
    make_server_app,
    run_summary,
    write_app_project,
)
from facelab.ariba.attacks import ATTACKS, AttackConfig, LocalConfig, client_update
from facelab.ariba.compare import SCENARIOS, CompareConfig, compare, quality_rows
from facelab.ariba.data import DataConfig, Trigger, dirichlet_split, load
from facelab.ariba.detect import (
    DETECTORS,
    Detection,
    DetectorConfig,
    analyze,
    detect,
    fragment_features,
    norm_detect,
    outlier_flags,
    prune_by_counts,
    robust_z,
)
from facelab.ariba.fragments import FragmentConfig, fragments, stack_fragments
from facelab.ariba.model import SmallCNN
from facelab.ariba.simulate import (
    InProcessGrid,
    RunResult,
    run_flower_simulation,
    simulate,
    simulate_summary,
)
from facelab.ariba.strategy import ARIBA, NormClipping, NormDetection, RoundReport
from facelab.ariba.train import train

__all__ = [
    "ARIBA",
    "ATTACKS",
    "DETECTORS",
    "SCENARIOS",
    "STRATEGIES",
    "AttackConfig",
    "CompareConfig",
    "DataConfig",
    "Detection",
    "DetectorConfig",
    "FragmentConfig",
    "InProcessGrid",
    "LocalConfig",
    "NormClipping",
    "NormDetection",
    "RoundReport",
    "RunResult",
    "SimConfig",
    "SmallCNN",
    "Trigger",
    "analyze",
    "build_strategy",
    "client_update",
    "compare",
    "detect",
    "dirichlet_split",
    "evaluate_arrays",
    "fragment_features",
    "fragments",
    "load",
    "make_client_app",
    "make_server_app",
    "norm_detect",
    "outlier_flags",
    "prune_by_counts",
    "quality_rows",
    "robust_z",
    "run_flower_simulation",
    "run_summary",
    "simulate",
    "simulate_summary",
    "stack_fragments",
    "train",
    "write_app_project",
]
