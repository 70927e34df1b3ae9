"""Training sources: count images and identities without decoding (or even listing) images.

A source is one of

* a folder of identity folders (``root/<identity>/<image>``, core's layout), counted by a
  scan of the file names;
* an *index file* (one ``identity/image.ext`` path per line, core's ``write_index`` format),
  counted from its lines: the images are not touched, so half a million of them cost a
  fraction of a second;
* an insightface RecordIO folder (``train.rec`` + ``train.idx``; a ``.rec`` file path works
  too), counted from the index and record 0 (or the ``property`` file);
* a generator's *manifest*: a JSON file (or a folder holding ``manifest.json`` next to its
  identity folders / RecordIO files).

The manifest fields read here (anything else is ignored, so a generator may write more):

========================  ======================================================================
field                     meaning
========================  ======================================================================
``num_images``            int, images in the dataset (aliases ``images``, ``total_images``)
``num_identities``        int, identities (aliases ``num_ids``, ``identities`` given as an int)
``images_per_identity``   int; with ``num_identities`` gives the image count when ``num_images``
                          is absent (the manifest of core's synthesis base, ``facelab synth
                          sample``); the finished identity folders next to such a manifest are
                          then counted (a directory listing, no image is opened), so a
                          generation that stopped half-way is not counted as complete
``identities``            optional list (or object) with one entry per identity; when the counts
                          above are absent they are derived from it: an entry's ``num_images`` /
                          ``images`` (an int or a list of file names)
``real_images``           int, how many of the images are real photographs (0 for a purely
                          synthetic set); alias ``num_real_images``
``source``                optional ``"synthetic"`` / ``"real"`` / ``"mixed"``; used when
                          ``real_images`` is absent (``"real"``: every image is real,
                          ``"mixed"``: some are, count unknown)
``contains_real``         optional bool, same role as ``source``
``generator``             optional str, shown in reports
``run``                   optional object: the fields above nested one level down, as core's
                          synthesis base writes them (top-level fields win)
========================  ======================================================================

A source without a manifest declares nothing about real images: the checker takes it as what
the user passed it as (``synthetic`` or ``real``) and says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from facelab.core.errors import FormatError, RangeError

MANIFEST_NAME = "manifest.json"
SourceKind = Literal["folders", "index", "recordio", "manifest", "toyfaces"]
_SOURCE_VALUES = ("synthetic", "real", "mixed")


@dataclass(frozen=True)
class Manifest:
    """What a generator's manifest says about its dataset (see the module doc for the fields)."""

    path: Path
    num_images: int
    num_identities: int | None
    real_images: int | None  # None: the manifest says some images are real but not how many
    declares_real: bool | None  # None: the manifest says nothing about real images
    generator: str | None
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    # True: num_images = num_identities x images_per_identity (a run's plan, as core's
    # synthesis base writes it); the identity folders are then counted to see it finished
    planned: bool = False


@dataclass(frozen=True)
class SourceCount:
    """Images and identities of one training source and where the numbers come from."""

    path: str
    kind: SourceKind
    num_images: int
    num_identities: int | None
    counted_from: str
    manifest: Manifest | None = None
    notes: tuple[str, ...] = ()

    @property
    def real_images(self) -> int | None:
        """Real images the manifest declares (0 when it declares a synthetic set); None when
        nothing is declared or the count is unknown."""
        m = self.manifest
        if m is None or m.declares_real is None:
            return None
        return m.real_images

    @property
    def declares_real(self) -> bool | None:
        """True/False when a manifest says whether real images are included, else None."""
        return None if self.manifest is None else self.manifest.declares_real

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "num_images": self.num_images,
            "num_identities": self.num_identities,
            "counted_from": self.counted_from,
            "real_images": self.real_images,
            "declares_real": self.declares_real,
            "generator": None if self.manifest is None else self.manifest.generator,
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------------------------
# manifests


