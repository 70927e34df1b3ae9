"""``facelab data``: pack | unpack | align | info.

- ``facelab data pack FOLDER OUT``: identity folders -> ``OUT/train.rec``, ``train.idx``,
  ``property`` (+ ``train.lst``), insightface layout.
- ``facelab data unpack REC_DIR OUT``: ``train.rec`` -> identity folders.
- ``facelab data align IN OUT``: MTCNN detect + align every image under ``IN`` to
  ``OUT`` (same relative paths); images without a face are listed in ``OUT/no_face.txt``.
- ``facelab data info PATH``: counts of an identity folder, a ``.rec`` (or its folder) or a
  ``.bin``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import tyro

NO_FACE_REPORT = "no_face.txt"

FolderArg = Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="FOLDER")]
OutArg = Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT")]
RecDirArg = Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="REC_DIR")]
InArg = Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="IN")]
PathArg = Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="PATH")]


def pack(
    folder: FolderArg,
    out: OutArg,
    /,
    index_file: Path | None = None,
    overwrite: bool = False,
) -> int:
    """Pack identity folders into an insightface train.rec/train.idx/property.

    Args:
        folder: dataset root, one sub-folder per identity.
        out: output folder for train.rec, train.idx, property and train.lst.
        index_file: optional list of relative image paths (skips the folder walk).
        overwrite: replace existing train.* files in OUT.
    """
    from facelab.core.data.recordio import pack_identity_folders

    s = pack_identity_folders(
        folder, out, index_file=index_file, overwrite=overwrite, progress=sys.stderr.isatty()
    )
    print(
        f"packed {s.num_images} images of {s.num_classes} identities "
        f"({s.image_size[0]}x{s.image_size[1]}) into {s.rec}"
    )
    return 0


def unpack(rec_dir: RecDirArg, out: OutArg, /, overwrite: bool = False) -> int:
    """Unpack an insightface train.rec into identity folders.

    Args:
        rec_dir: folder with train.rec and train.idx (and optionally train.lst, property).
        out: output root; one sub-folder per identity.
        overwrite: allow writing into a non-empty OUT.
    """
    from facelab.core.data.recordio import unpack_to_folders

    s = unpack_to_folders(rec_dir, out, overwrite=overwrite, progress=sys.stderr.isatty())
    print(f"unpacked {s.num_images} images of {s.num_classes} identities into {s.out}")
    return 0


def align(
    input: InArg,
    out: OutArg,
    /,
    size: int = 112,
    batch_size: int = 16,
    select: Literal["largest", "confident"] = "largest",
    device: str = "cpu",
    min_face_size: int = 20,
    overwrite: bool = False,
) -> int:
    """Detect (MTCNN) and align every image under IN onto the ArcFace template.

    Args:
        input: folder of images (any layout; identity folders are kept).
        out: output folder; aligned images keep their relative paths, and no_face.txt lists
            the images where no face was found.
        size: side of the aligned crops (the template scales with it).
        batch_size: images per detection/warp batch.
        select: which face to keep when several are found.
        device: torch device for MTCNN.
        min_face_size: smallest face MTCNN looks for, in pixels.
        overwrite: allow writing into a non-empty OUT.
    """
    from PIL import Image

    from facelab.core.data.align import FaceDetector, detect_and_align
    from facelab.core.data.folders import is_image_file
    from facelab.core.errors import FormatError
    from facelab.core.progress import progress_bar

    if not input.is_dir():
        raise FormatError(f"{input}: expected a folder of images")
    if batch_size < 1:
        raise FormatError(f"--batch-size: expected >= 1, got {batch_size}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FormatError(f"{out}: not empty; pass --overwrite to write into it")
    rel_paths = sorted(
        Path(dp, f).relative_to(input).as_posix()
        for dp, dns, fns in os.walk(input)
        for f in fns
        if is_image_file(f) and not f.startswith(".")
    )
    if not rel_paths:
        raise FormatError(f"{input}: no image found")
    detector = FaceDetector(device=device, min_face_size=min_face_size)
    out.mkdir(parents=True, exist_ok=True)
    no_face: list[str] = []
    with progress_bar(total=len(rel_paths), desc="align", unit="img") as bar:
        for start in range(0, len(rel_paths), batch_size):
            chunk = rel_paths[start : start + batch_size]
            images = []
            for rel in chunk:
                try:
                    with Image.open(input / rel) as im:
                        images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
                except (OSError, SyntaxError, ValueError) as exc:
                    raise FormatError(f"{input / rel}: cannot decode image: {exc}") from exc
            res = detect_and_align(images, size, select=select, detector=detector)
            crops = ((res.aligned + 1.0) * 127.5).round().clamp(0, 255).byte()
            for j, rel in enumerate(chunk):
                if not bool(res.found_mask[j]):
                    no_face.append(rel)
                    continue
                dest = out / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                arr = crops[j].permute(1, 2, 0).numpy()
                kwargs = {"quality": 95} if dest.suffix.lower() in (".jpg", ".jpeg") else {}
                Image.fromarray(arr).save(dest, **kwargs)
            bar.update(len(chunk))
    report = out / NO_FACE_REPORT
    report.write_text("".join(r + "\n" for r in no_face), encoding="utf-8")
    aligned = len(rel_paths) - len(no_face)
    print(
        f"aligned {aligned} of {len(rel_paths)} images into {out}; {len(no_face)} without a face "
        f"listed in {report}"
    )
    return 0


def info(path: PathArg, /) -> int:
    """Print counts of an identity folder, a .rec (or its folder) or a verification .bin.

    Args:
        path: identity-folder root, train.rec, a folder holding train.rec, or a .bin file.
    """
    from facelab.core.data import recordio
    from facelab.core.errors import FormatError

    if path.suffix == ".bin" and path.is_file():
        from facelab.core.data.verification import read_bin

        images, issame = read_bin(path)
        n_same = sum(issame)
        print(f"verification set: {path}")
        print(f"pairs: {len(issame)} (same {n_same}, different {len(issame) - n_same})")
        print(f"images: {len(images)}")
        return 0
    rec = path if path.suffix == ".rec" else path / recordio.TRAIN_REC
    if rec.is_file():
        idx = rec.with_suffix(".idx")
        if not idx.is_file():
            raise FormatError(f"{idx}: missing; info needs the .idx next to {rec}")
        with recordio.MXRecordReader(rec, idx) as reader:
            layout = recordio.read_layout(reader)
            print(f"recordio: {rec}")
            print(f"records: {len(reader)}")
            print(f"images: {layout.num_images}")
            if layout.num_classes is not None:
                print(f"identities: {layout.num_classes}")
        prop = rec.parent / recordio.PROPERTY
        if prop.is_file():
            classes, h, w = recordio.read_property(prop)
            print(f"property: {classes} classes, {h}x{w}")
        return 0
    if path.is_dir():
        from facelab.core.data.folders import IdentityFolderDataset

        ds = IdentityFolderDataset(path)
        counts = ds.class_counts()
        print(f"identity folders: {path}")
        print(f"identities: {ds.num_classes}")
        print(f"images: {len(ds)}")
        print(
            f"images per identity: min {int(counts.min())}, max {int(counts.max())}, "
            f"mean {float(counts.float().mean()):.2f}"
        )
        return 0
    raise FormatError(f"{path}: expected an identity folder, a .rec (or its folder) or a .bin")


DESCRIPTION = (
    "Data tools: identity folders <-> MXNet RecordIO (pack, unpack), MTCNN face alignment "
    "(align), counts of a folder, .rec or .bin (info)."
)

COMMANDS = {"pack": pack, "unpack": unpack, "align": align, "info": info}


def main(argv: Sequence[str] | None = None) -> int:
    """Data tools: pack | unpack | align | info (identity folders, RecordIO, .bin)."""
    from facelab.core.cli import EXIT_BAD_INPUT, bad_input_exit, subcommands

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rc = subcommands("facelab data", COMMANDS, args, description=DESCRIPTION)
    except ImportError as exc:  # the [detect] extra missing: say which install step is needed
        print(f"facelab data: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SystemExit as exc:  # --help and usage errors from tyro
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except Exception as exc:
        return bad_input_exit("facelab data", exc)
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
