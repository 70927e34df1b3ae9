"""The biased toy set against toyfaces' own attributes, and the tendency measures against
plain loops."""

import numpy as np
import pytest
import torch

from facelab.core.data.toyfaces import ToyFaces
from facelab.core.errors import FacelabError
from facelab.steerface.tendency import attribute_rates, tendency_metrics
from facelab.steerface.toyset import ATTRIBUTES, TendencyToyConfig, build_tendency_set


def test_selection_matches_toyfaces_attributes_and_the_wanted_rates():
    cfg = TendencyToyConfig(
        identities=6, images_per_identity=10, attributes=("pose", "lighting"), embedding_dim=16
    )
    ts = build_tendency_set(cfg)
    n, m = 6, 10
    assert ts.images.shape == (n * m, 3, 16, 16) and ts.images.dtype == torch.uint8
    # independent check: re-read the chosen images' parameters from a fresh ToyFaces
    pool = ts.extra["pool_per_identity"]
    toy = ToyFaces(n, pool, size=32, seed=cfg.seed, difficulty=cfg.difficulty)
    idx = ts.labels * pool + ts.pool_index
    attrs = toy.batch_attributes(idx)
    for k, name in enumerate(cfg.attributes):
        src, thr, margin = ATTRIBUTES[name]
        v = attrs[src].double().numpy()
        on = ts.attributes[:, k].numpy()
        assert np.all(v[on] > thr + margin) and np.all(v[~on] < thr - margin)
    # per-identity rates: round(p_ik * M) with p_ik = rate + correlation * (b_ik - rate)
    b = ts.preferences.double()
    p = cfg.rate + cfg.correlation * (b - cfg.rate)
    want = torch.round(p * m) / m
    assert torch.allclose(ts.rates, want)
    assert (b.sum(0) == round(cfg.rate * n)).all()
    # embeddings: unit, and they carry the attribute cue (leak) along the attribute directions
    assert torch.allclose(ts.embeddings.norm(dim=1), torch.ones(n * m), atol=1e-5)
    proj = ts.embeddings @ ts.directions.T  # (N, K)
    s = ts.attributes.float() * 2 - 1
    assert (np.corrcoef(proj[:, 0].numpy(), s[:, 0].numpy())[0, 1]) > 0.5
    # the images are the rendered pool images, average-pooled 32 -> 16 px
    img = toy.render(idx[:3])
    want_img = ((torch.nn.functional.avg_pool2d(img, 2) + 1) * 127.5).round().clamp(0, 255)
    assert torch.equal(ts.images[:3], want_img.to(torch.uint8))


def test_rates_and_metrics_vs_loops():
    rng = np.random.default_rng(0)
    vals = torch.from_numpy(rng.random((50, 3)) > 0.5)
    labels = torch.from_numpy(rng.integers(0, 5, 50))
    r = attribute_rates(vals, labels, 5).numpy()
    for i in range(5):
        np.testing.assert_allclose(r[i], vals.numpy()[labels.numpy() == i].mean(0))
    g, t = torch.rand(5, 3, dtype=torch.float64), torch.rand(5, 3, dtype=torch.float64)
    m = tendency_metrics(g, t, ["a", "b", "c"])
    gn, tn = g.numpy(), t.numpy()
    assert m["tv_identity"]["b"] == pytest.approx(np.mean(np.abs(gn[:, 1] - tn[:, 1])))
    assert m["tv_marginal_mean"] == pytest.approx(np.mean(np.abs(gn.mean(0) - tn.mean(0))))
    pg = np.mean([max(x, 1 - x) for x in gn[:, 2]])
    assert m["predictability_generated"]["c"] == pytest.approx(pg)


def test_config_bad_values():
    with pytest.raises(FacelabError, match="attributes"):
        TendencyToyConfig(attributes=("glasses",))
    with pytest.raises(FacelabError, match="correlation"):
        TendencyToyConfig(correlation=1.5)
    with pytest.raises(FacelabError, match="image_size"):
        TendencyToyConfig(image_size=12)


def test_bench_summary_mean_and_sample_std():
    from facelab.steerface.bench import TendencyBenchConfig, markdown_table, summarize

    rows = [
        {"mode": "off", "tv_identity_mean": 0.2},
        {"mode": "off", "tv_identity_mean": 0.4},
        {"mode": "adaptive", "tv_identity_mean": 0.1},
    ]
    s = summarize(rows)
    assert s[0]["mode"] == "off" and s[0]["tv_identity_mean"][0] == pytest.approx(0.3)
    assert s[0]["tv_identity_mean"][1] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert "| adaptive | 1 | 0.100 ± 0.000 |" in markdown_table(rows)
    with pytest.raises(FacelabError, match="modes"):
        TendencyBenchConfig(modes=("random",))


@pytest.mark.parametrize("clip", [True, False])
def test_bench_runs_end_to_end_and_samples_with_its_clip_setting(monkeypatch, clip):
    """The whole comparison at a few steps: one row per mode with the report's fields, and the
    sampler built with the config's x0 clipping (a spy around the real ``load_generator``)."""
    import facelab.core.diffusion.train as dtrain
    from facelab.steerface.bench import TendencyBenchConfig, tendency_rows

    seen = []
    real = dtrain.load_generator

    def spy(directory, **kw):
        sampler = real(directory, **kw)
        seen.append(bool(sampler.scheduler.config.clip_sample))
        return sampler

    monkeypatch.setattr(dtrain, "load_generator", spy)
    cfg = TendencyBenchConfig(
        toy=TendencyToyConfig(identities=4, images_per_identity=8, max_pool=256),
        modes=("off", "adaptive"),
        seeds=(0,),
        steps=2,
        batch_size=4,
        images_per_identity=2,
        sample_steps=2,
        probe_steps=2,
        id_recognizer_steps=21,  # the toy recognizer warms up for 20 steps
        fr_steps=0,
        clip_sample=clip,
    )
    rows = tendency_rows(cfg, log=lambda *_: None)
    assert [r["mode"] for r in rows] == ["off", "adaptive"]
    assert seen == [clip, clip]
    assert all(np.isfinite(r["tv_identity_mean"]) for r in rows)
