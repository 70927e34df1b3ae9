import io
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from facelab.core.data.verification import load_bin, read_bin, read_pairs, write_bin
from facelab.core.errors import FormatError, ShapeError


def encoded(seed, size=(16, 12), fmt="PNG"):
    arr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue(), arr


def ref_tensor(arrs):
    x = np.stack(arrs).astype(np.float64)
    return ((x / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2)


def test_bin_round_trip(tmp_path):
    pairs = [encoded(i) for i in range(6)]
    issame = [True, False, True]
    path = tmp_path / "lfw.bin"
    write_bin(path, [b for b, _ in pairs], issame)
    # it is a plain pickle of (list of bytes, list of bool), as insightface writes it
    with open(path, "rb") as f:
        bins, flags = pickle.load(f)
    assert bins == [b for b, _ in pairs] and flags == issame
    images, same = load_bin(path, image_size=(16, 12))
    assert images.shape == (6, 3, 16, 12) and images.dtype == torch.float32
    np.testing.assert_allclose(images.numpy(), ref_tensor([a for _, a in pairs]), atol=1e-6)
    assert same.dtype == torch.bool and same.tolist() == issame


def test_malicious_pickles_are_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([Evil(), b"x"], [True]), protocol=2))
    with pytest.raises(
        FormatError, match=r"evil\.bin: .*refusing to load global '(posix|nt|os)\.system'"
    ):
        load_bin(path)
    assert not marker.exists()

    class EvalIt:
        def __reduce__(self):
            return (eval, ("__import__('os').getpid()",))

    path.write_bytes(pickle.dumps((EvalIt(), [True]), protocol=4))
    with pytest.raises(FormatError, match=r"refusing to load global 'builtins\.eval'"):
        read_bin(path)
    # the allowed _codecs.encode only with latin-1 (what bytes pickles at protocol 2 use)
    import _codecs

    class Codec:
        def __reduce__(self):
            return (_codecs.encode, ("x", "rot13"))

    path.write_bytes(pickle.dumps(([Codec(), b"y"], [True]), protocol=2))
    with pytest.raises(FormatError, match="only latin-1 is allowed"):
        read_bin(path)


def py2_style_pickle(bins, issame):
    """What Python 2's cPickle.dump(..., protocol=2) writes: str as BINSTRING, bools as
    NEWTRUE/NEWFALSE, written opcode by opcode."""
    out = b"\x80\x02(]("  # PROTO 2, MARK, EMPTY_LIST, MARK
    for b in bins:
        out += b"T" + struct.pack("<i", len(b)) + b  # BINSTRING (a py2 str)
    out += b"e]("  # APPENDS, EMPTY_LIST, MARK
    out += b"".join(b"\x88" if s else b"\x89" for s in issame)
    return out + b"et."  # APPENDS, TUPLE, STOP


def test_python2_pickle_loads_as_bytes(tmp_path):
    pairs = [encoded(10 + i, fmt="JPEG") for i in range(4)]
    raw = py2_style_pickle([b for b, _ in pairs], [False, True])
    with pytest.raises(UnicodeDecodeError):  # the default encoding cannot read it
        pickle.loads(raw)
    path = tmp_path / "py2.bin"
    path.write_bytes(raw)
    bins, issame = read_bin(path)
    assert bins == [b for b, _ in pairs] and issame == [False, True]
    images, same = load_bin(path, image_size=(16, 12))
    assert images.shape == (4, 3, 16, 12) and same.tolist() == [False, True]
    ref = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b, _ in pairs])
    np.testing.assert_allclose(images.numpy(), ref_tensor(list(ref)), atol=1e-6)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_bytearray_numpy_and_protocols(tmp_path, protocol):
    pairs = [encoded(20 + i)[0] for i in range(4)]
    bins = [bytearray(pairs[0]), pairs[1], np.frombuffer(pairs[2], np.uint8).copy(), pairs[3]]
    path = tmp_path / "mixed.bin"
    path.write_bytes(pickle.dumps((bins, np.array([True, False])), protocol=protocol))
    got, issame = read_bin(path)
    assert got == pairs and issame == [True, False]


