"""The sub-task checker: limits at exactly 500,000 / 500,001 images (counted from a manifest and
from an index file, no image written), real data in synthetic-only sub-tasks, the x.3 rules,
counting of folders / RecordIO, and the CLI's verdicts and errors."""

import json

import numpy as np
import pytest
from PIL import Image

from facelab.core.cli import main as facelab
from facelab.core.errors import FormatError
from facelab.frcsyn import (
    CASIA_WEBFACE_IMAGES,
    SUBTASKS,
    SubtaskError,
    check_subtask,
    count_source,
    read_manifest,
    write_manifest,
)


def manifest(tmp_path, name, **fields):
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(fields))
    return p


def index_file(path, n, per_id=50):
    path.write_text("".join(f"{i // per_id:05d}/{i % per_id:03d}.png\n" for i in range(n)))
    return path


def folders(root, ids=3, per=2, size=8):
    rng = np.random.default_rng(0)
    for k in range(ids):
        (root / f"id{k}").mkdir(parents=True)
        for j in range(per):
            px = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(px).save(root / f"id{k}" / f"{j}.png")
    return root


@pytest.mark.parametrize("sub", ["1.1", "2.1"])
def test_limit_from_manifest(tmp_path, sub):
    ok = check_subtask(sub, [manifest(tmp_path, "a", num_images=500_000, num_identities=10_000)])
    assert ok.ok and ok.synthetic_images == 500_000 and not ok.reasons
    bad = check_subtask(sub, [manifest(tmp_path, "b", num_images=500_001, num_identities=10_000)])
    assert not bad.ok
    assert any("500,001 synthetic images, 1 over" in r for r in bad.reasons)
    with pytest.raises(SubtaskError, match="500,001 synthetic images"):
        bad.raise_if_failed()
    unlimited = check_subtask(sub[0] + ".2", [tmp_path / "b.json"])
    assert unlimited.ok  # x.2: no limit


def test_limit_from_index_file(tmp_path):
    idx = index_file(tmp_path / "index.txt", 500_000)
    c = count_source(idx)
    assert (c.num_images, c.num_identities, c.kind) == (500_000, 10_000, "index")
    assert check_subtask("1.1", [c]).ok
    with idx.open("a") as f:
        f.write("99999/000.png\n")
    res = check_subtask("1.1", [idx])
    assert not res.ok and res.synthetic_images == 500_001


def test_limit_counts_every_source_together(tmp_path):
    a = manifest(tmp_path, "a", num_images=250_000, num_identities=5)
    b = manifest(tmp_path, "b", num_images=250_001, num_identities=5)
    assert not check_subtask("2.1", [a, b]).ok
    assert check_subtask("2.1", [a, manifest(tmp_path, "c", num_images=250_000)]).ok
    assert not check_subtask("2.1", [a, a]).ok  # the same set twice is not twice the data


def test_real_images_in_synthetic_only_subtasks(tmp_path):
    mixed = manifest(tmp_path, "m", num_images=1000, num_identities=20, real_images=10)
    for sub in ("1.1", "1.2", "2.1", "2.2"):
        res = check_subtask(sub, [mixed])
        assert not res.ok
        assert any(
            "declares 10 real images" in r and "synthetic images only" in r for r in res.reasons
        )
    src = manifest(tmp_path, "s", num_images=1000, source="mixed")
    assert any("some real images" in r for r in check_subtask("2.2", [src]).reasons)
    # x.3: real images inside a synthetic source count as real data
    res = check_subtask("1.3", [mixed])
    assert res.ok and (res.synthetic_images, res.real_images) == (990, 10)


def test_subtask3_rules(tmp_path):
    syn = manifest(tmp_path, "syn", num_images=500_000, num_identities=10_000, real_images=0)
    casia = manifest(
        tmp_path, "casia", num_images=CASIA_WEBFACE_IMAGES, num_identities=10_575, source="real"
    )
    res = check_subtask("2.3", [syn], [casia])
    assert res.ok and (res.synthetic_images, res.real_images) == (500_000, CASIA_WEBFACE_IMAGES)
    assert any("cannot be verified" in n for n in res.notes)
    big = manifest(tmp_path, "big", num_images=CASIA_WEBFACE_IMAGES + 1, source="real")
    assert any("allows CASIA-WebFace only" in r for r in check_subtask("2.3", [syn], [big]).reasons)
    # a synthetic set passed as the real part is refused
    fake = manifest(tmp_path, "fake", num_images=1000, real_images=0)
    assert any("declares a synthetic set" in r for r in check_subtask("1.3", [syn], [fake]).reasons)
    # real data in a synthetic-only sub-task
    assert any("allows no real data" in r for r in check_subtask("2.1", [syn], [casia]).reasons)
    assert not check_subtask("2.3", [], [casia]).ok  # x.3 still needs synthetic data


