import math

import numpy as np
import pytest

from facelab.core.errors import FacelabTypeError, RangeError, ShapeError
from facelab.core.eval import identification


def _at(deg):
    r = np.deg2rad(np.asarray(deg, dtype=np.float64))
    return np.stack([np.cos(r), np.sin(r)], 1)


# Gallery on the unit circle: A at 0 and 60 degrees, B at 90, C at 180.
GALLERY = _at([0, 90, 180, 60])
GALLERY_IDS = np.array(["A", "B", "C", "A"])
# Probes: A at 10 (best A 0.985 > B, rank 1); B at 50 (A 0.985 > B 0.766: rank 2);
# C at 100 (B 0.985 > A 0.766 > C 0.174: rank 3); non-mated D at -80 (top 0.174) and
# E at 200 (top 0.940).
PROBES = _at([10, 50, 100, -80, 200])
PROBE_IDS = np.array(["A", "B", "C", "D", "E"])


def test_hand_computed_cmc_and_tpir():
    r = identification(PROBES, PROBE_IDS, GALLERY, GALLERY_IDS, ranks=(1, 2, 3), fpirs=(0.4, 0.5))
    assert r.n_mated == 3 and r.n_nonmated == 2
    np.testing.assert_array_equal(r.mated_ranks, [1, 2, 3])
    assert r.cmc == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 1.0})
    # FPIR 0.5 allows 1 of 2 non-mated probes above the threshold -> t = 0.174 (the 2nd top);
    # FPIR 0.4 allows none -> t = 0.940. Only A (rank 1, 0.985) is a hit at rank 1.
    assert r.thresholds[0.5] == pytest.approx(math.cos(math.radians(80)))
    assert r.thresholds[0.4] == pytest.approx(math.cos(math.radians(20)))
    assert r.tpir == pytest.approx({0.4: 1 / 3, 0.5: 1 / 3})
    r2 = identification(PROBES, PROBE_IDS, GALLERY, GALLERY_IDS, fpirs=(0.4, 0.5), rank=2)
    # at rank 2, B (mate 0.766) also counts once the threshold is 0.174
    assert r2.tpir == pytest.approx({0.4: 1 / 3, 0.5: 2 / 3})
    fpir, tpir, _thr = r2.curve()
    np.testing.assert_allclose(fpir, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(tpir, [1 / 3, 2 / 3, 2 / 3])


def test_ties_count_against_the_probe():
    g = np.ones((3, 4))
    r = identification(np.ones((2, 4)), [0, 1], g, [0, 1, 2], fpirs=())
    np.testing.assert_array_equal(r.mated_ranks, [3, 3])
    assert r.cmc[1] == 0.0


def test_matches_brute_force_loops():
    rng = np.random.default_rng(0)
    n_ids, d = 40, 8
    centers = rng.normal(size=(n_ids, d))
    g_ids = np.r_[np.arange(n_ids), rng.integers(0, n_ids, 20)]  # some identities twice
    gallery = centers[g_ids] + 0.5 * rng.normal(size=(g_ids.size, d))
    p_ids = np.r_[rng.integers(0, n_ids, 150), np.arange(100, 160)]  # 60 non-mated
    probes = np.r_[centers, rng.normal(size=(200, d))][
        np.where(p_ids < 100, p_ids, 40 + p_ids - 100)
    ]
    probes = probes + 0.9 * rng.normal(size=probes.shape)
    r = identification(probes, p_ids, gallery, g_ids, ranks=(1, 5), fpirs=(0.05, 0.2), memory_mb=1)

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    sim = unit(probes) @ unit(gallery).T
    ranks, mate, top_nm = [], [], []
    for i, pid in enumerate(p_ids):
        best = {
            gid: max(sim[i, j] for j in range(len(g_ids)) if g_ids[j] == gid) for gid in set(g_ids)
        }
        if pid in best:
            ranks.append(sum(1 for gid, s in best.items() if s >= best[pid]))
            mate.append(best[pid])
        else:
            top_nm.append(max(best.values()))
    ranks, mate, top_nm = np.array(ranks), np.array(mate), np.array(top_nm)
    np.testing.assert_array_equal(r.mated_ranks, ranks)
    assert r.cmc == {1: np.mean(ranks <= 1), 5: np.mean(ranks <= 5)}
    for f in (0.05, 0.2):
        # the lowest threshold t (among "accept > t") with FPIR(t) <= f
        cands = sorted(set(top_nm) | {-np.inf})
        t = min(c for c in cands if np.mean(top_nm > c) <= f)
        assert r.thresholds[f] == pytest.approx(t)
        assert r.tpir[f] == pytest.approx(np.mean((ranks <= 1) & (mate > t)))


def test_identification_bad_inputs():
    with pytest.raises(RangeError, match="non-mated"):
        identification(PROBES[:3], PROBE_IDS[:3], GALLERY, GALLERY_IDS)
    with pytest.raises(RangeError, match="mated probe"):
        identification(PROBES[3:], PROBE_IDS[3:], GALLERY, GALLERY_IDS)
    with pytest.raises(ShapeError, match="probe_labels"):
        identification(PROBES, PROBE_IDS[:-1], GALLERY, GALLERY_IDS)
    with pytest.raises(ShapeError, match="gallery_features"):
        identification(PROBES, PROBE_IDS, np.ones((4, 3)), GALLERY_IDS)
    with pytest.raises(RangeError, match="fpirs"):
        identification(PROBES, PROBE_IDS, GALLERY, GALLERY_IDS, fpirs=(0.0,))
    with pytest.raises(RangeError, match="ranks"):
        identification(PROBES, PROBE_IDS, GALLERY, GALLERY_IDS, ranks=(0,))
    with pytest.raises(FacelabTypeError, match="gallery_labels"):
        identification(PROBES, PROBE_IDS, GALLERY, np.array([0.5, 1.0, 2.0, 3.0]))
