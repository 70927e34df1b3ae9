"""Pair lists (img1;img2;label;group), .bin sets, and their bad inputs."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from facelab.core.errors import FormatError, ShapeError
from facelab.frcsyn import from_bin, load_eval_sets, read_pair_list


def write_images(root, n=6, size=16, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for k in range(n):
        px = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        p = root / f"p{k // 2}" / f"{k % 2}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(px).save(p)
        arrays[f"p{k // 2}/{k % 2}.png"] = px
    return arrays


def as_tensor(px):
    return torch.from_numpy(px).permute(2, 0, 1).float() / 127.5 - 1


def test_pair_list_with_labels_and_groups(tmp_path):
    px = write_images(tmp_path)
    (tmp_path / "pairs.txt").write_text(
        "# img1;img2;label;group\n"
        "p0/0.png;p0/1.png;1;A\n"
        "p0/0.png;p1/0.png;0;A\n"
        "\n"
        "p2/0.png; p2/1.png ;true;B\n"
        "p1/1.png;p2/0.png;0;B\n"
    )
    s = read_pair_list(tmp_path / "pairs.txt", image_size=16)
    assert s.name == "pairs" and s.num_pairs == 4
    assert s.images.shape == (6, 3, 16, 16)  # p0/0 and p2/0 are read once each
    assert s.issame.tolist() == [True, False, True, False]
    assert s.groups.tolist() == ["A", "A", "B", "B"]
    names = s.image_names
    for k, (a, b) in enumerate(zip(s.index1, s.index2)):
        first = ["p0/0.png", "p0/0.png", "p2/0.png", "p1/1.png"][k]
        second = ["p0/1.png", "p1/0.png", "p2/1.png", "p2/0.png"][k]
        assert names[a] == first and names[b] == second
        assert torch.equal(s.images[a], as_tensor(px[first]))
        assert torch.equal(s.images[b], as_tensor(px[second]))


def test_pair_list_with_separate_labels(tmp_path):
    write_images(tmp_path)
    (tmp_path / "cmp.txt").write_text("p0/0.png;p0/1.png\np0/0.png;p1/0.png\n")
    (tmp_path / "truth.txt").write_text("1\n0\n")
    (tmp_path / "groups.txt").write_text("x\ny\n")
    s = read_pair_list(
        tmp_path / "cmp.txt", labels=tmp_path / "truth.txt", groups=tmp_path / "groups.txt",
        image_size=16,
    )  # fmt: skip
    assert s.issame.tolist() == [True, False] and s.groups.tolist() == ["x", "y"]
    with pytest.raises(FormatError, match="no label"):
        read_pair_list(tmp_path / "cmp.txt", image_size=16)
    (tmp_path / "short.txt").write_text("1\n")
    with pytest.raises(FormatError, match="one line per pair"):
        read_pair_list(tmp_path / "cmp.txt", labels=tmp_path / "short.txt", image_size=16)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("p0/0.png;p9/0.png;1\np0/0.png;p1/0.png;0\n", r"line 1: image .*p9.*does not exist"),
        ("p0/0.png p0/1.png 1\n", "line 1: expected 'img1;img2"),
        ("p0/0.png;p0/1.png;maybe\n", "line 1: expected a label 0/1"),
        ("p0/0.png;p0/1.png;1;A\np0/0.png;p1/0.png;0\n", "line 2: expected a group field"),
        ("# nothing\n", "empty pair list"),
    ],
)
def test_pair_list_errors(tmp_path, text, match):
    write_images(tmp_path)
    (tmp_path / "pairs.txt").write_text(text)
    with pytest.raises(FormatError, match=match):
        read_pair_list(tmp_path / "pairs.txt", image_size=16)


def test_pair_list_image_size(tmp_path):
    write_images(tmp_path, size=20)
    (tmp_path / "pairs.txt").write_text("p0/0.png;p0/1.png;1\np0/0.png;p1/0.png;0\n")
    with pytest.raises(ShapeError, match="is 20x20, expected 16x16"):
        read_pair_list(tmp_path / "pairs.txt", image_size=16)
    s = read_pair_list(tmp_path / "pairs.txt", image_size=16, resize=True)
    assert s.images.shape == (3, 3, 16, 16) and s.images.abs().max() <= 1


def test_bin_set_and_named_specs(tmp_path):
    from facelab.core.data.verification import write_bin

    px = write_images(tmp_path, n=8, size=16)
    blobs = []
    for arr in px.values():
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    write_bin(tmp_path / "lfw.bin", blobs, [True, False, True, False])
    s = from_bin(tmp_path / "lfw.bin", 16)
    assert s.index1.tolist() == [0, 2, 4, 6] and s.index2.tolist() == [1, 3, 5, 7]
    assert torch.equal(s.images[3], as_tensor(list(px.values())[3]))
    (tmp_path / "pairs.txt").write_text("p0/0.png;p0/1.png;1\np0/0.png;p1/0.png;0\n")
    sets = load_eval_sets(
        (f"mylfw={tmp_path / 'lfw.bin'}",), (str(tmp_path / "pairs.txt"),), image_size=16
    )
    assert [x.name for x in sets] == ["mylfw", "pairs"]
    with pytest.raises(FormatError, match="names must be unique"):
        load_eval_sets(
            (str(tmp_path / "lfw.bin"),), (f"lfw={tmp_path / 'pairs.txt'}",), image_size=16
        )
