"""NormFree and NormKeep: one recognition network, two kinds of input.

* **NormFree** (the paper's method): the iris's bounding box, cut from the ocular image and
  resized, goes straight into a face-recognition backbone trained with an angular-margin
  (ArcFace) loss; no segmentation into a rubber sheet, no normalization of the texture.
* **NormKeep** (the paper's ablation): the *same* network on the normalized (rubber-sheet)
  strip instead of the crop.

:class:`IrisNet` wraps a core backbone (one input channel) and knows how to make its input
from images and a :class:`~facelab.immeriris.segment.Segmentation`, so a saved model embeds raw
ocular images. ``standardize`` (our option, on in the ``toy`` preset) brings every input to
zero mean and a fixed spread inside :meth:`forward`, so training and embedding see the same
thing. The crop is square, centred on the iris ellipse's bounding box, ``crop_margin``
times its longer side (the paper says "bounding box"; we keep it square so the aspect ratio of
the iris survives and add a margin so the limbus stays inside): our choice. The strip is
sampled directly at the network's input size (``strip_size`` = radial x angular) between the
same boundaries the classical pipeline uses; invalid pixels are left as they are (the network
sees the eyelids it would see in a strip).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from facelab.core.backbones import get_backbone
from facelab.core.errors import RangeError, UnknownNameError
from facelab.core.hub import PretrainedMixin, register_model
from facelab.immeriris.geometry import check_ellipses, ellipse_bbox
from facelab.immeriris.normalize import sampling_grid
from facelab.immeriris.segment import Segmentation, check_images

Paradigm = Literal["normfree", "normkeep"]
PARADIGMS = ("normfree", "normkeep")


def iris_crop(
    images: torch.Tensor,
    iris: torch.Tensor,
    size: int,
    margin: float = 1.15,
    jitter: torch.Tensor | None = None,
) -> torch.Tensor:
    """Square crops (N, 1, size, size) around the iris ellipses (N, 5), bilinear, edges
    replicated. ``jitter`` (N, 3) = (du, dv, log-scale) moves and scales each box (as
    fractions of its side), for training augmentation."""
    images = check_images(images)
    n, _, h, w = images.shape
    check_ellipses(iris, "iris", n)
    box = ellipse_bbox(iris.float())
    cu, cv = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
    side = torch.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]) * margin
    if jitter is not None:
        cu = cu + jitter[:, 0] * side
        cv = cv + jitter[:, 1] * side
        side = side * torch.exp(jitter[:, 2])
    theta = torch.zeros(n, 2, 3, dtype=torch.float32, device=images.device)
    theta[:, 0, 0] = side / w
    theta[:, 1, 1] = side / h
    theta[:, 0, 2] = cu * (2.0 / w) - 1.0
    theta[:, 1, 2] = cv * (2.0 / h) - 1.0
    grid = F.affine_grid(theta, (n, 1, size, size), align_corners=False)
    return F.grid_sample(
        images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def strip_input(
    images: torch.Tensor, pupil: torch.Tensor, iris: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Rubber-sheet strips (N, 1, radial, angular) in [-1, 1], sampled at the network size."""
    images = check_images(images)
    n, _, h, w = images.shape
    check_ellipses(pupil, "pupil", n)
    check_ellipses(iris, "iris", n)
    u, v = sampling_grid(pupil.float(), iris.float(), size[0], size[1])
    grid = torch.stack([u * (2.0 / w) - 1.0, v * (2.0 / h) - 1.0], dim=-1)
    return F.grid_sample(
        images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Each input (N, C, H, W) to zero mean and standard deviation 0.5 (the spread of a
    [-1, 1] image): removes exposure and display-brightness offsets before the backbone."""
    x = x.float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
    return (x - mean) * (0.5 / std)


@register_model(key="facelab.immeriris.IrisNet")
class IrisNet(nn.Module, PretrainedMixin):
    """A core backbone on one-channel iris crops (NormFree) or strips (NormKeep).

    ``forward(x)`` takes prepared inputs ``(N, 1, H, W)`` in [-1, 1]; :meth:`prepare` makes
    them from ocular images and a segmentation; :meth:`embed` does both, batched."""

    def __init__(
        self,
        paradigm: Paradigm = "normfree",
        backbone: str = "r50",
        embedding_size: int = 512,
        base_width: int = 64,
        crop_size: int = 112,
        crop_margin: float = 1.15,
        strip_size: tuple[int, int] | list[int] = (64, 256),
        standardize: bool = False,
    ) -> None:
        super().__init__()
        if paradigm not in PARADIGMS:
            raise UnknownNameError(f"paradigm: expected one of {list(PARADIGMS)}, got {paradigm!r}")
        if not 1.0 <= float(crop_margin) <= 2.0:
            raise RangeError(f"crop_margin: expected a value in [1, 2], got {crop_margin}")
        self.paradigm = paradigm
        self.backbone_name = backbone
        self.embedding_size = int(embedding_size)
        self.base_width = int(base_width)
        self.crop_size = int(crop_size)
        self.crop_margin = float(crop_margin)
        self.strip_size = (int(strip_size[0]), int(strip_size[1]))
        self.standardize = bool(standardize)
        opts: dict[str, Any] = {
            "in_channels": 1,
            "input_size": self.input_size,
            "embedding_size": self.embedding_size,
        }
        if backbone != "mobilefacenet":
            opts["base_width"] = self.base_width
        self.backbone = get_backbone(backbone, **opts)

    @property
    def input_size(self) -> tuple[int, int]:
        return (self.crop_size, self.crop_size) if self.paradigm == "normfree" else self.strip_size

    @property
    def config(self) -> dict[str, Any]:
        return {
            "paradigm": self.paradigm,
            "backbone": self.backbone_name,
            "embedding_size": self.embedding_size,
            "base_width": self.base_width,
            "crop_size": self.crop_size,
            "crop_margin": self.crop_margin,
            "strip_size": list(self.strip_size),
            "standardize": self.standardize,
        }

    def prepare(
        self, images: torch.Tensor, seg: Segmentation, jitter: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Network inputs from ocular images (N, 1, H, W) and their segmentation."""
        if self.paradigm == "normfree":
            return iris_crop(images, seg.iris, self.crop_size, self.crop_margin, jitter)
        return strip_input(images, seg.pupil, seg.iris, self.strip_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.standardize:
            x = standardize(x)
        return self.backbone(x)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, seg: Segmentation, batch_size: int = 256) -> torch.Tensor:
        """L2-normalized embeddings (N, D) of ocular images, in eval mode, batched."""
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        out = []
        for i in range(0, images.shape[0], batch_size):
            x = self.prepare(images[i : i + batch_size], seg[i : i + batch_size]).to(device)
            out.append(F.normalize(self(x).float(), dim=1).cpu())
        self.train(was)
        if not out:
            return torch.zeros(0, self.embedding_size)
        return torch.cat(out)

    @torch.no_grad()
    def embed_inputs(self, inputs: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """L2-normalized embeddings of already prepared inputs."""
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        out = [
            F.normalize(self(inputs[i : i + batch_size].to(device).float()).float(), dim=1).cpu()
            for i in range(0, inputs.shape[0], batch_size)
        ]
        self.train(was)
        return torch.cat(out) if out else torch.zeros(0, self.embedding_size)


TOY_WEIGHTS = Path(__file__).resolve().parent / "weights" / "normfree-toy"
"""The NormFree network shipped with the package (see :func:`toy_normfree`)."""


def toy_normfree() -> IrisNet:
    """The ``toy`` preset's NormFree network, shipped with the package (1.7 MB, float16 on
    disk, loaded in float32, eval mode): training seed 1337, 1,000 steps of 64 on every capture
    of 200 procedural subjects (ids disjoint from the evaluation's). The claim test and
    ``facelab bench quick`` use it; ``packages/immeriris/scripts/make_toy_weights.py`` remakes
    it (about 6 CPU-minutes). For the procedural data only: it knows nothing of real eyes."""
    return IrisNet.from_pretrained(TOY_WEIGHTS)
