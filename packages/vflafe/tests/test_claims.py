"""The paper's qualitative claims on trained toy models (breast cancer, 2 passive parties).

Thresholds calibrated over seeds 0-4 and torch thread counts 1 and 2 (see each test)."""

import dataclasses

import numpy as np
import pytest

from facelab.vflafe import PrivacyConfig, RecipeConfig, embedding_epsilon, train
from facelab.vflafe.compare import CompareConfig, attack_outcome
from facelab.vflafe.recipe import DataConfig


@pytest.fixture(scope="module")
def data():
    return DataConfig().load()


def _run(data, mode, seed, eps=None, clip=1.0, epochs=6, **privacy):
    base = RecipeConfig()
    cfg = dataclasses.replace(
        base,
        privacy=PrivacyConfig(mode=mode, clip_norm=clip, noise_seed=seed, **privacy),
        target_epsilon=eps,
        train=dataclasses.replace(base.train, epochs=epochs, seed=seed),
    )
    return train(cfg, data=data)


def test_afe_beats_plain_at_equal_epsilon_when_the_clip_norm_is_not_tuned(data):
    """epsilon 8, C = 10 (ten times the bottom models' natural output scale), mean of seeds
    0-2. Calibration (seeds 0-4, threads 1 and 2, 6 epochs): AFE 0.727-0.776 per seed
    (mean of seeds 0-2: 0.75); plain 0.49-0.74 (mean of seeds 0-2: 0.58-0.61). Asserted: AFE's
    mean above plain's by 0.06 and above 0.68."""
    afe = [_run(data, "afe", s, eps=8.0, clip=10.0) for s in range(3)]
    plain = [_run(data, "plain", s, eps=8.0, clip=10.0) for s in range(3)]
    a, p = np.mean([o.accuracy for o in afe]), np.mean([o.accuracy for o in plain])
    assert a > 0.68 and a > p + 0.06, (a, p)
    for o in afe + plain:  # same mechanism and releases: the same epsilon, at most the target
        assert o.epsilon == embedding_epsilon(
            noise_multiplier=o.noise_multiplier, releases=6, delta=1e-5
        )
        assert 7.98 <= o.epsilon <= 8.0


def test_dp_worsens_inversion_and_gradient_noise_hides_labels(data):
    """Calibration (seeds 0-4, threads 1 and 2): no DP: inversion relative MSE 0.13-0.22,
    direction AUC 0.93-1.0; AFE at epsilon 8: relative MSE 1.6-2.0 (worse than predicting the
    mean); no DP + gradient noise (clip 0.05, multiplier 1): direction AUC 0.45-0.60, norm AUC
    0.50-0.57, accuracy 0.90-0.95."""
    cc = CompareConfig(attack_steps=300)
    nodp = _run(data, "none", 0)
    dp = _run(data, "afe", 0, eps=8.0)
    protected = _run(data, "none", 0, grad_clip_norm=0.05, grad_noise_multiplier=1.0)
    a_nodp, a_dp, a_prot = (attack_outcome(o, cc, 0) for o in (nodp, dp, protected))
    assert a_nodp["inversion_rel_mse"] < 0.4
    assert a_dp["inversion_rel_mse"] > 0.9
    assert a_nodp["direction_auc"] > 0.85
    assert abs(a_prot["direction_auc"] - 0.5) < 0.2 and a_prot["norm_auc"] < 0.7
    assert nodp.accuracy > 0.9 and protected.accuracy > 0.8