def _int_field(data: Mapping[str, Any], names: tuple[str, ...], where: str) -> int | None:
    for name in names:
        if name not in data:
            continue
        v = data[name]
        if isinstance(v, bool) or not isinstance(v, int):
            if name == "identities" and isinstance(v, (list, dict)):
                continue  # the per-identity form, handled by the caller
            raise FormatError(f"{where}: {name!r}: expected a non-negative int, got {v!r}")
        if v < 0:
            raise FormatError(f"{where}: {name!r}: expected a non-negative int, got {v}")
        return v
    return None


def _count_identity_entries(entries: Any, where: str) -> int:
    """Images summed over a manifest's per-identity entries."""
    items = list(entries.values()) if isinstance(entries, dict) else list(entries)
    total = 0
    for k, e in enumerate(items):
        n: Any = e
        if isinstance(e, Mapping):
            n = e.get("num_images", e.get("images"))
        if isinstance(n, list):
            n = len(n)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise FormatError(
                f"{where}: identities[{k}]: expected 'num_images' (an int >= 0) or 'images' "
                f"(an int or a list of files), got {e!r}"
            )
        total += n
    return total


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Parse a generator's manifest (JSON object; fields in the module doc)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: expected a JSON manifest, cannot read it: {exc}") from exc
    if not isinstance(data, dict):
        raise FormatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    where = str(path)
    if isinstance(data.get("run"), dict):  # core's synthesis base nests the run's shape
        data = {**data["run"], **{k: v for k, v in data.items() if k != "run"}}
    num_images = _int_field(data, ("num_images", "images", "total_images"), where)
    num_ids = _int_field(data, ("num_identities", "num_ids", "identities"), where)
    per_id = data.get("identities")
    if isinstance(per_id, (list, dict)):
        if num_images is None:
            num_images = _count_identity_entries(per_id, where)
        if num_ids is None:
            num_ids = len(per_id)
    per_identity = _int_field(data, ("images_per_identity",), where)
    derived = False
    if num_images is None and per_identity is not None and num_ids is not None:
        num_images, derived = num_ids * per_identity, True  # core's synthesis manifest
    if num_images is None:
        raise FormatError(
            f"{where}: expected the image count as 'num_images' (or 'images' / 'total_images'), "
            "'num_identities' with 'images_per_identity', or an 'identities' list with "
            f"per-identity 'num_images'; found keys {sorted(data)}"
        )
    real = _int_field(data, ("real_images", "num_real_images"), where)
    declares: bool | None = None
    if real is not None:
        if real > num_images:
            raise FormatError(
                f"{where}: real_images = {real} is more than num_images = {num_images}"
            )
        declares = real > 0
    else:
        src = data.get("source")
        if src is not None:
            if src not in _SOURCE_VALUES:
                raise FormatError(f"{where}: source: expected one of {_SOURCE_VALUES}, got {src!r}")
            declares = src != "synthetic"
            real = {"synthetic": 0, "real": num_images, "mixed": None}[src]
        contains = data.get("contains_real")
        if contains is not None:
            if not isinstance(contains, bool):
                raise FormatError(f"{where}: contains_real: expected a bool, got {contains!r}")
            if declares is not None and declares != contains:
                raise FormatError(
                    f"{where}: source = {src!r} and contains_real = {contains} disagree"
                )
            declares = contains
            if real is None and not contains:
                real = 0
    gen = data.get("generator")
    if isinstance(gen, Mapping):  # e.g. {"name": ..., "hash": ...}
        gen = gen.get("name") or json.dumps(gen, sort_keys=True)[:80]
    return Manifest(
        path=path,
        num_images=num_images,
        num_identities=num_ids,
        real_images=real,
        declares_real=declares,
        generator=None if gen is None else str(gen),
        raw=data,
        planned=derived,
    )


def write_manifest(
    path: str | os.PathLike[str],
    num_images: int,
    num_identities: int,
    *,
    real_images: int = 0,
    generator: str | None = None,
    **extra: Any,
) -> Path:
    """Write a minimal manifest this package reads (used by the toy edition and tests)."""
    path = Path(path)
    payload: dict[str, Any] = {
        "num_images": int(num_images),
        "num_identities": int(num_identities),
        "real_images": int(real_images),
    }
    if generator is not None:
        payload["generator"] = generator
    payload.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------------------------
