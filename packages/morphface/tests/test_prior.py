"""The subject-specific style prior against numpy estimates on data with known structure."""

import numpy as np
import pytest
import torch

from facelab.core.errors import FormatError, NonFiniteError, RangeError
from facelab.morphface.params import StyleLayout
from facelab.morphface.prior import StylePrior, subject_statistics

LAYOUT = StyleLayout(2, 1, 0)  # D = 2 + 1 + 3 + 3 + 27 = 36


def synthetic(subjects=300, per=8, seed=0):
    rng = np.random.default_rng(seed)
    d = LAYOUT.dim
    between_sd = rng.uniform(0.5, 2.0, d)
    within_sd = rng.uniform(0.2, 1.0, d)
    mu = rng.normal(size=d)
    means = mu + between_sd * rng.normal(size=(subjects, d))
    x = np.repeat(means, per, 0) + within_sd * rng.normal(size=(subjects * per, d))
    labels = np.repeat(np.arange(subjects), per)
    return x, labels, mu, between_sd, within_sd


def test_fit_matches_numpy_anova_estimates():
    x, labels, _mu, bsd, wsd = synthetic()
    prior = StylePrior.fit(torch.tensor(x), torch.tensor(labels), layout=LAYOUT)
    s, per = labels.max() + 1, 8
    means = x.reshape(s, per, -1).mean(1)
    resid = x - np.repeat(means, per, 0)
    w = resid.T @ resid / (x.shape[0] - s)
    np.testing.assert_allclose(prior.within.numpy(), w, atol=1e-9)
    np.testing.assert_allclose(prior.mean.numpy(), means.mean(0), atol=1e-9)
    b = np.cov(means.T) - w / per
    # the PSD projection changes b only by its (small, sampling-noise) negative part
    assert np.abs(prior.between.numpy() - b).max() < 0.1 * np.abs(b).max()
    # and the estimates recover the generating variances
    np.testing.assert_allclose(np.sqrt(np.diag(prior.within.numpy())), wsd, rtol=0.06)
    np.testing.assert_allclose(np.sqrt(np.diag(prior.between.numpy())), bsd, rtol=0.15)


def test_sampled_subjects_are_distinct_and_vary_like_the_data():
    x, labels, *_ = synthetic(subjects=200, per=6, seed=1)
    prior = StylePrior.fit(torch.tensor(x), torch.tensor(labels), layout=LAYOUT)
    params, new_labels = prior.sample(200, 6, seed=5, clip=False)
    vec = params.to_vector()
    for k in (0, 3, 10):  # a shape, a pose and a light coordinate
        real = subject_statistics(torch.tensor(x[:, k]), torch.tensor(labels))
        gen = subject_statistics(vec[:, k], new_labels)
        assert abs(gen["icc"] - real["icc"]) < 0.1
        assert 0.75 < gen["within_var"] / real["within_var"] < 1.33
    # an i.i.d. draw (no subject structure) has an ICC near 0: the statistic can tell
    shuffled = subject_statistics(vec[torch.randperm(vec.shape[0]), 0], new_labels)
    assert shuffled["icc"] < 0.1


def test_subject_statistics_is_one_way_anova():
    rng = np.random.default_rng(2)
    v = rng.normal(size=40) + np.repeat(rng.normal(size=10) * 2, 4)
    lab = np.repeat(np.arange(10), 4)
    st = subject_statistics(torch.tensor(v), torch.tensor(lab))
    m = v.reshape(10, 4).mean(1)
    msw = ((v.reshape(10, 4) - m[:, None]) ** 2).sum() / 30
    assert st["within_var"] == pytest.approx(msw)
    assert st["between_var"] == pytest.approx(max(m.var(ddof=1) - msw / 4, 0))


def test_min_separation_clip_and_roundtrip(tmp_path):
    x, labels, *_ = synthetic(subjects=50, per=4, seed=3)
    prior = StylePrior.fit(torch.tensor(x), torch.tensor(labels), layout=LAYOUT)
    means = prior.sample_subjects(20, seed=0, min_separation=4.0)
    vals, vecs = torch.linalg.eigh(prior.between)
    keep = vals > vals.max() * 1e-9
    white = ((means - prior.mean) @ vecs[:, keep]) / vals[keep].sqrt()
    dist = torch.cdist(white, white) + 1e9 * torch.eye(20, dtype=white.dtype)
    assert dist.min() >= 4.0
    imgs = prior.sample_images(means, 3, seed=0)
    assert (imgs >= prior.low).all() and (imgs <= prior.high).all()
    back = StylePrior.load(prior.save(tmp_path / "prior.safetensors"))
    torch.testing.assert_close(back.within, prior.within)
    assert back.layout == prior.layout and back.num_subjects == 50


def test_bad_prior_inputs(tmp_path):
    x = torch.randn(6, LAYOUT.dim)
    with pytest.raises(RangeError, match="at least 2 images"):
        StylePrior.fit(x, torch.tensor([0, 0, 1, 1, 2, 3]), layout=LAYOUT)
    kept = StylePrior.fit(x, torch.tensor([0, 0, 1, 1, 2, 3]), layout=LAYOUT, drop_singletons=True)
    assert kept.num_subjects == 2 and kept.num_images == 4
    with pytest.raises(RangeError, match="2 subjects"):
        StylePrior.fit(x, torch.zeros(6, dtype=torch.long), layout=LAYOUT)
    x[0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        StylePrior.fit(x, torch.tensor([0, 0, 1, 1, 2, 2]), layout=LAYOUT)
    other = tmp_path / "x.safetensors"
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(1)}, str(other))
    with pytest.raises(FormatError, match="style prior"):
        StylePrior.load(other)
