"""Protocols (rules, gallery/probe separation, dual-eye pairing, files) and the metrics
(against brute-force and numpy references)."""

import math

import numpy as np
import pytest
import torch

from facelab.core.errors import FormatError, RangeError, ShapeError, UnknownNameError
from facelab.immeriris.generator import OcularConfig, OcularDataset
from facelab.immeriris.metrics import dprime, fuse, rank1, verification
from facelab.immeriris.protocols import (
    PROTOCOLS,
    build_protocols,
    probe_rule,
    protocol_table,
    quality_flags,
    read_protocol,
    write_protocol,
)


@pytest.fixture(scope="module")
def generated():
    ds = OcularDataset(5, OcularConfig(size=48, repeats=1), seed=3)
    q = {k: [] for k in ("eyelid", "eyelash", "dilation", "gaze", "specular", "blur")}
    for s in range(0, len(ds), 256):
        b = ds.render_truth(torch.arange(s, min(len(ds), s + 256)))
        for k in q:
            q[k].append(b.quality[k])
    return ds, {k: torch.cat(v) for k, v in q.items()}


def test_protocol_rules(generated):
    ds, q = generated
    md = ds.metadata()
    protos = build_protocols(md, q, image_size=48)
    assert set(protos) == {(p, e) for p in PROTOCOLS for e in ("left", "right", "dual")}
    f = quality_flags(q, md["gaze_point"], md["level"], image_size=48)
    gallery = protos[("Control", "left")].gallery
    for (name, eye), p in protos.items():
        if eye == "dual":
            assert p.gallery.shape[1] == 2 and bool((p.gallery[:, 1] == p.gallery[:, 0] + 1).all())
            assert bool((p.probe[:, 0] % 2 == 0).all())
            rule = probe_rule(name, f)
            assert bool(rule[p.probe[:, 0]].all() and rule[p.probe[:, 1]].all())
            assert torch.equal(p.probe_labels, md["subject"][p.probe[:, 0]])
            continue
        side = 0 if eye == "left" else 1
        assert bool((md["eye"][p.probe] == side).all()) and bool(
            (md["eye"][p.gallery] == side).all()
        )
        assert not bool(torch.isin(p.probe, p.gallery).any())  # probes never enrol
        assert bool(probe_rule(name, f)[p.probe].all())
        assert torch.equal(p.probe_labels, md["label"][p.probe])
        if eye == "left":
            assert torch.equal(p.gallery, gallery)  # one gallery for every protocol
    # the gallery: centre gaze, normal light, clean; at most 2 per eye
    assert bool((md["gaze_point"][gallery] == 4).all()) and bool(f["clean"][gallery].all())
    assert int(torch.bincount(md["label"][gallery]).max()) <= 2
    # isolated protocols isolate their factor
    gz = protos[("Gaze", "left")].probe
    assert bool(f["off_axis"][gz].all()) and bool(f["clean"][gz].all())
    lt = protos[("Light", "right")].probe
    assert bool(f["light_extreme"][lt].all()) and not bool(f["off_axis"][lt].any())
    # Any holds every non-gallery image of that eye
    assert len(protos[("Any", "left")].probe) == len(ds) // 2 - len(gallery)
    table = protocol_table(protos)
    assert "| Gaze | left |" in table
    with pytest.raises(UnknownNameError):
        probe_rule("Sideways", f)
    with pytest.raises(FormatError, match="quality"):
        build_protocols(md, {k: v[:-2] for k, v in q.items()})


def test_protocol_files_round_trip(tmp_path, generated):
    ds, q = generated
    md = ds.metadata()
    p = build_protocols(md, q, names=("Gaze",), eyes=("left",), image_size=48)[("Gaze", "left")]
    names = [f"img{i}.png" for i in range(len(ds))]
    path = write_protocol(
        tmp_path / "Gaze-left.tsv", p, names, md["subject"], md["eye"], md["capture"]
    )
    f = read_protocol(path)
    assert [f.images[i] for i in f.select("gallery", "left")] == [
        names[i] for i in p.gallery.tolist()
    ]
    assert [f.images[i] for i in f.select("probe", "left")] == [names[i] for i in p.probe.tolist()]
    dual = build_protocols(md, q, names=("Any",), eyes=("dual",), image_size=48)[("Any", "dual")]
    path2 = write_protocol(
        tmp_path / "Any-dual.tsv", dual, names, md["subject"], md["eye"], md["capture"]
    )
    pairs, _subjects = read_protocol(path2).dual_pairs("probe")
    assert pairs.shape == (len(dual.probe), 2)
    bad = tmp_path / "bad.tsv"
    bad.write_text(
        "role\timage\tsubject\teye\tcapture\ngallery\ta.png\tS1\tleft\t1\nprobe\tb.png\tS1\tmiddle\t2\n"
    )
    with pytest.raises(FormatError, match=r"bad.tsv:3: eye"):
        read_protocol(bad)
    bad.write_text("role\timage\tsubject\n")
    with pytest.raises(FormatError, match="header"):
        read_protocol(bad)
    bad.write_text("# only comments\n")
    with pytest.raises(FormatError, match="empty"):
        read_protocol(bad)
    bad.write_text("role\timage\tsubject\teye\tcapture\ngallery\ta.png\tS1\tleft\n")
    with pytest.raises(FormatError, match=r":2: expected 5"):
        read_protocol(bad)