# counting


def _count_index(path: Path) -> tuple[int, int]:
    """Images and identities of an index file (core's format), checked line by line like
    core's ``read_index`` but with plain string operations: 500,000 lines in well under a
    second (core's reader, which builds a path object per line, takes tens of seconds)."""
    from facelab.core.data.folders import IMAGE_EXTENSIONS

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: cannot read index file: {exc}") from exc
    exts = frozenset(IMAGE_EXTENSIONS)
    seen: set[str] = set()
    identities: set[str] = set()
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        parts = line.split("/")
        dot = parts[-1].rfind(".")
        if len(parts) < 2 or not parts[0] or not parts[-1] or line[0] == "/" or ".." in parts:
            raise FormatError(
                f"{path} line {n}: expected a relative path 'identity/image.ext' without '..', "
                f"got {line!r}"
            )
        if dot < 0 or parts[-1][dot:].lower() not in exts:
            raise FormatError(
                f"{path} line {n}: {line!r} has no image extension ({', '.join(IMAGE_EXTENSIONS)})"
            )
        if line in seen:
            raise FormatError(f"{path} line {n}: {line!r} is listed twice")
        seen.add(line)
        identities.add(parts[0])
    if not seen:
        raise FormatError(f"{path}: empty dataset, the index file lists no image")
    return len(seen), len(identities)


def _count_folders(root: Path) -> tuple[int, int]:
    from facelab.core.data.folders import scan_identity_folders

    rel = scan_identity_folders(root)
    return len(rel), len({p.split("/", 1)[0] for p in rel})


def _count_recordio(rec: Path, idx: Path) -> tuple[int, int | None, str]:
    from facelab.core.data.recordio import MXRecordReader, read_layout, read_property

    with MXRecordReader(rec, idx) as reader:
        layout = read_layout(reader)
    classes = layout.num_classes
    how = f"{idx.name} + record 0"
    prop = rec.parent / "property"
    if prop.is_file():
        classes = read_property(prop)[0]
        how = f"{idx.name} + property"
    if layout.num_images == 0:
        raise FormatError(f"{rec}: empty dataset, no image record")
    return layout.num_images, classes, how


