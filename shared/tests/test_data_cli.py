import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from facelab.core import cli as core_cli
from facelab.core.data.cli import main
from facelab.core.data.verification import write_bin


def write_tree(root):
    rng = np.random.default_rng(0)
    arrays = {}
    for ident, n in (("anna", 2), ("ben", 3), ("cleo", 1)):
        (root / ident).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / ident / f"p{i}.png")
            arrays[f"{ident}/p{i}.png"] = arr
    return arrays


def files_of(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_pack_unpack_round_trip(tmp_path, capsys):
    src = tmp_path / "src"
    arrays = write_tree(src)
    assert main(["pack", str(src), str(tmp_path / "rec")]) == 0
    assert "packed 6 images of 3 identities (24x20)" in capsys.readouterr().out
    assert (tmp_path / "rec" / "property").read_text() == "3,24,20"
    # through the top-level `facelab` command (entry point registered in pyproject)
    assert core_cli.main(["data", "unpack", str(tmp_path / "rec"), str(tmp_path / "out")]) == 0
    assert "unpacked 6 images of 3 identities" in capsys.readouterr().out
    assert files_of(tmp_path / "out") == files_of(src)  # names and bytes restored exactly

    # without train.lst: folders named by zero-padded label, images decode to the same pixels
    (tmp_path / "rec" / "train.lst").unlink()
    assert main(["unpack", str(tmp_path / "rec"), str(tmp_path / "out2")]) == 0
    got = {
        k: np.asarray(Image.open(tmp_path / "out2" / k).convert("RGB"))
        for k in files_of(tmp_path / "out2")
    }
    by_label = {}
    for k, arr in got.items():
        by_label.setdefault(k.split("/")[0], []).append(arr)
    assert sorted(by_label) == ["0", "1", "2"]
    for label, ident in enumerate(["anna", "ben", "cleo"]):
        want = [a for k, a in sorted(arrays.items()) if k.startswith(ident + "/")]
        have = by_label[str(label)]
        assert len(have) == len(want)
        for a, b in zip(sorted(have, key=bytes), sorted(want, key=bytes)):
            np.testing.assert_array_equal(a, b)

    # refusing to clobber, clear errors on stderr with exit code 1
    assert main(["pack", str(src), str(tmp_path / "rec")]) == 2
    assert "already exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["pack", str(tmp_path / "empty"), str(tmp_path / "rec3")]) == 2
    assert "empty dataset" in capsys.readouterr().err


def test_info_counts(tmp_path, capsys):
    src = tmp_path / "src"
    write_tree(src)
    assert main(["info", str(src)]) == 0
    out = capsys.readouterr().out
    assert "identities: 3" in out and "images: 6" in out and "min 1, max 3" in out
    assert main(["pack", str(src), str(tmp_path / "rec")]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "rec" / "train.rec")]) == 0
    out = capsys.readouterr().out
    assert "records: 10" in out and "images: 6" in out and "identities: 3" in out
    imgs = [(src / "anna" / f"p{i}.png").read_bytes() for i in range(2)] * 2
    write_bin(tmp_path / "v.bin", imgs, [True, False])
    assert main(["info", str(tmp_path / "v.bin")]) == 0
    out = capsys.readouterr().out
    assert "pairs: 2 (same 1, different 1)" in out and "images: 4" in out
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert main(["--help"]) == 0


def test_align_lists_images_without_face(tmp_path, capsys):
    src = tmp_path / "in"
    (src / "person").mkdir(parents=True)
    Image.fromarray(data.astronaut()).save(src / "person" / "astronaut.png")
    Image.fromarray(np.full((150, 120, 3), 200, np.uint8)).save(src / "person" / "blank.png")
    out = tmp_path / "aligned"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # MTCNN on a busy 2-core machine: see test_align.py
    try:
        rc = main(["align", str(src), str(out), "--batch-size", "2"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    printed = capsys.readouterr().out
    assert "aligned 1 of 2 images" in printed and "1 without a face" in printed
    assert sorted(files_of(out)) == ["no_face.txt", "person/astronaut.png"]
    assert (out / "no_face.txt").read_text().splitlines() == ["person/blank.png"]
    crop = Image.open(out / "person" / "astronaut.png")
    assert crop.size == (112, 112)


@pytest.mark.parametrize("argv", [["pack"], ["bogus"], ["align", "a"]])
def test_bad_usage_exits_nonzero(argv, capsys):
    assert main(argv) == 2
