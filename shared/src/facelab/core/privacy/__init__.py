"""The attack harness every privacy method is judged with.

An ``InversionAttack`` learns to map what an adversary observes (images, frequency channels,
templates) back to the face; ``AttackResult`` reports SSIM/PSNR, identity leakage under an
independent recognizer and the attack success rate at a verification threshold;
``compare_attacks`` trains one attack per observation type with the same budget; ``save_grid``
writes originals vs reconstructions as a PNG.
"""

from facelab.core.privacy.attack import (
    AttackConfig,
    FitHistory,
    InversionAttack,
    InversionDecoder,
    build_decoder,
    check_observations,
    compare_attacks,
    mean_image_baseline,
)
from facelab.core.privacy.grids import make_grid, save_grid, to_uint8
from facelab.core.privacy.metrics import (
    AttackResult,
    cosine_scores,
    embed,
    evaluate_reconstructions,
    identity_leakage,
    identity_match_rates,
    pair_scores,
    psnr,
    ssim,
    success_rate,
    threshold_at_far,
)

__all__ = [
    "AttackConfig",
    "AttackResult",
    "FitHistory",
    "InversionAttack",
    "InversionDecoder",
    "build_decoder",
    "check_observations",
    "compare_attacks",
    "cosine_scores",
    "embed",
    "evaluate_reconstructions",
    "identity_leakage",
    "identity_match_rates",
    "make_grid",
    "mean_image_baseline",
    "pair_scores",
    "psnr",
    "save_grid",
    "ssim",
    "success_rate",
    "threshold_at_far",
    "to_uint8",
]
