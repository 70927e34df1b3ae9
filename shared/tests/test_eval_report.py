"""ROC/DET plots and the EvalReport markdown/JSON."""

import json

import numpy as np
import pytest
from PIL import Image

from facelab.core.errors import FacelabTypeError, ShapeError
from facelab.core.eval import EvalReport, identification, plot_det, plot_roc, roc, verify
from facelab.core.eval.plots import thin


def _curve(seed, n=4000, sep=2.0):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    return roc(rng.normal(sep * y, 1.0), y)


def test_plots_are_nonempty_pngs(tmp_path):
    curves = {"model a": _curve(0), "model b": _curve(1, sep=1.0)}
    for fn, name in ((plot_roc, "roc.png"), (plot_det, "det.png")):
        path = fn(curves, tmp_path / "sub" / name, title=name)
        assert path.is_file() and path.stat().st_size > 5000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
        assert arr.std() > 5  # something was drawn
    # a single curve, linear axes, marked operating points
    p = plot_roc(_curve(2), tmp_path / "one.png", log_fpr=False, fpr_range=(0, 1), mark_fars=[0.1])
    assert p.stat().st_size > 5000


def test_plot_bad_inputs(tmp_path):
    with pytest.raises(FacelabTypeError, match="curves"):
        plot_roc({}, tmp_path / "x.png")
    with pytest.raises(FacelabTypeError, match="curves"):
        plot_det({"a": (np.zeros(3), np.zeros(3))}, tmp_path / "x.png")
    with pytest.raises(ShapeError, match="rate_range"):
        plot_det(_curve(0), tmp_path / "x.png", rate_range=(0, 0.5))


def test_thin_keeps_upper_envelope():
    fpr = np.r_[0.0, np.repeat(np.linspace(1e-6, 1, 50000), 2)]
    tpr = np.r_[0.0, np.sort(np.random.default_rng(0).random(100000))]
    i = thin(fpr, tpr, max_points=500)
    assert i.size <= 502 and i[0] == 0 and i[-1] == fpr.size - 1
    # every kept index is the last one of its FPR run (the highest TPR there)
    last_of_run = np.r_[fpr[1:] != fpr[:-1], True]
    assert last_of_run[i[1:]].all()


def test_report_markdown_and_json(tmp_path):
    rng = np.random.default_rng(0)
    same = np.tile(np.r_[np.ones(10, bool), np.zeros(10, bool)], 10)
    a = rng.normal(size=(200, 8))
    b = np.where(same[:, None], a + 0.7 * rng.normal(size=(200, 8)), rng.normal(size=(200, 8)))
    res = verify(a, b, same)
    rep = EvalReport(title="test run", settings={"flip": True}, notes=["a note"])
    rep.add_verification("lfw", res)
    rep.add_tar_at_far("IJBC", {1e-4: 0.9123, 1e-3: 0.95}, pairs=10)
    g = rng.normal(size=(5, 4))
    ident = identification(
        np.r_[g, rng.normal(size=(3, 4))], np.arange(8), g, np.arange(5), fpirs=(0.5,)
    )
    rep.add_identification("1:N", ident)
    md = rep.to_markdown()
    assert md.startswith("# test run")
    assert f"{100 * res.accuracy:.2f}" in md and "accuracy (%)" in md
    assert "TAR@FAR=1e-4 (%)" in md and "91.23" in md
    assert "rank-1 (%)" in md and "TPIR@FPIR=0.5 (%)" in md
    assert "- flip: True" in md and "- a note" in md
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(lines) == 2 + 3  # header, separator, 3 rows
    assert all(ln.count("|") == lines[0].count("|") for ln in lines)
    doc = json.loads(rep.to_json())
    assert doc["rows"][0]["accuracy"] == res.accuracy  # raw fraction in JSON
    assert np.isnan(res.val) or doc["rows"][0]["VAL@FAR=0.001"] == res.val
    assert doc["details"]["lfw"]["nfolds"] == 10
    md_path, js_path = rep.save(tmp_path / "out")
    assert md_path.read_text() == md and json.loads(js_path.read_text()) == doc