def test_bad_bin_contents(tmp_path):
    a, _ = encoded(0)
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(([a, a, a], [True])))
    with pytest.raises(FormatError, match="expected 2 images per pair, got 3 images for 1 pairs"):
        read_bin(path)
    path.write_bytes(pickle.dumps(([a, 7], [True])))
    with pytest.raises(FormatError, match="image 1: expected encoded image bytes"):
        read_bin(path)
    path.write_bytes(pickle.dumps(([a, a], [1])))
    with pytest.raises(FormatError, match=r"issame\[0\]: expected a bool, got int"):
        read_bin(path)
    path.write_bytes(pickle.dumps(([a, a], [True]))[:-7])
    with pytest.raises(FormatError, match=r"bad\.bin: cannot load pickle"):
        read_bin(path)
    path.write_bytes(pickle.dumps(([a, b"garbage"], [True])))
    with pytest.raises(FormatError, match=r"bad\.bin image 1: cannot decode image"):
        load_bin(path, image_size=(16, 12))
    path.write_bytes(pickle.dumps(([a, a], [True])))
    with pytest.raises(ShapeError, match=r"bad\.bin image 0: expected 112x112, got 16x12"):
        load_bin(path)
    images, _ = load_bin(path, image_size=(8, 6), resize=True)
    assert images.shape == (2, 3, 8, 6) and images.abs().max() <= 1.0
    with pytest.raises(ShapeError, match="2 images per pair"):
        write_bin(tmp_path / "w.bin", [a], [True])
    with pytest.raises(FormatError, match="write_bin image 1: cannot decode"):
        write_bin(tmp_path / "w.bin", [a, b"nope"], [True])
    assert not (tmp_path / "w.bin").exists()


@pytest.fixture
def lfw(tmp_path):
    root = tmp_path / "lfw"
    for name, n in (("Ann_Lee", 3), ("Bo", 2), ("Cy_D", 1)):
        (root / name).mkdir(parents=True)
        for i in range(1, n + 1):
            (root / name / f"{name}_{i:04d}.jpg").write_bytes(encoded(i, fmt="JPEG")[0])
    return root


def test_read_pairs_lfw_format(lfw, tmp_path):
    txt = tmp_path / "pairs.txt"
    txt.write_text("2\t1\nAnn_Lee\t1\t3\nAnn_Lee\t2\tBo\t1\nBo\t1\t2\nCy_D\t1\tAnn_Lee\t2\n")
    pairs, issame = read_pairs(txt, lfw)
    assert issame == [True, False, True, False]
    assert pairs[0] == (lfw / "Ann_Lee/Ann_Lee_0001.jpg", lfw / "Ann_Lee/Ann_Lee_0003.jpg")
    assert pairs[1] == (lfw / "Ann_Lee/Ann_Lee_0002.jpg", lfw / "Bo/Bo_0001.jpg")
    assert pairs[3] == (lfw / "Cy_D/Cy_D_0001.jpg", lfw / "Ann_Lee/Ann_Lee_0002.jpg")
    # a single-number header (pairsDevTrain.txt style): n same + n different
    txt.write_text("1\nBo\t1\t2\nBo\t2\tCy_D\t1\n")
    assert read_pairs(txt, lfw)[1] == [True, False]


def test_read_pairs_errors(lfw, tmp_path):
    txt = tmp_path / "pairs.txt"
    txt.write_text("1\t1\nAnn_Lee\t1\t3\nBo\t1\tCy_D\t2\n")
    with pytest.raises(
        FormatError, match=r"pairs\.txt line 3: image .*Cy_D_0002\.jpg does not exist"
    ):
        read_pairs(txt, lfw)
    assert len(read_pairs(txt, lfw, check_exists=False)[0]) == 2
    txt.write_text("1\t2\nAnn_Lee\t1\t3\nBo\t1\tCy_D\t1\n")
    with pytest.raises(FormatError, match="announces 4 pairs, the file lists 2"):
        read_pairs(txt, lfw)
    txt.write_text("1\t1\nAnn_Lee\t1\nBo\t1\tCy_D\t1\n")
    with pytest.raises(FormatError, match=r"line 2: expected 'name i j' or 'name1 i name2 j'"):
        read_pairs(txt, lfw)
    txt.write_text("pairs\nBo\t1\t2\n")
    with pytest.raises(FormatError, match="line 1: expected a header"):
        read_pairs(txt, lfw)
