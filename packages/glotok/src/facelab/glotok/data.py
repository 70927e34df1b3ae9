"""Image data for the tokenizer and the generator: toyfaces (rendered once into memory) or an
ImageNet-style folder of class subfolders (resized on the shorter side and centre-cropped).

Every sample is ``(image float (3, S, S) in [-1, 1], class label int64)``. On toyfaces the class
is the identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from facelab.core.errors import FormatError, RangeError


@dataclass
class ImageDataConfig:
    """``source``: ``"toyfaces"`` or a folder ``root/<class>/<image>`` (ImageNet train layout)."""

    source: str = "toyfaces"
    image_size: int = 256
    toy_identities: int = 100
    toy_images_per_identity: int = 20
    toy_seed: int = 0
    toy_difficulty: str = "default"
    toy_identity_offset: int = 0
    """first toy identity; evaluation sets use another offset (disjoint images)"""

    def __post_init__(self) -> None:
        for name in ("image_size", "toy_identities", "toy_images_per_identity"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RangeError(f"{name}: expected a positive int, got {v!r}")
        if not self.source:
            raise FormatError(
                "data.source: expected 'toyfaces' or a folder of class subfolders, got ''"
            )

    @property
    def is_toy(self) -> bool:
        return self.source == "toyfaces"


class ImageTensorDataset(Dataset):
    """Images kept as uint8 ``(N, 3, S, S)`` with labels; yields float images in [-1, 1]."""

    def __init__(self, images_u8: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
        if images_u8.dtype != torch.uint8 or images_u8.dim() != 4:
            raise FormatError(
                f"images: expected uint8 (N, C, H, W), got {images_u8.dtype} {tuple(images_u8.shape)}"
            )
        if labels.shape != (images_u8.shape[0],):
            raise FormatError(
                f"labels: expected shape ({images_u8.shape[0]},), got {tuple(labels.shape)}"
            )
        self.images, self.labels, self.num_classes = images_u8, labels.long(), int(num_classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        return self.images[i].float() / 127.5 - 1.0, self.labels[i]

    def __getitems__(self, indices: Sequence[int]):
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        x = self.images[idx].float() / 127.5 - 1.0
        return list(zip(x.unbind(0), self.labels[idx].unbind(0)))

    def tensors(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All (or the first ``limit``) images as float [-1, 1] and their labels."""
        n = len(self) if limit is None else min(limit, len(self))
        return self.images[:n].float() / 127.5 - 1.0, self.labels[:n]


def resize_center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side to ``size`` (antialiased bilinear), then the centre ``size x size`` crop."""
    _, h, w = image.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(
        image[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False
    )[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, top : top + size, left : left + size].clamp(-1, 1)


def toy_dataset(
    cfg: ImageDataConfig,
    identity_offset: int | None = None,
    identities: int | None = None,
    images_per_identity: int | None = None,
) -> ImageTensorDataset:
    from facelab.core.data.toyfaces import ToyFaces

    n_ids = identities or cfg.toy_identities
    faces = ToyFaces(
        n_ids,
        images_per_identity or cfg.toy_images_per_identity,
        size=cfg.image_size,
        seed=cfg.toy_seed,
        identity_offset=cfg.toy_identity_offset if identity_offset is None else identity_offset,
        difficulty=cfg.toy_difficulty,
    )
    images = faces.materialize(torch.uint8)
    labels = torch.as_tensor(faces.labels).long()
    labels = labels - labels.min() if labels.numel() else labels
    return ImageTensorDataset(images, labels, n_ids)


def folder_dataset(cfg: ImageDataConfig, limit: int | None = None) -> ImageTensorDataset:
    """Load (and resize/crop) every image of ``root/<class>/...`` into memory as uint8."""
    from facelab.core.data.folders import IdentityFolderDataset

    root = Path(cfg.source)
    if not root.is_dir():
        raise FormatError(
            f"data.source: expected 'toyfaces' or a folder of class subfolders, got {cfg.source!r}"
        )
    ds = IdentityFolderDataset(root, transform=lambda im: resize_center_crop(im, cfg.image_size))
    n = len(ds) if limit is None else min(limit, len(ds))
    if n == 0:
        raise FormatError(f"{root}: no images")
    images = torch.empty(n, 3, cfg.image_size, cfg.image_size, dtype=torch.uint8)
    for i in range(n):
        images[i] = ((ds[i][0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return ImageTensorDataset(images, ds.labels[:n], ds.num_classes)


def build_dataset(cfg: ImageDataConfig) -> ImageTensorDataset:
    return toy_dataset(cfg) if cfg.is_toy else folder_dataset(cfg)


def eval_dataset(cfg: ImageDataConfig, num_images: int) -> ImageTensorDataset:
    """Held-out evaluation images. Toyfaces: unseen images of the training identities (image
    ``j`` of an identity does not depend on how many images were asked for, so images
    ``toy_images_per_identity ..`` are never trained on), spread evenly over the identities;
    folders: the first ``num_images`` images."""
    if not cfg.is_toy:
        return folder_dataset(cfg, limit=num_images)
    from facelab.core.data.toyfaces import ToyFaces

    if num_images < 1:
        raise RangeError(f"num_images: expected a positive int, got {num_images}")
    ids = cfg.toy_identities
    extra = -(-num_images // ids)
    per = cfg.toy_images_per_identity
    faces = ToyFaces(
        ids,
        per + extra,
        size=cfg.image_size,
        seed=cfg.toy_seed,
        identity_offset=cfg.toy_identity_offset,
        difficulty=cfg.toy_difficulty,
    )
    ident = torch.arange(ids).repeat_interleave(extra)
    idx = (ident * (per + extra) + per + torch.arange(extra).repeat(ids))[:num_images]
    images = ((faces.render(idx) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return ImageTensorDataset(images, ident[:num_images], ids)
