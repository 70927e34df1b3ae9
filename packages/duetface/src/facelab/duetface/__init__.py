"""DuetFace: collaborative privacy-preserving face recognition by frequency channel splitting (ACM MM 2022).

The client keeps the 30 low-frequency DCT channels and a MobileFaceNet on them; the server
runs an IResNet on the other 162 channels, refined by feature masks the client derives from
its own features. See README.md.
"""

from facelab.duetface.attack import (
    OBSERVATIONS,
    ObservationSet,
    evaluate_privacy,
    idct_view_metrics,
    idct_views,
    payload_observation,
)
from facelab.duetface.evaluate import compute_split, count_flops, verification_rows
from facelab.duetface.model import (
    ClientModel,
    InteractiveBlock,
    MaskGenerator,
    ServerModel,
    interactive_mask,
    minmax_normalize,
)
from facelab.duetface.protocol import (
    PAYLOAD_FORMAT,
    PAYLOAD_VERSION,
    DuetFaceClient,
    DuetFacePipeline,
    DuetFaceServer,
    ServerPayload,
    load_client,
    load_pipeline,
    load_server,
    payload_bytes_per_image,
    save_bundle,
)
from facelab.duetface.roi import DEFAULT_ROI_MARGIN, RoiBuilder, hull_masks, template_roi
from facelab.duetface.train import (
    DuetFaceConfig,
    DuetFaceModelConfig,
    DuetFaceResult,
    baseline_config,
    build_client,
    build_pipeline,
    build_server,
    duetface_presets,
    train,
    train_baseline,
    train_client,
    train_server,
    training_data,
)

__all__ = [
    "DEFAULT_ROI_MARGIN",
    "OBSERVATIONS",
    "PAYLOAD_FORMAT",
    "PAYLOAD_VERSION",
    "ClientModel",
    "DuetFaceClient",
    "DuetFaceConfig",
    "DuetFaceModelConfig",
    "DuetFacePipeline",
    "DuetFaceResult",
    "DuetFaceServer",
    "InteractiveBlock",
    "MaskGenerator",
    "ObservationSet",
    "RoiBuilder",
    "ServerModel",
    "ServerPayload",
    "baseline_config",
    "build_client",
    "build_pipeline",
    "build_server",
    "compute_split",
    "count_flops",
    "duetface_presets",
    "evaluate_privacy",
    "hull_masks",
    "idct_view_metrics",
    "idct_views",
    "interactive_mask",
    "load_client",
    "load_pipeline",
    "load_server",
    "minmax_normalize",
    "payload_bytes_per_image",
    "payload_observation",
    "save_bundle",
    "template_roi",
    "train",
    "train_baseline",
    "train_client",
    "train_server",
    "training_data",
    "verification_rows",
]
