import numpy as np
import pytest
import torch
from PIL import Image

from facelab.core.data.folders import (
    IdentityFolderDataset,
    decode_image,
    read_index,
    write_index,
)
from facelab.core.errors import FormatError


def save(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def to_ref(arr):
    """Independent [-1, 1] conversion: (x / 255 - 0.5) / 0.5, CHW."""
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return ((arr.astype(np.float64) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1)


@pytest.fixture
def tree(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    layout = {"zed": ["b.png", "a.png"], "amy": ["x.png"], "bob": ["sub/deep.png", "k.bmp"]}
    for ident, files in layout.items():
        for f in files:
            arr = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
            save(tmp_path / "root" / ident / f, arr)
            arrays[f"{ident}/{f}"] = arr
    gray = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    save(tmp_path / "root" / "amy" / "gray.png", gray)
    arrays["amy/gray.png"] = gray
    (tmp_path / "root" / "amy" / "notes.txt").write_text("not an image")
    (tmp_path / "root" / ".hidden").mkdir()
    return tmp_path / "root", arrays


def test_scan_classes_labels_and_pixels(tree):
    root, arrays = tree
    ds = IdentityFolderDataset(root)
    assert ds.classes == ["amy", "bob", "zed"]
    expected = sorted(arrays)  # labels follow sorted folder names; files sorted inside
    assert [str(p.relative_to(root).as_posix()) for p, _ in ds.samples] == expected
    label_of = {"amy": 0, "bob": 1, "zed": 2}
    assert ds.labels.tolist() == [label_of[p.split("/")[0]] for p in expected]
    assert ds.labels.dtype == torch.int64 and len(ds) == 6
    for i, rel in enumerate(expected):
        img, lab = ds[i]
        assert img.dtype == torch.float32 and img.shape == (3, 9, 7)
        np.testing.assert_allclose(img.numpy(), to_ref(arrays[rel]), atol=1e-6)
        assert int(lab) == label_of[rel.split("/")[0]] and lab.dtype == torch.int64
    assert ds.class_counts().tolist() == [2, 2, 2]


def test_transform_is_applied_to_the_tensor(tree):
    root, arrays = tree
    ds = IdentityFolderDataset(root, transform=lambda x: x.flip(-1))
    img, _ = ds[0]
    np.testing.assert_allclose(img.numpy(), to_ref(arrays["amy/gray.png"])[..., ::-1], atol=1e-6)


def test_index_file_matches_scan_and_regroups(tree, tmp_path):
    root, _ = tree
    idx = tmp_path / "index.txt"
    assert write_index(root, idx) == 6
    scan = IdentityFolderDataset(root)
    from_index = IdentityFolderDataset(root, index_file=idx)
    assert from_index.samples == scan.samples and from_index.classes == scan.classes
    # an unsorted index still gives contiguous label groups and the same class order
    lines = idx.read_text().splitlines()
    idx.write_text("# comment\n\n" + "\n".join(reversed(lines)) + "\n")
    ds = IdentityFolderDataset(root, index_file=idx)
    assert ds.classes == scan.classes
    assert ds.labels.tolist() == sorted(ds.labels.tolist())
    assert sorted(map(str, ds.samples)) == sorted(map(str, scan.samples))


def test_index_file_errors(tree, tmp_path):
    root, _ = tree
    idx = tmp_path / "index.txt"
    idx.write_text("amy/x.png\n../etc/passwd.png\n")
    with pytest.raises(FormatError, match=r"index\.txt line 2: expected a relative path"):
        read_index(idx)
    idx.write_text("amy/x.png\namy/x.png\n")
    with pytest.raises(
        FormatError, match=r"line 2: 'amy/x.png' is listed twice \(first on line 1\)"
    ):
        read_index(idx)
    idx.write_text("\n# only comments\n")
    with pytest.raises(FormatError, match="empty dataset"):
        IdentityFolderDataset(root, index_file=idx)
    idx.write_text("amy/missing.png\n")
    ds = IdentityFolderDataset(root, index_file=idx)
    with pytest.raises(FormatError, match=r"amy/missing\.png: cannot read image file"):
        ds[0]


def test_empty_and_malformed_trees(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FormatError, match="empty dataset"):
        IdentityFolderDataset(tmp_path / "empty")
    with pytest.raises(FormatError, match="expected a directory"):
        IdentityFolderDataset(tmp_path / "nope")
    (tmp_path / "t" / "a").mkdir(parents=True)
    save(tmp_path / "t" / "b" / "1.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(FormatError, match=r"t/a: identity folder contains no image"):
        IdentityFolderDataset(tmp_path / "t")
    (tmp_path / "t" / "a").rmdir()
    save(tmp_path / "t" / "stray.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(FormatError, match=r"stray\.png: image lies directly in the dataset root"):
        IdentityFolderDataset(tmp_path / "t")


def test_unreadable_images_name_the_file(tmp_path):
    save(tmp_path / "r" / "a" / "ok.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "r" / "a" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    good = (tmp_path / "r" / "a" / "ok.png").read_bytes()
    (tmp_path / "r" / "a" / "cut.png").write_bytes(good[: len(good) // 2])
    ds = IdentityFolderDataset(tmp_path / "r")
    names = [p.name for p, _ in ds.samples]
    assert names == ["bad.jpg", "cut.png", "ok.png"]
    with pytest.raises(FormatError, match=r"a/bad\.jpg: cannot decode image"):
        ds[0]
    with pytest.raises(FormatError, match=r"a/cut\.png: cannot decode image"):
        ds[1]
    assert ds[2][0].shape == (3, 4, 4)
    with pytest.raises(FormatError, match="where: cannot decode"):
        decode_image(b"", "where")
