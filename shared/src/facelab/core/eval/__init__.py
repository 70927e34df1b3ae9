"""Evaluation protocols: embedding with the flip test, insightface's 10-fold verification, ROC,
TAR@FAR, EER, FNMR@FMR, chunked 1:1 scoring and 1:N search, IJB-B/C templates, identification
(CMC, TPIR@FPIR), demographic group statistics, ROC/DET plots and reports.

The ``facelab eval`` command lives in :mod:`facelab.core.eval.cli`.
"""

from facelab.core.eval.demographics import DemographicStats, GroupResult, demographic_stats
from facelab.core.eval.embed import embed
from facelab.core.eval.identification import IdentificationResult, identification
from facelab.core.eval.ijb import (
    IJBImages,
    IJBMeta,
    aggregate_templates,
    ijb_verification,
    load_ijb_meta,
    template_pair_scores,
)
from facelab.core.eval.metrics import (
    IJB_FARS,
    RocCurve,
    SearchResult,
    eer,
    fnmr_at_fmr,
    pair_scores,
    roc,
    search,
    tar_at_far,
)
from facelab.core.eval.plots import plot_det, plot_roc
from facelab.core.eval.report import EvalReport
from facelab.core.eval.verification import (
    VerificationResult,
    squared_distances,
    verify,
    verify_interleaved,
)

__all__ = [
    "IJB_FARS",
    "DemographicStats",
    "EvalReport",
    "GroupResult",
    "IJBImages",
    "IJBMeta",
    "IdentificationResult",
    "RocCurve",
    "SearchResult",
    "VerificationResult",
    "aggregate_templates",
    "demographic_stats",
    "eer",
    "embed",
    "fnmr_at_fmr",
    "identification",
    "ijb_verification",
    "load_ijb_meta",
    "pair_scores",
    "plot_det",
    "plot_roc",
    "roc",
    "search",
    "squared_distances",
    "tar_at_far",
    "template_pair_scores",
    "verify",
    "verify_interleaved",
]
