"""MXNet RecordIO (.rec/.idx) in pure Python: no mxnet needed to read or write insightface data.

Framing (dmlc-core ``include/dmlc/recordio.h`` / ``src/recordio.cc``), little endian::

    uint32 magic = 0xced7230a
    uint32 lrec  = cflag << 29 | length          (length < 2**29)
    length bytes of data, then zero padding to a multiple of 4

The writer looks for the magic number at every 4-byte-aligned position of the payload. Where it
occurs, the record is split there and the 4 magic bytes are dropped: the first part gets
``cflag = 1``, middle parts ``2`` and the last part ``3`` (an unsplit record has ``cflag = 0``).
The reader joins the parts and puts the magic back between them. Every part length is a
multiple of 4 except the last one's.

``.idx`` is text, one ``key<TAB>byte offset`` line per record (mxnet ``MXIndexedRecordIO``).

Payload (mxnet ``recordio.pack``/``unpack``): an ``IRHeader`` struct ``'IfQQ'`` (flag u32,
label f32, id u64, id2 u64, 24 bytes). When ``flag > 0`` the label is an array of ``flag``
float32 values that follow the header (and the header's own label field is 0); then the encoded
image.

insightface training sets (``train.rec``/``train.idx``/``property``): record 0 has
``flag = 2`` and label ``[id_start, id_end]``; images are records ``1 .. id_start - 1`` with
``flag = 0`` and the identity as label; records ``id_start .. id_end - 1`` describe the
identities in order, each with label ``[first image key, last image key + 1]``;
``property`` holds ``"num_classes,height,width"``.
"""

from __future__ import annotations

import numbers
import os
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from facelab.core.data.folders import (
    IdentityFolderDataset,
    Transform,
    decode_image,
    identity_ranges,
    read_file_bytes,
)
from facelab.core.errors import FacelabTypeError, FormatError, ShapeError, UnknownNameError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
#: a record part is at most this long (29 bits of length in ``lrec``).
MAX_PART_LENGTH = (1 << 29) - 1
_FRAME = struct.Struct("<II")
_IR = struct.Struct("<IfQQ")
IR_SIZE = _IR.size  # 24

#: cflag values of the dmlc framing.
CFLAG_WHOLE, CFLAG_START, CFLAG_MIDDLE, CFLAG_END = 0, 1, 2, 3

DEFAULT_IMAGE_SIZE = (112, 112)
TRAIN_REC, TRAIN_IDX, PROPERTY, TRAIN_LST = "train.rec", "train.idx", "property", "train.lst"


class IRHeader(NamedTuple):
    """The image-record header (mxnet ``recordio.IRHeader``): label is a float, or a float32
    array when ``flag > 0``."""

    flag: int
    label: Any
    id: int
    id2: int


def encode_lrec(cflag: int, length: int) -> int:
    return (cflag << 29) | length


def decode_lrec(lrec: int) -> tuple[int, int]:
    """``lrec`` -> ``(cflag, length)``."""
    return (lrec >> 29) & 7, lrec & MAX_PART_LENGTH


def _padding(n: int) -> int:
    return (-n) % 4


