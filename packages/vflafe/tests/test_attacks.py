import numpy as np
import pytest
import torch

from facelab.core.errors import RangeError, ShapeError
from facelab.vflafe import invert_features, label_leakage


def _pairwise_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney by brute force: P(score_pos > score_neg) + ties / 2."""
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_label_leakage_scores_against_a_brute_force_auc():
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(60, generator=g) < 0.3).long()
    direction = torch.randn(4, generator=g)
    # split-learning gradients: positives larger and pointing the other way
    scale = torch.where(y == 1, 2.0, 1.0).unsqueeze(1)
    sign = torch.where(y == 1, -1.0, 1.0).unsqueeze(1)
    grads = sign * scale * direction + 0.8 * torch.randn(60, 4, generator=g)
    res = label_leakage(grads, y)
    norms = grads.norm(dim=1).numpy()
    ref = _pairwise_auc(norms[y.numpy() == 1], norms[y.numpy() == 0])
    assert res.norm_auc == pytest.approx(max(ref, 1 - ref))
    r = int(np.flatnonzero(y.numpy())[0])
    cos = torch.nn.functional.cosine_similarity(grads, grads[r : r + 1]).numpy()
    keep = np.arange(60) != r
    yk = y.numpy()[keep]
    assert res.direction_auc == pytest.approx(_pairwise_auc(cos[keep][yk == 1], cos[keep][yk == 0]))
    assert res.direction_auc > 0.95 and res.norm_auc > 0.75


def test_label_leakage_of_pure_noise_is_near_one_half():
    g = torch.Generator().manual_seed(1)
    y = (torch.rand(4000, generator=g) < 0.5).long()
    res = label_leakage(torch.randn(4000, 8, generator=g), y)
    # 4,000 samples: the AUC's standard error is ~0.01
    assert abs(res.direction_auc - 0.5) < 0.04 and res.norm_auc < 0.54


def test_label_leakage_bad_input():
    with pytest.raises(RangeError, match="both classes"):
        label_leakage(torch.randn(5, 2), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ShapeError):
        label_leakage(torch.randn(5), torch.zeros(5, dtype=torch.long))


def test_inversion_recovers_an_invertible_release_and_not_an_unrelated_one():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(600, 6, generator=g)
    mix = torch.randn(6, 6, generator=g)
    good = invert_features(x @ mix, x, steps=300, seed=0)
    bad = invert_features(torch.randn(600, 6, generator=g), x, steps=300, seed=0)
    assert good.relative_mse < 0.15
    assert bad.relative_mse > 0.9  # 1.0 = predicting the mean
    assert good.known == 180 and good.attacked == 420 and good.ssim is None
