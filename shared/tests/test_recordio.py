import io
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from facelab.core.data import recordio as rio
from facelab.core.errors import FacelabTypeError, FormatError, ShapeError, UnknownNameError

M = struct.pack("<I", 0xCED7230A)  # the magic as it sits in the file (little endian)


def lrec(cflag, length):
    return struct.pack("<I", (cflag << 29) | length)


def reference_frame(payload: bytes) -> bytes:
    """Independent re-statement of dmlc-core RecordIOWriter::WriteRecord: split at every
    4-byte-aligned occurrence of the magic (dropping it), cflag 1 / 2 / 3, pad the end."""
    out = b""
    start = 0
    for i in range(0, len(payload) // 4 * 4, 4):
        if payload[i : i + 4] == M:
            out += M + lrec(1 if start == 0 else 2, i - start) + payload[start:i]
            start = i + 4
    out += M + lrec(3 if start else 0, len(payload) - start) + payload[start:]
    return out + b"\0" * (-len(payload) % 4)


def png_bytes(seed, size=(112, 112)):
    arr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue(), arr


def test_framing_byte_level_with_magic_inside():
    # magic at aligned offsets 4 and 12 (split there), and at unaligned offset 17 (kept)
    payload = b"AAAA" + M + b"BBBB" + M + b"C" + M + b"DDD"
    expected = (
        M + lrec(1, 4) + b"AAAA"
        + M + lrec(2, 4) + b"BBBB"
        + M + lrec(3, 8) + b"C" + M + b"DDD"
    )  # fmt: skip
    assert rio.frame_record(payload) == expected
    # magic first and last, odd length: an empty first part, an empty-but-one last part, padding
    payload2 = M + b"xy" + b"zz" + M + b"q"
    expected2 = M + lrec(1, 0) + M + lrec(2, 4) + b"xyzz" + M + lrec(3, 1) + b"q" + b"\0\0\0"
    assert rio.frame_record(payload2) == expected2
    # plain record: cflag 0, padding to 4
    assert rio.frame_record(b"hello") == M + lrec(0, 5) + b"hello\0\0\0"
    assert rio.frame_record(b"") == M + lrec(0, 0)


def test_framing_matches_reference_on_random_payloads():
    rng = np.random.default_rng(0)
    for n in range(40):
        payload = bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
        for pos in rng.integers(0, max(n - 3, 1), 3):  # plant magics, aligned or not
            if pos + 4 <= n:
                payload[pos : pos + 4] = M
        assert rio.frame_record(bytes(payload)) == reference_frame(bytes(payload)), n


def test_writer_reader_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    payloads = {}
    for key in range(30):
        data = bytearray(rng.integers(0, 256, int(rng.integers(0, 50)), dtype=np.uint8).tobytes())
        if key % 3 == 0 and len(data) >= 8:
            data[4:8] = M  # multi-part record
        if key % 5 == 0:
            data += M  # magic at the very end when aligned
        payloads[key * 7 + 3] = bytes(data)
    rec, idx = tmp_path / "a.rec", tmp_path / "a.idx"
    with rio.MXRecordWriter(rec, idx) as w:
        for k, v in payloads.items():
            w.write_idx(k, v)
    raw = rec.read_bytes()
    assert raw == b"".join(reference_frame(v) for v in payloads.values())
    lines = idx.read_text().splitlines()
    assert [int(line.split("\t")[0]) for line in lines] == list(payloads)
    with rio.MXRecordReader(rec, idx) as r:
        assert r.keys == list(payloads) and len(r) == len(payloads)
        order = list(payloads)
        rng.shuffle(order)
        for k in order:
            assert r.read_idx(k) == payloads[k]
        assert list(r) == list(payloads.values())  # iteration: file order
        r.reset()
        seq = []
        while (item := r.read()) is not None:
            seq.append(item)
        assert seq == list(payloads.values())
        # read() continues after read_idx like mxnet
        first, second = list(payloads)[:2]
        r.read_idx(first)
        assert r.read() == payloads[second]
        assert (first in r) and (10**9 not in r)
        with pytest.raises(UnknownNameError, match="key 1000000000 is not in the index"):
            r.read_idx(10**9)
        with pytest.raises(FacelabTypeError):
            r.read_idx("3")
        # pickles without its handle (DataLoader workers with spawn)
        clone = pickle.loads(pickle.dumps(r))
        assert clone.read_idx(order[0]) == payloads[order[0]]
        clone.close()


def test_reads_file_from_independent_hand_writer(tmp_path):
    """A .rec/.idx written with struct.pack only: one plain record, one split in three parts."""
    rec, idx = tmp_path / "h.rec", tmp_path / "h.idx"
    rec0 = b"plain-7"  # 7 bytes, padded with one zero
    part_a, part_b, part_c = b"head", b"midd", b"tail!"
    blob = M + lrec(0, 7) + rec0 + b"\0"
    off1 = len(blob)
    blob += M + lrec(1, 4) + part_a + M + lrec(2, 4) + part_b + M + lrec(3, 5) + part_c + b"\0" * 3
    off2 = len(blob)
    blob += M + lrec(0, 4) + b"last"
    rec.write_bytes(blob)
    idx.write_text(f"5\t0\n9\t{off1}\n2\t{off2}\n")
    with rio.MXRecordReader(rec, idx) as r:
        assert r.keys == [5, 9, 2]
        assert r.read_idx(9) == part_a + M + part_b + M + part_c
        assert r.read_idx(5) == rec0
        assert r.read_idx(2) == b"last"
        assert list(r) == [rec0, part_a + M + part_b + M + part_c, b"last"]


def test_irheader_conventions_against_struct():
    img = b"\x89PNG-not-really"
    scalar = rio.pack(rio.IRHeader(0, 7, 42, 0), img)
    assert scalar == struct.pack("<IfQQ", 0, 7.0, 42, 0) + img
    array = rio.pack(rio.IRHeader(0, [3.0, 8.5, -1.0], 11, 2), img)
    assert array == struct.pack("<IfQQ", 3, 0.0, 11, 2) + struct.pack("<3f", 3.0, 8.5, -1.0) + img
    h, body = rio.unpack(array)
    assert h.flag == 3 and h.id == 11 and h.id2 == 2 and body == img
    np.testing.assert_array_equal(h.label, np.array([3.0, 8.5, -1.0], dtype=np.float32))
    h, body = rio.unpack(struct.pack("<IfQQ", 0, 2.0, 5, 0) + b"xyz")
    assert (h.flag, h.label, h.id, body) == (0, 2.0, 5, b"xyz")
    with pytest.raises(FormatError, match="at least 24 bytes"):
        rio.unpack(b"\0" * 10)
    with pytest.raises(FormatError, match="announces 4 float32 labels"):
        rio.unpack(struct.pack("<IfQQ", 4, 0.0, 0, 0) + b"\0" * 8)
    with pytest.raises(ShapeError):
        rio.pack(rio.IRHeader(0, [], 0, 0), b"")


def make_tree(root, counts=(3, 1, 2), size=(112, 112)):
    arrays = {}
    for c, n in enumerate(counts):
        d = root / f"id{c:02d}"
        d.mkdir(parents=True)
        for i in range(n):
            data, arr = png_bytes(100 * c + i, size)
            (d / f"img{i}.png").write_bytes(data)
            arrays[f"id{c:02d}/img{i}.png"] = (c, arr)
    return arrays


def test_pack_layout_and_mxface_dataset(tmp_path):
    arrays = make_tree(tmp_path / "src")
    s = rio.pack_identity_folders(tmp_path / "src", tmp_path / "rec")
    assert (s.num_images, s.num_classes, s.image_size) == (6, 3, (112, 112))
    assert (tmp_path / "rec" / "property").read_text() == "3,112,112"
    # parse the records by hand (framing + IfQQ), not through the reader
    raw = (tmp_path / "rec" / "train.rec").read_bytes()
    offsets = {
        int(k): int(o)
        for k, o in (
            ln.split("\t") for ln in (tmp_path / "rec" / "train.idx").read_text().split("\n") if ln
        )
    }

    def record(key):
        magic, lr = struct.unpack_from("<II", raw, offsets[key])
        assert magic == 0xCED7230A and lr >> 29 == 0  # no magic in these payloads
        return raw[offsets[key] + 8 : offsets[key] + 8 + (lr & (2**29 - 1))]

    flag, _, _, _ = struct.unpack_from("<IfQQ", record(0))
    assert flag == 2 and struct.unpack_from("<2f", record(0), 24) == (7.0, 10.0)
    ranges = [struct.unpack_from("<2f", record(k), 24) for k in (7, 8, 9)]
    assert ranges == [(1.0, 4.0), (4.0, 5.0), (5.0, 7.0)]
    labels = [struct.unpack_from("<IfQQ", record(k))[1] for k in range(1, 7)]
    assert labels == [0.0, 0.0, 0.0, 1.0, 2.0, 2.0]

    ds = rio.MXFaceDataset(tmp_path / "rec")
    assert len(ds) == 6 and ds.num_classes == 3 and ds.header0 == (7, 10)
    expected = sorted(arrays.items())
    for i, (_, (label, arr)) in enumerate(expected):
        img, lab = ds[i]
        assert lab.dtype == torch.int64 and int(lab) == label
        ref = (arr.astype(np.float32) / 255.0 - 0.5) / 0.5
        np.testing.assert_allclose(img.numpy(), ref.transpose(2, 0, 1), atol=1e-6)
    # forked DataLoader workers after the parent has used the reader: same samples
    ds.reader.read_idx(3)
    loader = DataLoader(ds, batch_size=2, num_workers=2, shuffle=False)
    got = torch.cat([y for _, y in loader])
    assert got.tolist() == [0, 0, 0, 1, 2, 2]
    xs = torch.cat([x for x, _ in DataLoader(ds, batch_size=3, num_workers=2)])
    assert torch.equal(xs, torch.stack([ds[i][0] for i in range(6)]))


def test_mxface_dataset_label_array_and_no_record0(tmp_path):
    """Without record 0 every key is an image; an array label uses its first value."""
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    data, _ = png_bytes(3)
    with rio.MXRecordWriter(rec, idx) as w:
        w.write_idx(4, rio.pack(rio.IRHeader(0, [5.0, 0.25], 4, 0), data))
        w.write_idx(6, rio.pack(rio.IRHeader(0, 2, 6, 0), data))
    ds = rio.MXFaceDataset(tmp_path)
    assert len(ds) == 2 and ds.num_classes is None
    assert [int(ds[i][1]) for i in range(2)] == [5, 2]


def test_corrupted_rec_and_idx_errors(tmp_path):
    rec, idx = tmp_path / "c.rec", tmp_path / "c.idx"
    with rio.MXRecordWriter(rec, idx) as w:
        w.write_idx(0, b"a" * 16)
        w.write_idx(1, b"b" * 32)
    good = rec.read_bytes()
    # bad magic on record 1 (offset 24)
    rec.write_bytes(good[:24] + b"\0\0\0\0" + good[28:])
    with rio.MXRecordReader(rec, idx) as r:
        assert r.read_idx(0) == b"a" * 16
        with pytest.raises(FormatError, match=r"c\.rec: bad magic 0x00000000 at byte 24 \(key 1\)"):
            r.read_idx(1)
    # truncated: the last record loses its tail
    rec.write_bytes(good[:-5])
    with (
        rio.MXRecordReader(rec, idx) as r,
        pytest.raises(FormatError, match=r"c\.rec: truncated record at byte 24 \(key 1\)"),
    ):
        r.read_idx(1)
    # truncated inside a multi-part record: the continuation header is missing
    multi = rio.frame_record(b"xxxx" + M + b"yyyy")
    rec.write_bytes(multi[: len(multi) - 12])
    idx.write_text("0\t0\n")
    with (
        rio.MXRecordReader(rec, idx) as r,
        pytest.raises(FormatError, match=r"truncated record header at byte 12"),
    ):
        r.read_idx(0)
    # a continuation part where a record must start
    rec.write_bytes(M + lrec(2, 4) + b"zzzz")
    with rio.MXRecordReader(rec, idx) as r, pytest.raises(FormatError, match="continuation flag 2"):
        r.read_idx(0)
    # .idx pointing past the end of the .rec
    rec.write_bytes(good)
    idx.write_text(f"0\t0\n1\t{len(good) + 100}\n")
    with pytest.raises(
        FormatError, match=rf"c\.idx line 2: key 1 has offset {len(good) + 100}, past the end"
    ):
        rio.MXRecordReader(rec, idx)
    idx.write_text("0\t0\n\n1\tlots\n")
    with pytest.raises(FormatError, match=r"c\.idx line 3: expected 'integer key<TAB>byte offset'"):
        rio.MXRecordReader(rec, idx)
    idx.write_text("0\t0\n0\t24\n")
    with pytest.raises(FormatError, match=r"key 0 is listed twice \(lines 1 and 2\)"):
        rio.MXRecordReader(rec, idx)
    with pytest.raises(FormatError, match="cannot open RecordIO file"):
        rio.MXRecordReader(tmp_path / "missing.rec", idx)


def test_mxface_dataset_undecodable_image_names_key(tmp_path):
    with rio.MXRecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as w:
        w.write_idx(0, rio.pack(rio.IRHeader(0, [2, 3], 0, 0), b""))
        w.write_idx(1, rio.pack(rio.IRHeader(0, 0, 1, 0), b"not an image at all"))
        w.write_idx(2, rio.pack(rio.IRHeader(0, [1, 2], 2, 0), b""))
    ds = rio.MXFaceDataset(tmp_path)
    with pytest.raises(FormatError, match=r"train\.rec key 1: cannot decode image"):
        ds[0]
    # record 0 announcing images that the index lacks
    with rio.MXRecordWriter(tmp_path / "train.rec", tmp_path / "train.idx") as w:
        w.write_idx(0, rio.pack(rio.IRHeader(0, [4, 5], 0, 0), b""))
        w.write_idx(1, rio.pack(rio.IRHeader(0, 0, 1, 0), b""))
    with pytest.raises(FormatError, match=r"keys are missing from the index \(first: \[2, 3\]\)"):
        rio.MXFaceDataset(tmp_path)


def test_pack_rejects_mixed_sizes(tmp_path):
    make_tree(tmp_path / "src", counts=(1,))
    data, _ = png_bytes(9, (100, 100))
    (tmp_path / "src" / "id00" / "other.png").write_bytes(data)
    with pytest.raises(ShapeError, match=r"other\.png: image is 100x100"):
        rio.pack_identity_folders(tmp_path / "src", tmp_path / "rec")
    assert not (tmp_path / "rec" / "train.rec").exists()  # nothing half-written


def test_reader_reopens_its_file_in_a_forked_child(tmp_path):
    """A forked child must not share the parent's file description (and so its offset)."""
    import os

    rec, idx = tmp_path / "f.rec", tmp_path / "f.idx"
    with rio.MXRecordWriter(rec, idx) as w:
        for k in range(4):
            w.write_idx(k, bytes([k]) * 40)
    reader = rio.MXRecordReader(rec, idx)
    assert reader.read_idx(1) == bytes([1]) * 40
    parent_fd = reader._fh.fileno()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: read, report whether it used its own descriptor
        try:
            ok = reader.read_idx(2) == bytes([2]) * 40 and reader._fh.fileno() != parent_fd
            os.write(wfd, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(wfd)
    answer = os.read(rfd, 1)
    os.waitpid(pid, 0)
    os.close(rfd)
    assert answer == b"1"
    assert reader.read_idx(3) == bytes([3]) * 40 and reader._fh.fileno() == parent_fd
    reader.close()
