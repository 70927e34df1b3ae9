"""Shared fixtures: one torch thread (the test machine is shared: threads spinning against other
jobs make CPU kernels many times slower) and fake method packages on a temporary path."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

GOOD_ROW = (
    '{"method": NAME, "accuracy": 0.9, "accuracy_std": 0.01, "tar_at_far_1e-3": 0.5, '
    '"attack_ssim": 0.3, "attack_psnr": 14.0, "attack_identity_leakage": 0.2, '
    '"bytes_per_image": 1234, "train_time_s": 1.5, "infer_images_per_s": 100.0, "notes": "fake"}'
)

FAKES = {
    # rows with the optional ROC and a grid PNG written into the workdir
    "fakeok": f"""
        import math
        from pathlib import Path
        NAME = "fakeok"
        CALLS = []
        def run_quick(*, small=False, seed=0, workdir, progress=True):
            CALLS.append(dict(small=small, seed=seed, workdir=str(workdir), progress=progress))
            from PIL import Image
            Image.new("RGB", (8, 8)).save(Path(workdir) / "grid.png")
            row = {GOOD_ROW}
            row["roc"] = {{"fpr": [0.0, 0.1, 1.0], "tpr": [0.0, 0.6, 1.0]}}
            ablation = {GOOD_ROW}
            ablation.update(method="fakeok (ablation)", accuracy=math.nan, accuracy_std=math.nan)
            return [row, ablation]
        """,
    "fakefail": """
        def run_quick(*, small=False, seed=0, workdir, progress=True):
            raise RuntimeError("boom in training")
        """,
    "fakebadrow": """
        def run_quick(*, small=False, seed=0, workdir, progress=True):
            return [{"method": "fakebadrow", "accuracy": 0.5}]
        """,
    "fakenorun": """
        def something_else():
            return 1
        """,
    "fakeexit": """
        import os
        def run_quick(*, small=False, seed=0, workdir, progress=True):
            os._exit(3)  # the process dies: no exception to catch
        """,
    "fakeimporterror": """
        import facelab.core.this_module_does_not_exist  # noqa: F401
        """,
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fake_methods(tmp_path, monkeypatch):
    """Fake ``facelab.<name>.quick`` modules importable for the test; also a package without a
    quick module (``fakenoquick``)."""
    root = tmp_path / "fake_site"
    for name, body in FAKES.items():
        pkg = root / "facelab" / name
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "quick.py").write_text(textwrap.dedent(body))
    (root / "facelab" / "fakenoquick").mkdir(parents=True)
    (root / "facelab" / "fakenoquick" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in [m for m in sys.modules if m.split(".")[:2][-1] in (*FAKES, "fakenoquick")]:
        if name.startswith("facelab."):
            del sys.modules[name]


FAKE_FAMILIES = """
from facelab.benchmarks.families import FamilySection, Table, new_figure, save_figure


def run(*, level, seed, workdir, out, progress, **_):
    rows = [{"name": f"fake-{c}", "value": i + 1} for i, c in enumerate("abc")]
    fig, ax = new_figure()
    ax.plot([0, 1], [0, 1])
    return FamilySection(
        "fakefam",
        "Fake family",
        summary=f"fake summary {len(rows)} rows at level {level}",
        tables=[Table("fake table", [("name", "name"), ("value", "value")], rows)],
        plots=[save_figure(fig, out / "fakefam.png")],
        settings={"level": level, "seed": seed},
    )


def boom(**_):
    raise RuntimeError("family runner bug")
"""


@pytest.fixture
def fake_families(tmp_path, monkeypatch):
    """Families ``fakefam`` (a table and a plot) and ``fakefamfail`` (its runner raises)."""
    from facelab.benchmarks import families

    root = tmp_path / "fake_families"
    root.mkdir()
    (root / "bench_fake_family.py").write_text(FAKE_FAMILIES)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setitem(families.FAMILIES, "fakefam", ("Fake family", "bench_fake_family:run"))
    monkeypatch.setitem(
        families.FAMILIES, "fakefamfail", ("Failing family", "bench_fake_family:boom")
    )
    yield root
    sys.modules.pop("bench_fake_family", None)


@pytest.fixture(scope="session")
def tiny_real_data(tmp_path_factory) -> tuple[Path, Path]:
    return write_identity_tree_and_bin(tmp_path_factory.mktemp("realdata"))


def write_identity_tree_and_bin(root: Path, size: int = 32) -> tuple[Path, Path]:
    """A tiny aligned identity-folder tree (6 people x 4 images) and a tiny .bin of 40 pairs of
    other people, genuine and impostor alternating (every 10-fold fold holds both), both from
    toyfaces."""
    import io

    from PIL import Image

    from facelab.core.data.toyfaces import ToyFaces, make_pairs, to_uint8
    from facelab.core.data.verification import write_bin

    folders = ToyFaces(6, 4, size=size, seed=3).write_folders(root / "train")
    people = ToyFaces(8, 4, size=size, seed=3, identity_offset=1_000_000)
    i1, i2, same = make_pairs(people, 40, seed=1)
    alternate = torch.stack([torch.nonzero(same).flatten(), torch.nonzero(~same).flatten()], 1)
    i1, i2, same = i1[alternate.flatten()], i2[alternate.flatten()], same[alternate.flatten()]
    order = torch.stack([i1, i2], 1).flatten()
    u8 = to_uint8(people.render(order)).permute(0, 2, 3, 1).numpy()
    encoded = []
    for img in u8:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        encoded.append(buf.getvalue())
    path = root / "tiny.bin"
    write_bin(path, encoded, [bool(v) for v in same.tolist()])
    return folders, path