def frame_record(buf: bytes | bytearray | memoryview) -> bytes:
    """The exact bytes dmlc-core's ``RecordIOWriter::WriteRecord`` writes for one record."""
    data = bytes(buf)
    n = len(data)
    if n > MAX_PART_LENGTH:
        raise ShapeError(f"RecordIO: a record must be shorter than 2**29 bytes, got {n}")
    words = np.frombuffer(data, dtype="<u4", count=n // 4)
    hits = (np.flatnonzero(words == MAGIC) * 4).tolist()
    out: list[bytes] = []
    dptr = 0
    for i in hits:
        out.append(MAGIC_BYTES)
        out.append(
            struct.pack("<I", encode_lrec(CFLAG_START if dptr == 0 else CFLAG_MIDDLE, i - dptr))
        )
        out.append(data[dptr:i])
        dptr = i + 4
    out.append(MAGIC_BYTES)
    out.append(struct.pack("<I", encode_lrec(CFLAG_END if dptr else CFLAG_WHOLE, n - dptr)))
    out.append(data[dptr:])
    out.append(b"\0" * _padding(n))
    return b"".join(out)


# --------------------------------------------------------------------------------------------
# payload: IRHeader + optional float32 label array + image bytes


def pack(header: IRHeader | tuple, image_bytes: bytes | bytearray | memoryview) -> bytes:
    """mxnet ``recordio.pack``: a scalar label goes into the header (``flag = 0``); an array
    label sets ``flag = label.size``, the header label to 0, and precedes the image bytes."""
    _, label, id_, id2 = IRHeader(*header)
    body = bytes(image_bytes)
    if isinstance(label, numbers.Number) and not isinstance(label, bool):
        return _IR.pack(0, float(label), int(id_), int(id2)) + body
    arr = np.asarray(label, dtype=np.float32).reshape(-1)
    if arr.size == 0:
        raise ShapeError("recordio.pack: an array label must have at least one value, got 0")
    return _IR.pack(arr.size, 0.0, int(id_), int(id2)) + arr.astype("<f4").tobytes() + body


def unpack(
    record: bytes | bytearray | memoryview, source: str = "record"
) -> tuple[IRHeader, bytes]:
    """mxnet ``recordio.unpack``: -> ``(IRHeader, image_bytes)``; the label is a float, or a
    float32 array of ``flag`` values when ``flag > 0``."""
    rec = bytes(record)
    if len(rec) < IR_SIZE:
        raise FormatError(
            f"{source}: expected an image record of at least {IR_SIZE} bytes (IRHeader 'IfQQ'), "
            f"got {len(rec)}"
        )
    flag, label, id_, id2 = _IR.unpack_from(rec, 0)
    rest = rec[IR_SIZE:]
    if flag > 0:
        need = 4 * flag
        if len(rest) < need:
            raise FormatError(
                f"{source}: header flag {flag} announces {flag} float32 labels ({need} bytes), "
                f"but only {len(rest)} bytes follow the header"
            )
        label = np.frombuffer(rest, dtype="<f4", count=flag).astype(np.float32)
        rest = rest[need:]
    return IRHeader(flag, label, id_, id2), rest


# --------------------------------------------------------------------------------------------
# index files


def _parse_idx_lines(idx_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Line-by-line parse (slow, exact line numbers): used to report errors."""
    keys, offsets, line_nos = [], [], []
    with open(idx_path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            parts = raw.split()
            if not parts:
                continue
            try:
                if len(parts) != 2:
                    raise ValueError
                key, offset = int(parts[0]), int(parts[1])
            except ValueError:
                raise FormatError(
                    f"{idx_path} line {n}: expected 'integer key<TAB>byte offset', got {raw[:80]!r}"
                ) from None
            keys.append(key)
            offsets.append(offset)
            line_nos.append(n)
    as64 = lambda v: np.array(v, dtype=np.int64)  # noqa: E731
    return as64(keys), as64(offsets), as64(line_nos)


def read_idx_file(idx_path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Parse an ``.idx`` file -> ``(keys, offsets)``, int64 arrays in file order.

    numpy's C text parser reads millions of lines in a fraction of a second; a malformed line
    raises ``FormatError`` with its line number.
    """
    idx_path = Path(idx_path)
    try:
        if idx_path.stat().st_size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            table = np.loadtxt(idx_path, dtype=np.int64, delimiter=None, comments=None, ndmin=2)
    except OSError as exc:
        raise FormatError(f"{idx_path}: cannot read index file: {exc}") from exc
    except ValueError:
        keys, offsets, _ = _parse_idx_lines(idx_path)  # raises with the line number
        return keys, offsets
    if table.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if table.shape[1] != 2:
        _parse_idx_lines(idx_path)
        raise FormatError(f"{idx_path}: expected 2 columns, got {table.shape[1]}")
    return np.ascontiguousarray(table[:, 0]), np.ascontiguousarray(table[:, 1])


# --------------------------------------------------------------------------------------------
# reader


def _as_key(key: object) -> int:
    if isinstance(key, bool) or not isinstance(key, numbers.Integral):
        raise FacelabTypeError(f"RecordIO keys are integers, got {type(key).__name__} {key!r}")
    return int(key)


class MXRecordReader:
    """Random-access reader of an mxnet ``.rec`` with its ``.idx`` (mxnet's
    ``MXIndexedRecordIO(idx, rec, 'r')`` without mxnet).

    - ``read_idx(key) -> bytes``: the record stored under ``key`` (parts joined);
    - ``read() -> bytes | None``: the next record in file order (None at the end), continuing
      after the last record read; ``reset()`` goes back to the start;
    - ``keys``: the keys in ``.idx`` order; ``len()``; iteration yields the records in file
      order; ``close()`` and ``with``.

    Only the record asked for is read (lengths are checked against the file size first), so
    memory stays flat on 100 GB files. The file handle is reopened in each process (the
    handle of a forked DataLoader worker would share its file offset with the parent), and the
    reader pickles without its handle.
    """

    def __init__(
        self, rec: str | os.PathLike[str], idx: str | os.PathLike[str] | None = None
    ) -> None:
        self.rec_path = Path(rec)
        self.idx_path = None if idx is None else Path(idx)
        try:
            self._size = self.rec_path.stat().st_size
        except OSError as exc:
            raise FormatError(f"{self.rec_path}: cannot open RecordIO file: {exc}") from exc
        if not self.rec_path.is_file():
            raise FormatError(f"{self.rec_path}: expected a RecordIO file, got a directory")
        self._fh: Any = None
        self._pid = -1
        self._pos = 0
        self._keys = np.zeros(0, np.int64)
        self._sorted_keys = np.zeros(0, np.int64)
        self._sorted_offsets = np.zeros(0, np.int64)
        self._keys_list: list[int] | None = None
        if self.idx_path is not None:
            self._load_index(self.idx_path)

    def _load_index(self, idx_path: Path) -> None:
        keys, offsets = read_idx_file(idx_path)
        bad = np.flatnonzero((offsets < 0) | (offsets + _FRAME.size > self._size))
        if bad.size:
            i = int(bad[0])
            line = int(_parse_idx_lines(idx_path)[2][i])
            raise FormatError(
                f"{idx_path} line {line}: key {int(keys[i])} has offset {int(offsets[i])}, "
                f"past the end of {self.rec_path} ({self._size} bytes)"
            )
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        dup = np.flatnonzero(sk[1:] == sk[:-1])
        if dup.size:
            k = int(sk[dup[0]])
            where = _parse_idx_lines(idx_path)[2][keys == k][:2].tolist()
            raise FormatError(
                f"{idx_path}: key {k} is listed twice (lines {where[0]} and {where[1]})"
            )
        self._keys = keys
        self._sorted_keys = sk
        self._sorted_offsets = offsets[order]

    # -- file handle, fork safety -------------------------------------------------------------
    def _handle(self) -> Any:
        pid = os.getpid()
        if self._fh is None or self._pid != pid:
            # after a fork the inherited handle shares its offset with the parent: open our own
            self._fh = open(self.rec_path, "rb")
            self._pid = pid
        return self._fh

    def close(self) -> None:
        if self._fh is not None and self._pid == os.getpid():
            self._fh.close()
        self._fh = None

    def __enter__(self) -> MXRecordReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fh"] = None
        state["_pid"] = -1
        return state

    # -- records --------------------------------------------------------------------------------
    def _read_at(self, offset: int, what: str) -> tuple[bytes, int] | None:
        """Read the (possibly multi-part) record starting at ``offset`` -> (data, next offset);
        None when ``offset`` is the end of the file."""
        f = self._handle()
        pos = offset
        parts: list[bytes] = []
        while True:
            if pos == self._size and not parts:
                return None
            if pos + _FRAME.size > self._size:
                raise FormatError(
                    f"{self.rec_path}: truncated record header at byte {pos} ({what}): the file "
                    f"ends at byte {self._size}"
                )
            f.seek(pos)
            magic, lrec = _FRAME.unpack(f.read(_FRAME.size))
            if magic != MAGIC:
                raise FormatError(
                    f"{self.rec_path}: bad magic 0x{magic:08x} at byte {pos} ({what}), expected "
                    f"0x{MAGIC:08x}: not a RecordIO file, or a wrong .idx offset"
                )
            cflag, length = decode_lrec(lrec)
            first = not parts
            if (
                cflag > CFLAG_END
                or (first and cflag not in (CFLAG_WHOLE, CFLAG_START))
                or (not first and cflag not in (CFLAG_MIDDLE, CFLAG_END))
            ):
                raise FormatError(
                    f"{self.rec_path}: invalid continuation flag {cflag} at byte {pos} ({what})"
                )
            end = pos + _FRAME.size + length + _padding(length)
            if end > self._size:
                raise FormatError(
                    f"{self.rec_path}: truncated record at byte {pos} ({what}): {length} bytes "
                    f"(+{_padding(length)} padding) announced, only "
                    f"{self._size - pos - _FRAME.size} left in the file"
                )
            parts.append(f.read(length))
            pos = end
            if cflag in (CFLAG_WHOLE, CFLAG_END):
                break
            parts.append(MAGIC_BYTES)
        return b"".join(parts), pos

    def offset_of(self, key: int) -> int:
        k = _as_key(key)
        if self.idx_path is None:
            raise FormatError(f"{self.rec_path}: random access needs the .idx file; none given")
        i = int(np.searchsorted(self._sorted_keys, k))
        if i >= self._sorted_keys.size or int(self._sorted_keys[i]) != k:
            raise UnknownNameError(
                f"{self.idx_path}: key {k} is not in the index ({self._sorted_keys.size} keys"
                + (
                    f", from {int(self._sorted_keys[0])} to {int(self._sorted_keys[-1])})"
                    if self._sorted_keys.size
                    else ")"
                )
            )
        return int(self._sorted_offsets[i])

    def read_idx(self, key: int) -> bytes:
        """The record stored under ``key``."""
        offset = self.offset_of(key)
        got = self._read_at(offset, f"key {int(key)}")
        if got is None:
            raise FormatError(
                f"{self.idx_path}: key {int(key)} points at the end of {self.rec_path}"
            )
        data, self._pos = got
        return data

    def read(self) -> bytes | None:
        """The next record in file order, or None at the end of the file."""
        got = self._read_at(self._pos, "sequential read")
        if got is None:
            return None
        data, self._pos = got
        return data

    def reset(self) -> None:
        self._pos = 0

    def tell(self) -> int:
        return self._pos

    @property
    def keys(self) -> list[int]:
        if self._keys_list is None:
            self._keys_list = self._keys.tolist()
        return self._keys_list

    @property
    def idx(self) -> dict[int, int]:
        """key -> offset (mxnet's ``idx`` attribute); builds a dict, prefer ``offset_of``."""
        return dict(zip(self._sorted_keys.tolist(), self._sorted_offsets.tolist()))

    def __contains__(self, key: object) -> bool:
        try:
            self.offset_of(key)  # type: ignore[arg-type]
        except (UnknownNameError, FacelabTypeError, FormatError):
            return False
        return True

    def __len__(self) -> int:
        return int(self._keys.size)

    def __iter__(self) -> Iterator[bytes]:
        pos = 0
        while True:
            got = self._read_at(pos, "iteration")
            if got is None:
                return
            data, pos = got
            yield data

    def __repr__(self) -> str:
        return f"MXRecordReader({str(self.rec_path)!r}, {str(self.idx_path)!r}, keys={len(self)})"


# --------------------------------------------------------------------------------------------
# writer


class MXRecordWriter:
    """Writer of ``.rec`` (+ ``.idx``) files byte-identical to mxnet/dmlc-core's.

    ``write(buf)`` appends a record and returns its offset; ``write_idx(key, buf)`` also logs
    ``key<TAB>offset`` in the ``.idx`` (mxnet ``MXIndexedRecordIO.write_idx``).
    """

    def __init__(self, rec: str | os.PathLike[str], idx: str | os.PathLike[str] | None = None):
        self.rec_path = Path(rec)
        self.idx_path = None if idx is None else Path(idx)
        self._rec = open(self.rec_path, "wb")
        self._idx = None if self.idx_path is None else open(self.idx_path, "w", encoding="ascii")
        self._pos = 0
        self._keys: set[int] = set()

    def tell(self) -> int:
        return self._pos

    def write(self, buf: bytes | bytearray | memoryview) -> int:
        if self._rec is None:
            raise ValueError(f"{self.rec_path}: writer is closed")
        framed = frame_record(buf)
        offset = self._pos
        self._rec.write(framed)
        self._pos += len(framed)
        return offset

    def write_idx(self, key: int, buf: bytes | bytearray | memoryview) -> None:
        k = _as_key(key)
        if self._idx is None:
            raise FormatError(f"{self.rec_path}: write_idx needs an .idx path; none given")
        if k in self._keys:
            raise FormatError(f"{self.idx_path}: key {k} written twice")
        offset = self.write(buf)
        self._idx.write(f"{k}\t{offset}\n")
        self._keys.add(k)

    def close(self) -> None:
        if self._rec is not None:
            self._rec.close()
            self._rec = None
        if self._idx is not None:
            self._idx.close()
            self._idx = None

    def __enter__(self) -> MXRecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# insightface training sets


def read_property(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """``property`` file -> ``(num_classes, height, width)``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii").strip()
        nums = tuple(int(v) for v in text.split(","))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{path}: expected 'num_classes,height,width': {exc}") from exc
    if len(nums) != 3 or min(nums) <= 0:
        raise FormatError(f"{path}: expected 'num_classes,height,width', got {text!r}")
    return nums  # type: ignore[return-value]


def _label_to_int(label: Any, source: str) -> int:
    value = float(label) if isinstance(label, numbers.Number) else float(np.asarray(label)[0])
    if not np.isfinite(value) or value != int(value) or value < 0:
        raise FormatError(f"{source}: expected a non-negative integral class label, got {value}")
    return int(value)


@dataclass(frozen=True)
class RecordLayout:
    """What record 0 of an insightface ``train.rec`` says."""

    image_keys: np.ndarray  # int64 keys of the image records
    identity_range: tuple[int, int] | None  # [id_start, id_end) keys of identity records

    @property
    def num_images(self) -> int:
        return int(self.image_keys.size)

    @property
    def num_classes(self) -> int | None:
        r = self.identity_range
        return None if r is None else r[1] - r[0]


def read_layout(reader: MXRecordReader) -> RecordLayout:
    """insightface's reading of record 0: ``flag > 0`` -> images are keys ``1..label[0]-1`` and
    identities ``label[0]..label[1]-1``; otherwise (or without record 0) every key is an image."""
    if 0 not in reader:
        return RecordLayout(np.asarray(reader.keys, dtype=np.int64), None)
    header, _ = unpack(reader.read_idx(0), f"{reader.rec_path} key 0")
    if header.flag <= 0:
        return RecordLayout(np.asarray(reader.keys, dtype=np.int64), None)
    lab = np.asarray(header.label, dtype=np.float64)
    if lab.size < 2 or not np.all(np.isfinite(lab[:2])):
        raise FormatError(f"{reader.rec_path} key 0: expected label [id_start, id_end], got {lab}")
    id_start, id_end = int(lab[0]), int(lab[1])
    if id_start < 1 or id_end < id_start:
        raise FormatError(
            f"{reader.rec_path} key 0: expected 1 <= id_start <= id_end, got [{id_start}, {id_end}]"
        )
    image_keys = np.arange(1, id_start, dtype=np.int64)
    missing = image_keys[~np.isin(image_keys, reader._sorted_keys)]
    if missing.size:
        raise FormatError(
            f"{reader.idx_path}: record 0 announces images 1..{id_start - 1}, but {missing.size} "
            f"keys are missing from the index (first: {missing[:5].tolist()})"
        )
    return RecordLayout(image_keys, (id_start, id_end))


class MXFaceDataset(Dataset):
    """insightface's ``MXFaceDataset``: ``root/train.rec`` + ``root/train.idx`` ->
    ``(image, label)``.

    Record 0 gives the image key range (else every key is an image); the label is the header
    label (the first value when it is an array) as an int64 tensor; the image is decoded to
    float32 ``(3, H, W)`` in [-1, 1], checked against ``image_size`` (default: the ``property``
    file's, else 112x112), then passed through ``transform`` when given.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Transform | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> None:
        self.root = Path(root)
        rec, idx = self.root / TRAIN_REC, self.root / TRAIN_IDX
        for p in (rec, idx):
            if not p.is_file():
                raise FormatError(f"{p}: missing; MXFaceDataset expects train.rec and train.idx")
        self.transform = transform
        self.reader = MXRecordReader(rec, idx)
        layout = read_layout(self.reader)
        if layout.num_images == 0:
            raise FormatError(f"{rec}: empty dataset, no image record")
        self.imgidx = layout.image_keys
        self.header0 = layout.identity_range
        self._num_classes = layout.num_classes
        prop = self.root / PROPERTY
        if prop.is_file():
            classes, h, w = read_property(prop)
            if self._num_classes is not None and classes != self._num_classes:
                raise FormatError(
                    f"{prop}: says {classes} classes, record 0 of {rec} says {self._num_classes}"
                )
            self._num_classes = classes
            image_size = image_size or (h, w)
        self.image_size = tuple(image_size or DEFAULT_IMAGE_SIZE)

    @property
    def num_classes(self) -> int | None:
        return self._num_classes

    def __len__(self) -> int:
        return len(self.imgidx)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = int(self.imgidx[index])
        source = f"{self.reader.rec_path} key {key}"
        header, img = unpack(self.reader.read_idx(key), source)
        label = _label_to_int(header.label, source)
        image = decode_image(img, source)
        if tuple(image.shape[1:]) != self.image_size:
            raise ShapeError(
                f"{source}: expected a {self.image_size[0]}x{self.image_size[1]} image, got "
                f"{image.shape[1]}x{image.shape[2]}"
            )
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.tensor(label, dtype=torch.int64)


# --------------------------------------------------------------------------------------------
# identity folders <-> train.rec


@dataclass(frozen=True)
class PackSummary:
    num_images: int
    num_classes: int
    image_size: tuple[int, int]
    rec: Path
    idx: Path


def _image_size_of(data: bytes, source: str) -> tuple[int, int]:
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.size[1], im.size[0]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise FormatError(f"{source}: cannot decode image: {type(exc).__name__}: {exc}") from exc


def _check_out_dir(out: Path, names: tuple[str, ...], overwrite: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    clash = [n for n in names if (out / n).exists()]
    if clash and not overwrite:
        raise FormatError(
            f"{out}: {', '.join(clash)} already exist; pass overwrite=True (--overwrite) to replace"
        )


def pack_identity_folders(
    folder: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    index_file: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> PackSummary:
    """Identity folders -> ``out/train.rec``, ``train.idx``, ``property`` (insightface layout:
    record 0, image records 1..N with the label in the header, identity records) and
    ``train.lst`` (mxnet im2rec list ``key<TAB>label<TAB>relative path``, which ``unpack``
    uses to restore the names).

    The encoded image bytes are stored as they are (no re-encoding); every image must decode
    and all must have the same size. Files are written under temporary names and renamed at
    the end, so a failed pack leaves no half-written ``train.rec``.
    """
    from facelab.core.progress import progress_bar

    ds = IdentityFolderDataset(folder, index_file=index_file)
    out = Path(out)
    names = (TRAIN_REC, TRAIN_IDX, PROPERTY, TRAIN_LST)
    _check_out_dir(out, names, overwrite)
    tmp = {n: out / f".{n}.partial" for n in names}
    n_img, n_cls = len(ds), ds.num_classes
    id_start = n_img + 1
    size: tuple[int, int] | None = None
    first_path = ""
    try:
        with (
            MXRecordWriter(tmp[TRAIN_REC], tmp[TRAIN_IDX]) as w,
            open(tmp[TRAIN_LST], "w", encoding="utf-8") as lst,
        ):
            w.write_idx(0, pack(IRHeader(0, [id_start, id_start + n_cls], 0, 0), b""))
            for key, ((path, label), rel) in enumerate(
                progress_bar(
                    list(zip(ds.samples, ds.relative_paths)),
                    desc="pack",
                    unit="img",
                    disable=not progress,
                ),
                start=1,
            ):
                data = read_file_bytes(path)
                hw = _image_size_of(data, str(path))
                if size is None:
                    size, first_path = hw, str(path)
                elif hw != size:
                    raise ShapeError(
                        f"{path}: image is {hw[0]}x{hw[1]}, but {first_path} is "
                        f"{size[0]}x{size[1]}; a .rec holds images of one size (align first)"
                    )
                w.write_idx(key, pack(IRHeader(0, float(label), key, 0), data))
                if "\t" in rel or "\n" in rel:
                    raise FormatError(f"{path}: file names with tabs or newlines cannot be listed")
                lst.write(f"{key}\t{label}\t{rel}\n")
            for c, (start, end) in enumerate(identity_ranges(ds.labels.tolist())):
                key = id_start + c
                w.write_idx(key, pack(IRHeader(0, [start + 1, end + 1], key, 0), b""))
        assert size is not None
        tmp[PROPERTY].write_text(f"{n_cls},{size[0]},{size[1]}", encoding="ascii")
        for n in names:
            os.replace(tmp[n], out / n)
    finally:
        for p in tmp.values():
            p.unlink(missing_ok=True)
    return PackSummary(n_img, n_cls, size, out / TRAIN_REC, out / TRAIN_IDX)


_FORMAT_EXT = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif"}


def _image_ext(data: bytes, source: str) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return ".png"
    import io

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or ""
    except (OSError, SyntaxError, ValueError) as exc:
        raise FormatError(f"{source}: cannot identify the image format: {exc}") from exc
    if fmt in _FORMAT_EXT:
        return _FORMAT_EXT[fmt]
    if fmt in ("PPM",):
        return ".ppm"
    raise FormatError(f"{source}: unsupported image format {fmt!r}")


def _read_lst(path: Path) -> dict[int, str]:
    names: dict[int, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        try:
            key = int(parts[0])
        except ValueError:
            raise FormatError(f"{path} line {n}: expected 'key<TAB>label<TAB>path'") from None
        rel = PurePosixPath(parts[-1])
        if len(parts) < 3 or rel.is_absolute() or ".." in rel.parts or len(rel.parts) < 2:
            raise FormatError(
                f"{path} line {n}: expected 'key<TAB>label<TAB>identity/image' with a relative "
                f"path, got {line[:120]!r}"
            )
        names[key] = str(rel)
    return names


@dataclass(frozen=True)
class UnpackSummary:
    num_images: int
    num_classes: int
    out: Path


def unpack_to_folders(
    rec_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: bool = False,
) -> UnpackSummary:
    """``rec_dir/train.rec`` (+ ``.idx``) -> identity folders under ``out``.

    Image bytes are written unchanged. File names come from ``train.lst`` when it is there;
    otherwise each image goes to ``out/<label, zero-padded>/<key>.<ext>`` (zero padding keeps
    the folder order equal to the label order, so packing the result again gives the same
    labels).
    """
    from facelab.core.progress import progress_bar

    rec_dir, out = Path(rec_dir), Path(out)
    rec, idx = rec_dir / TRAIN_REC, rec_dir / TRAIN_IDX
    for p in (rec, idx):
        if not p.is_file():
            raise FormatError(f"{p}: missing; unpack expects a folder with train.rec and train.idx")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FormatError(f"{out}: not empty; pass overwrite=True (--overwrite) to write into it")
    names = _read_lst(rec_dir / TRAIN_LST) if (rec_dir / TRAIN_LST).is_file() else {}
    out.mkdir(parents=True, exist_ok=True)
    root = out.resolve()
    with MXRecordReader(rec, idx) as reader:
        layout = read_layout(reader)
        keys = layout.image_keys.tolist()
        classes = layout.num_classes
        if classes is None:  # no record 0: one pass over the headers for the label count
            classes = 1 + max(
                _label_to_int(
                    unpack(reader.read_idx(k), f"{rec} key {k}")[0].label, f"{rec} key {k}"
                )
                for k in keys
            )
        width = len(str(max(classes - 1, 0)))
        labels_seen: set[int] = set()
        for key in progress_bar(keys, desc="unpack", unit="img", disable=not progress):
            source = f"{rec} key {key}"
            header, img = unpack(reader.read_idx(key), source)
            label = _label_to_int(header.label, source)
            rel = names.get(key) or f"{label:0{width}d}/{key}{_image_ext(img, source)}"
            dest = out / rel
            if root not in dest.resolve().parents:
                raise FormatError(f"{source}: target path {rel!r} leaves {out}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(img)
            labels_seen.add(label)
    return UnpackSummary(len(keys), len(labels_seen), out)