def _missing(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{path}: no such training source (expected identity folders, an index file, a "
        "RecordIO folder or a manifest JSON)"
    )


def _manifest_count(path: Path, manifest_path: Path, scan: bool) -> SourceCount:
    m = read_manifest(manifest_path)
    notes: list[str] = []
    if scan:  # count the files too and compare
        root = manifest_path.parent
        got = _count_data_folder(root, counted_as=str(path))
        if got.num_images != m.num_images:
            raise FormatError(
                f"{manifest_path}: says {m.num_images} images, but {root} holds {got.num_images} "
                f"({got.counted_from})"
            )
        if m.num_identities is not None and got.num_identities not in (None, m.num_identities):
            raise FormatError(
                f"{manifest_path}: says {m.num_identities} identities, but {root} holds "
                f"{got.num_identities}"
            )
        notes.append(f"manifest counts match a scan of {root.name or root}")
    elif m.planned:
        plan = f"{m.num_identities} identities x {m.raw['images_per_identity']} images (the plan)"
        if path.is_dir():  # a manifest folder: see that the generation finished
            _check_finished(manifest_path, m)
            notes.append(f"{plan}; every identity folder is there (images not counted)")
        else:
            notes.append(f"{plan}; pass the dataset folder to see that the generation finished")
    return SourceCount(
        path=str(path),
        kind="manifest",
        num_images=m.num_images,
        num_identities=m.num_identities,
        counted_from=manifest_path.name,
        manifest=m,
        notes=tuple(notes),
    )


def _check_finished(manifest_path: Path, m: Manifest) -> None:
    """A planned manifest's folder must hold every identity: ``num_identities`` visible
    identity folders (or a packed ``train.rec``); hidden ``.partial-*`` / ``.staging`` folders
    of an unfinished run do not count."""
    root = manifest_path.parent
    if (root / "train.rec").is_file() or m.num_identities is None:
        return
    done = sum(1 for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if done != m.num_identities:
        raise FormatError(
            f"{manifest_path}: plans {m.num_identities} identities x "
            f"{m.raw['images_per_identity']} images, but {root} holds {done} finished identity "
            "folders (an unfinished generation? rerun it to resume, or count the files with --scan)"
        )


def _count_data_folder(root: Path, counted_as: str) -> SourceCount:
    rec, idx = root / "train.rec", root / "train.idx"
    if rec.is_file():
        if not idx.is_file():
            raise FormatError(f"{root}: train.rec without train.idx; pack it with `facelab data`")
        n, c, how = _count_recordio(rec, idx)
        notes = () if c is not None else ("identity count unknown: no record 0 header or property",)
        return SourceCount(counted_as, "recordio", n, c, how, notes=notes)
    n, c = _count_folders(root)
    return SourceCount(counted_as, "folders", n, c, "file scan")


def count_source(path: str | os.PathLike[str], *, scan: bool = False) -> SourceCount:
    """Images and identities of a training source (see the module doc for the kinds).

    ``scan``: when a folder has a manifest, also count its files and fail when they disagree
    (by default the manifest is trusted, so half a million files are never listed).
    """
    p = Path(path)
    if not p.exists():
        raise _missing(p)
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".json":
            return _manifest_count(p, p, scan)
        if suffix == ".rec":
            idx = p.with_suffix(".idx")
            if not idx.is_file():
                raise FormatError(f"{p}: expected its index {idx.name} next to it")
            n, c, how = _count_recordio(p, idx)
            return SourceCount(str(p), "recordio", n, c, how)
        if suffix == ".idx":
            raise FormatError(f"{p}: pass the .rec file (or its folder), not the .idx")
        n, c = _count_index(p)
        return SourceCount(str(p), "index", n, c, "index file")
    manifest = p / MANIFEST_NAME
    if manifest.is_file():
        return _manifest_count(p, manifest, scan)
    return _count_data_folder(p, str(p))


def dataset_root(path: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """``(folder holding the images, index file or None)`` of a training source path."""
    p = Path(path)
    if not p.exists():
        raise _missing(p)
    if p.is_dir():
        return p, None
    suffix = p.suffix.lower()
    if suffix in (".json", ".rec"):
        return p.parent, None
    return p.parent, p


def open_training_source(path: str | os.PathLike[str], image_size: int):
    """A ``(Dataset, num_classes)`` over a training source, for the recognizer's training.

    Identity folders (or an index file over them) and RecordIO folders are read through core;
    a manifest's dataset is the folder it lies in. The first image is decoded to check its size
    against ``image_size`` here, not after minutes of training.
    """
    from facelab.core.data.folders import IdentityFolderDataset
    from facelab.core.data.recordio import MXFaceDataset
    from facelab.core.errors import ShapeError

    root, index = dataset_root(path)
    if index is None and (root / "train.rec").is_file():
        ds: Any = MXFaceDataset(root, image_size=(image_size, image_size))
        num_classes = ds.num_classes
        if num_classes is None:  # no record 0 / property: read every header (not the images)
            import numpy as np

            from facelab.core.data.recordio import unpack

            top = max(
                float(np.asarray(unpack(ds.reader.read_idx(int(k)), str(k))[0].label).ravel()[0])
                for k in ds.imgidx
            )
            num_classes = int(top) + 1
    else:
        ds = IdentityFolderDataset(root, index_file=index)
        num_classes = ds.num_classes
    first = ds[0][0]
    if tuple(first.shape[1:]) != (image_size, image_size):
        raise ShapeError(
            f"{path}: expected {image_size}x{image_size} training images (the recipe's "
            f"image_size), got {first.shape[1]}x{first.shape[2]}; align/resize the dataset or set "
            f"--recipe.image-size"
        )
    if len(ds) == 0:
        raise RangeError(f"{path}: empty training source")
    return ds, int(num_classes)
