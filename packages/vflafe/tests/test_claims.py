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
    """epsilon 8, C = 10 (ten times the default clip norm, which suits our bottom models),
    mean of seeds 0-2. Calibration (6 epochs): one thread, seeds 0-4: AFE 0.832 / 0.755 / 0.762 / 0.825 /
    0.783 (mean of seeds 0-2: 0.783), plain 0.538 / 0.524 / 0.643 / 0.622 / 0.524 (mean of
    seeds 0-2: 0.569); two threads, seeds 0-4: the same values to the last digit. Asserted: AFE's
    mean above 0.68 and above plain's by 0.06 (measured gap 0.21)."""
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
    """Calibration (one thread, seeds 0-4; two threads, seeds 0-4: identical values): no DP:
    inversion relative MSE 0.15-0.23, direction AUC 1.0, accuracy 0.944-0.958; AFE at epsilon
    8: relative MSE 1.95-2.33 (worse than predicting the mean); no DP + gradient noise (clip
    0.05, multiplier 1): direction AUC 0.498-0.534, norm AUC 0.501-0.532, accuracy
    0.930-0.951."""
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
