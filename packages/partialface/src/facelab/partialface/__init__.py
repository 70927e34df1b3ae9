"""PartialFace: privacy-preserving face recognition on random frequency components (ICCV 2023)."""

from facelab.partialface.attack import OBSERVATIONS, AttackSettings, observe, run_attacks
from facelab.partialface.batches import (
    IndexedDataset,
    draw_challenges,
    form_training_batch,
    hash_draws,
)
from facelab.partialface.evaluate import (
    SubsetVerification,
    embed_under,
    eval_challenges,
    evaluate_subsets,
    subset_table,
)
from facelab.partialface.model import PartialFaceModel, SubsetView, flip_sum_embedding
from facelab.partialface.plan import (
    REFERENCE_PERMUTATIONS,
    REFERENCE_SELECTION,
    REMAINING_POSITIONS,
    SubsetPlan,
    reference_plan,
    resolve_plan,
)
from facelab.partialface.protocol import (
    Challenge,
    PartialFaceClient,
    PartialFaceServer,
    Payload,
)
from facelab.partialface.spectrum import SubsetEncoder, flip_channels
from facelab.partialface.train import (
    PartialFaceConfig,
    PartialFaceResult,
    load_trained,
    partialface_presets,
    train,
)

__version__ = "0.1.0"

__all__ = [
    "OBSERVATIONS",
    "REFERENCE_PERMUTATIONS",
    "REFERENCE_SELECTION",
    "REMAINING_POSITIONS",
    "AttackSettings",
    "Challenge",
    "IndexedDataset",
    "PartialFaceClient",
    "PartialFaceConfig",
    "PartialFaceModel",
    "PartialFaceResult",
    "PartialFaceServer",
    "Payload",
    "SubsetEncoder",
    "SubsetPlan",
    "SubsetVerification",
    "SubsetView",
    "draw_challenges",
    "embed_under",
    "eval_challenges",
    "evaluate_subsets",
    "flip_channels",
    "flip_sum_embedding",
    "form_training_batch",
    "hash_draws",
    "load_trained",
    "observe",
    "partialface_presets",
    "reference_plan",
    "resolve_plan",
    "run_attacks",
    "subset_table",
    "train",
]