def test_counts_folders_recordio_and_manifest_scan(tmp_path):
    from facelab.core.data.recordio import pack_identity_folders

    root = folders(tmp_path / "faces", ids=3, per=2)
    c = count_source(root)
    assert (c.kind, c.num_images, c.num_identities) == ("folders", 6, 3)
    assert c.real_images is None and any(
        "no manifest" in n for n in check_subtask("1.1", [c]).notes
    )
    pack_identity_folders(root, tmp_path / "rec")
    r = count_source(tmp_path / "rec")
    assert (r.kind, r.num_images, r.num_identities) == ("recordio", 6, 3)
    assert count_source(tmp_path / "rec" / "train.rec").num_images == 6
    write_manifest(root / "manifest.json", 6, 3, generator="g")
    assert count_source(root).kind == "manifest"
    assert count_source(root, scan=True).notes  # the scan agrees
    write_manifest(root / "manifest.json", 7, 3)
    with pytest.raises(FormatError, match=r"says 7 images, but .* holds 6"):
        count_source(root, scan=True)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"num_identities": 3}, "expected the image count"),
        ({"num_images": -1}, "non-negative int"),
        ({"num_images": "10"}, "non-negative int"),
        ({"num_images": 5, "real_images": 6}, "more than num_images"),
        ({"num_images": 5, "source": "photos"}, "source: expected one of"),
        ({"num_images": 5, "source": "synthetic", "contains_real": True}, "disagree"),
    ],
)
def test_bad_manifests(tmp_path, fields, match):
    with pytest.raises(FormatError, match=match):
        read_manifest(manifest(tmp_path, "m", **fields))


def test_manifest_per_identity_entries(tmp_path):
    m = read_manifest(
        manifest(tmp_path, "m", identities=[{"num_images": 3}, {"images": ["a.png", "b.png"]}])
    )
    assert (m.num_images, m.num_identities, m.declares_real) == (5, 2, None)
    (tmp_path / "not.json").write_text("{oops")
    with pytest.raises(FormatError, match="expected a JSON manifest"):
        read_manifest(tmp_path / "not.json")


def test_manifest_of_the_synthesis_base(tmp_path):
    """The fields core's synthesis base (``facelab synth sample``) writes: no ``num_images``,
    but ``num_identities`` and ``images_per_identity``; identity folders (plus ``meta.json``,
    ``contexts.safetensors``) next to it; an unfinished identity in a hidden ``.partial-``
    folder."""
    root = folders(tmp_path / "gen", ids=3, per=2)
    for k in range(3):
        (root / f"id{k}" / "meta.json").write_text("{}")
    (root / "contexts.safetensors").write_bytes(b"x")
    # the layout generate_dataset writes: the run's shape under "run", the source on top
    plan = {"format_version": 1, "num_identities": 4, "images_per_identity": 2, "seed": 0}
    (root / "manifest.json").write_text(json.dumps({"run": plan, "source": "synthetic"}))
    m = read_manifest(root / "manifest.json")
    assert (m.num_images, m.num_identities, m.declares_real) == (8, 4, False)
    assert count_source(root / "manifest.json").num_images == 8  # a bare JSON: the plan
    (root / ".partial-id3").mkdir()
    with pytest.raises(FormatError, match="holds 3 finished identity folders"):
        count_source(root)  # the fourth identity is not finished
    (root / ".partial-id3").rename(root / "id3")
    folders(tmp_path / "more", ids=1, per=2)  # the fourth identity's images
    for f in (tmp_path / "more" / "id0").iterdir():
        f.rename(root / "id3" / f.name)
    c = count_source(root)
    assert (c.kind, c.num_images, c.num_identities) == ("manifest", 8, 4)
    assert any("every identity folder" in n for n in c.notes)
    assert count_source(root, scan=True).num_images == 8  # meta.json etc. are not images
    assert check_subtask("1.1", [root]).ok


def test_cli_check(tmp_path, capsys):
    ok = manifest(tmp_path, "ok", num_images=500_000, num_identities=10_000)
    assert facelab(["frcsyn", "check", "--subtask", "1.1", "--synthetic", str(ok)]) == 0
    assert "verdict: satisfies 1.1" in capsys.readouterr().out
    bad = manifest(tmp_path, "bad", num_images=10, real_images=2)
    assert facelab(["frcsyn", "check", "--subtask", "2.1", "--synthetic", str(bad), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and "real images" in out["reasons"][0]
    # bad input: one 'facelab frcsyn: error:' line and exit status 2
    assert facelab(["frcsyn", "check", "--subtask", "3.1", "--synthetic", str(ok)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("facelab frcsyn: error: subtask: expected one of")
    assert (
        facelab(["frcsyn", "check", "--subtask", "1.1", "--synthetic", str(tmp_path / "nope")]) == 2
    )
    assert "no such training source" in capsys.readouterr().err


def test_subtasks_as_data():
    assert sorted(SUBTASKS) == ["1.1", "1.2", "1.3", "2.1", "2.2", "2.3"]
    assert [SUBTASKS[k].synthetic_limit for k in ("1.1", "1.2", "1.3")] == [500_000, None, 500_000]
    assert [SUBTASKS[k].real_allowed for k in ("2.1", "2.2", "2.3")] == [False, False, True]
    assert {st.ranking for st in SUBTASKS.values() if st.task == 1} == {"TO"}
    assert {st.ranking for st in SUBTASKS.values() if st.task == 2} == {"AVG"}
