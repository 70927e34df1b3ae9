"""Identity-folder datasets: one folder per identity, labels from the sorted folder names.

Layout (the CASIA-WebFace / torchvision ``ImageFolder`` convention)::

    root/
      0000045/001.jpg
      0000045/002.jpg
      0000099/001.jpg
      ...

Every sub-folder of ``root`` is one identity; its images (searched recursively inside it) get
the label of the folder's rank among the sorted folder names. Files that are not images (by
extension) and hidden entries are ignored; an image lying directly in ``root`` or an identity
folder without images is an error, never silently skipped.

For very large trees an *index file* avoids walking the file system: a text file with one image
path per line, relative to ``root`` and written with ``/``, whose first component is the
identity folder (``write_index`` writes one). Labels are then derived exactly as for a scan.

Images are decoded with PIL to RGB and returned as float32 ``(3, H, W)`` tensors in [-1, 1]
(``(x / 255 - 0.5) / 0.5``, the insightface convention).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from facelab.core.errors import FormatError

#: file extensions (lower case) treated as images.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".webp",
    ".ppm",
    ".pgm",
    ".tif",
    ".tiff",
)

Transform = Callable[[torch.Tensor], torch.Tensor]


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when the file name has one of ``IMAGE_EXTENSIONS`` (case-insensitive)."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image -> float32 ``(3, H, W)`` in [-1, 1] (``(x / 255 - 0.5) / 0.5``)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    chw = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    return (chw.to(torch.float32) / 255.0 - 0.5) / 0.5


def decode_image(data: bytes | bytearray | memoryview, source: str) -> torch.Tensor:
    """Decode encoded image bytes (JPEG, PNG, ...) to float32 ``(3, H, W)`` in [-1, 1].

    ``source`` names where the bytes came from (a path, ``"train.rec key 17"``) for the error
    message when they cannot be decoded.
    """
    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            im.load()  # decode fully now: truncated files fail here, not later
            return pil_to_tensor(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise FormatError(
            f"{source}: cannot decode image ({len(data)} bytes): {type(exc).__name__}: {exc}"
        ) from exc


def read_file_bytes(path: str | os.PathLike[str]) -> bytes:
    """Read a whole (small) file, turning OS errors into a ``FormatError`` naming the file."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise FormatError(f"{os.fspath(path)}: cannot read image file: {exc}") from exc


def load_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read and decode one image file to float32 ``(3, H, W)`` in [-1, 1]."""
    return decode_image(read_file_bytes(path), os.fspath(path))


def _visible(name: str) -> bool:
    return not name.startswith(".")


def scan_identity_folders(root: str | os.PathLike[str]) -> list[str]:
    """Relative POSIX paths ``identity/.../image.ext`` of every image under ``root``, sorted.

    Raises ``FormatError`` for a missing root, an image directly in ``root``, an identity folder
    without images, or a tree without any image.
    """
    root = Path(root)
    if not root.is_dir():
        raise FormatError(f"{root}: expected a directory with one sub-folder per identity")
    rel_paths: list[str] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not _visible(entry.name):
            continue
        if entry.is_file() and is_image_file(entry.name):
            raise FormatError(
                f"{Path(entry.path)}: image lies directly in the dataset root; an identity-folder "
                "dataset needs one sub-folder per identity"
            )
        if not entry.is_dir():
            continue
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(entry.path, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if _visible(d))
            rel_dir = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
            found.extend(
                str(rel_dir / f) for f in sorted(filenames) if _visible(f) and is_image_file(f)
            )
        if not found:
            raise FormatError(
                f"{Path(entry.path)}: identity folder contains no image "
                f"(extensions {', '.join(IMAGE_EXTENSIONS)})"
            )
        rel_paths.extend(sorted(found))
    if not rel_paths:
        raise FormatError(f"{root}: empty dataset, no identity folder with images found")
    return rel_paths


def read_index(index_file: str | os.PathLike[str]) -> list[str]:
    """Read an index file: one relative POSIX image path per line (``#`` comments, blank lines
    ignored). Each path must have an identity folder and a file name, and no ``..``."""
    index_file = Path(index_file)
    try:
        text = index_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{index_file}: cannot read index file: {exc}") from exc
    out: list[str] = []
    seen: dict[str, int] = {}
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        p = PurePosixPath(line)
        if p.is_absolute() or ".." in p.parts or len(p.parts) < 2:
            raise FormatError(
                f"{index_file} line {line_no}: expected a relative path 'identity/image.ext' "
                f"without '..', got {line!r}"
            )
        if not is_image_file(line):
            raise FormatError(
                f"{index_file} line {line_no}: {line!r} has no image extension "
                f"({', '.join(IMAGE_EXTENSIONS)})"
            )
        key = str(p)
        if key in seen:
            raise FormatError(
                f"{index_file} line {line_no}: {line!r} is listed twice (first on line {seen[key]})"
            )
        seen[key] = line_no
        out.append(key)
    if not out:
        raise FormatError(f"{index_file}: empty dataset, the index file lists no image")
    return out


def write_index(root: str | os.PathLike[str], index_file: str | os.PathLike[str]) -> int:
    """Scan ``root`` and write its index file; returns the number of images listed."""
    rel_paths = scan_identity_folders(root)
    Path(index_file).write_text("".join(p + "\n" for p in rel_paths), encoding="utf-8")
    return len(rel_paths)


class IdentityFolderDataset(Dataset):
    """One folder per identity -> ``(image, label)`` pairs.

    ``image`` is float32 ``(3, H, W)`` in [-1, 1] (then passed through ``transform`` when one is
    given: a callable on that tensor, e.g. a random flip); ``label`` is an int64 scalar tensor.

    Attributes: ``classes`` (sorted identity folder names; label = position), ``samples``
    (``(path, label)`` pairs, grouped by label), ``labels`` (int64 tensor, one per sample).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Transform | None = None,
        index_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        if index_file is None:
            rel_paths = scan_identity_folders(self.root)
        else:
            if not self.root.is_dir():
                raise FormatError(f"{self.root}: dataset root is not a directory")
            rel_paths = read_index(index_file)
        identities = [p.split("/", 1)[0] for p in rel_paths]
        self.classes: list[str] = sorted(set(identities))
        class_to_idx = {c: i for i, c in enumerate(self.classes)}
        labels = [class_to_idx[c] for c in identities]
        # stable sort by label: identity ranges are contiguous whatever the index order was
        order = sorted(range(len(rel_paths)), key=labels.__getitem__)
        self.samples: list[tuple[Path, int]] = [
            (self.root / rel_paths[i], labels[i]) for i in order
        ]
        self.relative_paths: list[str] = [rel_paths[i] for i in order]
        self.labels = torch.tensor([labels[i] for i in order], dtype=torch.int64)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, label = self.samples[index]
        image = load_image(path)
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.tensor(label, dtype=torch.int64)

    def class_counts(self) -> torch.Tensor:
        """Images per identity, int64 ``(num_classes,)``."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, classes={self.num_classes}, "
            f"images={len(self)})"
        )


def identity_ranges(labels: Sequence[int]) -> list[tuple[int, int]]:
    """``[start, end)`` positions of each label in a label list grouped by label (0..C-1)."""
    lab = np.asarray(labels, dtype=np.int64)
    if lab.size and np.any(np.diff(lab) < 0):
        raise FormatError("identity_ranges: labels must be grouped in ascending order")
    counts = np.bincount(lab, minlength=int(lab.max()) + 1 if lab.size else 0)
    ends = np.cumsum(counts)
    starts = ends - counts
    return list(zip(starts.tolist(), ends.tolist()))