def _brute_frr(gen, imp, far):
    """Every candidate threshold t (accept s >= t): the best FRR among those accepting at most
    far * n_imp impostors."""
    gen, imp = np.asarray(gen), np.asarray(imp)
    ts = np.append(np.unique(np.r_[gen, imp]), np.inf)
    ok = (imp[None, :] >= ts[:, None]).sum(1) <= far * imp.size
    frr = (gen[None, :] < ts[:, None]).mean(1)
    return float(frr[ok].min())


def test_verification_against_brute_force():
    g = torch.Generator().manual_seed(0)
    gal_lab = torch.arange(6).repeat_interleave(2)
    probe_lab = torch.arange(6).repeat(5)
    scores = torch.randn(12, 30, generator=g) + 2.5 * (gal_lab.view(-1, 1) == probe_lab.view(1, -1))
    v = verification(scores, gal_lab, probe_lab, fars=(1e-1, 1e-2))
    same = gal_lab.view(-1, 1) == probe_lab.view(1, -1)
    gen, imp = scores[same].tolist(), scores[~same].tolist()
    for far in (1e-1, 1e-2):
        assert v.frr[far] == pytest.approx(_brute_frr(gen, imp, far))
    assert v.support == {1e-1: 30, 1e-2: 3}
    assert v.n_genuine == 60 and v.n_impostor == 300
    gn, im = np.array(gen), np.array(imp)
    want = abs(gn.mean() - im.mean()) / math.sqrt((gn.var(ddof=1) + im.var(ddof=1)) / 2)
    assert v.dprime == pytest.approx(want)
    # rank-1 by a loop: best gallery entry per identity
    hits = 0
    for j in range(30):
        per = {c: max(float(scores[i, j]) for i in range(12) if gal_lab[i] == c) for c in range(6)}
        top = max(per.values())
        hits += per[int(probe_lab[j])] == top and list(per.values()).count(top) == 1
    assert v.rank1 == pytest.approx(hits / 30)
    # EER lies between the FRR and FAR curves' crossing: FRR at FAR = EER is about EER
    assert 0 < v.eer < 0.5
    with pytest.raises(ShapeError):
        verification(scores[:, :3], gal_lab, probe_lab)
    with pytest.raises(RangeError):
        verification(scores[:2, :2], torch.tensor([0, 0]), torch.tensor([0, 0]))


def test_nan_scores_reject_and_rank1_ties():
    s = torch.tensor([[0.9, float("nan")], [0.1, 0.2]])
    v = verification(s, torch.tensor([0, 1]), torch.tensor([0, 0]), fars=(0.5,))
    assert v.n_genuine == 2 and v.frr[0.5] == pytest.approx(0.5)
    tie = torch.tensor([[0.5], [0.5]])
    assert rank1(tie, torch.tensor([0, 1]), torch.tensor([0])) == 0.0
    with pytest.raises(RangeError):
        rank1(tie, torch.tensor([0, 1]), torch.tensor([5]))


def test_fuse_and_dprime():
    left, right = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    assert fuse(left, right).tolist() == [[0.5, 0.0]]
    with pytest.raises(ShapeError):
        fuse(left, right.T)
    assert dprime(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, -3.0])) == pytest.approx(
        4 / math.sqrt(2)
    )
    with pytest.raises(RangeError):
        dprime(torch.tensor([1.0]), torch.tensor([0.0, 1.0]))


def test_evaluate_writes_a_report(tmp_path):
    """The evaluation end to end on a tiny set (classical, oracle segmentation): every
    requested protocol x eye is scored, and report.md / report.json / DET plots are written."""
    import json

    from facelab.immeriris.evaluate import EvalConfig, evaluate

    cfg = EvalConfig(
        num_subjects=3,
        generator=OcularConfig(size=48, repeats=1),
        protocols=("Control", "Gaze"),
        eyes=("left", "dual"),
        segmentations=("oracle",),
    )
    report = evaluate(cfg, {}, log=lambda *a: None)
    res = report.results["classical (oracle seg.)"]
    assert set(res) == {"Control-left", "Control-dual", "Gaze-left", "Gaze-dual"}
    for v in res.values():
        assert 0.0 <= v.eer <= 1.0 and v.n_genuine > 0 and v.n_impostor > 0
    out = report.save(tmp_path / "r")
    doc = json.loads((out / "report.json").read_text())
    assert set(doc["results"]["classical (oracle seg.)"]) == set(res)
    assert "| Gaze | left |" in (out / "report.md").read_text()
    assert (out / "det_Gaze-left.png").stat().st_size > 1000
