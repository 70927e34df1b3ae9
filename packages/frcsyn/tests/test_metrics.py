"""The challenge's numbers against independent references: scikit-learn (AUC, KFold), Python's
statistics module (AVG / SD) and brute-force loops (thresholds, FNMR@FMR)."""

import statistics

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold

from facelab.core.errors import RangeError, ShapeError
from facelab.frcsyn import (
    EvalConfig,
    PairSet,
    evaluate_embeddings,
    gap,
    leaderboard_row,
    task1_scores,
    task2_scores,
)

GROUPS = ("g0", "g1", "g2", "g3")


def pair_set(name, emb, i1, i2, same, groups=None):
    images = torch.zeros(emb.shape[0], 3, 2, 2)  # the metrics only need the embeddings
    return PairSet(name, images, i1, i2, same, groups=groups)


def cosine(emb, i1, i2):
    e = emb.astype(np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    return np.sum(e[i1] * e[i2], axis=1)


def ref_kfold(dist, same, nfolds=10):
    """insightface's protocol written as plain loops: per sklearn KFold (unshuffled) test fold,
    the first threshold of 0:4:0.01 with the best accuracy on the other folds."""
    pred = np.zeros(same.size, bool)
    fold_acc = []
    for train, test in KFold(nfolds, shuffle=False).split(dist):
        best_t, best = None, -1.0
        for t in np.arange(0, 4, 0.01):
            acc = np.mean((dist[train] < t) == same[train])
            if acc > best:
                best, best_t = acc, t
        pred[test] = dist[test] < best_t
        fold_acc.append(np.mean(pred[test] == same[test]))
    return pred, float(np.mean(fold_acc))


def ref_fnmr(scores, same, fmr=0.01):
    """Lowest FNMR over every threshold whose FMR does not exceed the target."""
    gen, imp = scores[same], scores[~same]
    best = 1.0
    for t in np.concatenate([np.unique(scores), [np.inf]]):
        if np.mean(imp >= t) <= fmr:
            best = min(best, float(np.mean(gen < t)))
    return best


@pytest.fixture
def demo(make_embeddings, make_pairs):
    emb, lab = make_embeddings(n_ids=40, per_id=4, noise=1.0, seed=3)
    i1, i2, same = make_pairs(lab, 800, seed=3)
    groups = np.array(GROUPS)[lab[i1] % 4]  # a pair's group: its first person's
    return emb, i1, i2, same, groups


def test_accuracy_fnmr_auc_against_references(demo):
    emb, i1, i2, same, groups = demo
    res = evaluate_embeddings(emb, pair_set("s", emb, i1, i2, same, groups))
    scores = cosine(emb, i1, i2)
    assert res.auc == pytest.approx(roc_auc_score(same, scores), abs=1e-12)
    assert res.fnmr == pytest.approx(ref_fnmr(scores, same), abs=1e-12)
    _, acc = ref_kfold(2 - 2 * scores, same)
    assert res.accuracy == pytest.approx(acc, abs=1e-12)
    assert 0.6 < res.accuracy < 0.99  # a non-trivial set: the references were really exercised


@pytest.mark.parametrize("ddof", [0, 1])
def test_task1_global_threshold_against_loops(demo, ddof):
    emb, i1, i2, same, groups = demo
    res = evaluate_embeddings(emb, pair_set("bupt", emb, i1, i2, same, groups))
    pred, _ = ref_kfold(2 - 2 * cosine(emb, i1, i2), same)
    acc = [float(np.mean(pred[groups == g] == same[groups == g])) for g in GROUPS]
    t1 = task1_scores({"bupt": res}, sd_ddof=ddof)
    sd = statistics.pstdev(acc) if ddof == 0 else statistics.stdev(acc)
    assert t1.avg == pytest.approx(statistics.mean(acc), abs=1e-12)
    assert t1.sd == pytest.approx(sd, abs=1e-12)
    assert t1.to == pytest.approx(statistics.mean(acc) - sd, abs=1e-12)
    assert t1.sd > 0.005  # the groups really differ
    assert {g: a for g, (_, a) in res.groups.items()} == pytest.approx(dict(zip(GROUPS, acc)))


def test_task1_per_group_threshold_against_loops(demo):
    emb, i1, i2, same, groups = demo
    cfg = EvalConfig(group_threshold="per-group")
    res = evaluate_embeddings(emb, pair_set("bupt", emb, i1, i2, same, groups), cfg)
    dist = 2 - 2 * cosine(emb, i1, i2)
    acc = {g: ref_kfold(dist[groups == g], same[groups == g])[1] for g in GROUPS}
    assert {g: a for g, (_, a) in res.groups.items()} == pytest.approx(acc, abs=1e-12)


def test_task2_averages_sets(make_embeddings, make_pairs):
    results, accs, fnmrs, aucs = {}, [], [], []
    for k, noise in enumerate((0.6, 1.0, 1.4)):
        emb, lab = make_embeddings(n_ids=30, per_id=3, noise=noise, seed=10 + k)
        i1, i2, same = make_pairs(lab, 400, seed=k)
        results[f"s{k}"] = evaluate_embeddings(emb, pair_set(f"s{k}", emb, i1, i2, same))
        scores = cosine(emb, i1, i2)
        accs.append(ref_kfold(2 - 2 * scores, same)[1])
        fnmrs.append(ref_fnmr(scores, same))
        aucs.append(roc_auc_score(same, scores))
    t2 = task2_scores(results)
    assert t2.avg == pytest.approx(np.mean(accs), abs=1e-12)
    assert t2.fnmr == pytest.approx(np.mean(fnmrs), abs=1e-12)
    assert t2.auc == pytest.approx(np.mean(aucs), abs=1e-12)
    assert accs[0] > accs[2]  # noise levels really produce different sets


def test_gap_and_row_values(demo):
    assert gap(95.0, 90.0) == pytest.approx(100 * 5.0 / 90.0)
    assert gap(90.0, 95.0) < 0  # synthetic ahead of real: negative, as on the leaderboard
    emb, i1, i2, same, groups = demo
    syn = {"bupt": evaluate_embeddings(emb, pair_set("bupt", emb, i1, i2, same, groups))}
    emb2 = emb + 0.5 * np.random.default_rng(1).standard_normal(emb.shape).astype(np.float32)
    real = {"bupt": evaluate_embeddings(emb2, pair_set("bupt", emb2, i1, i2, same, groups))}
    t_syn, t_real = task1_scores(syn), task1_scores(real)
    row = leaderboard_row("1.1", "entry", syn, real)
    assert row.values["TO [%]"] == pytest.approx(100 * (t_syn.avg - t_syn.sd))
    assert row.values["GAP [%]"] == pytest.approx(100 * (t_real.to - t_syn.to) / t_syn.to)
    row2 = leaderboard_row("2.1", "entry", syn, real)
    a_syn, a_real = syn["bupt"].accuracy, real["bupt"].accuracy  # task 2: the set's accuracy
    assert row2.values["AVG [%]"] == pytest.approx(100 * a_syn)
    assert row2.values["GAP [%]"] == pytest.approx(100 * (a_real - a_syn) / a_syn)
    assert leaderboard_row("2.1", "entry", syn).values["GAP [%]"] is None


def test_bad_inputs(demo):
    emb, i1, i2, same, groups = demo
    s = pair_set("bupt", emb, i1, i2, same, groups)
    with pytest.raises(RangeError, match=r"\['g9'\] have no pairs"):
        evaluate_embeddings(emb, s, expected_groups=[*GROUPS, "g9"])
    one = pair_set("one", emb, i1, i2, same, np.full(same.size, "g0"))
    with pytest.raises(RangeError, match="at least 2 demographic groups"):
        evaluate_embeddings(emb, one)
    with pytest.raises(ShapeError, match="one embedding per image"):
        evaluate_embeddings(emb[:-1], s)
    plain = {"x": evaluate_embeddings(emb, pair_set("x", emb, i1, i2, same))}
    with pytest.raises(RangeError, match="task 1 needs an evaluation set with demographic"):
        task1_scores(plain)
    tiny = pair_set("tiny", emb, i1[:40], i2[:40], same[:40], groups[:40])
    with pytest.raises(RangeError, match="fewer than nfolds"):  # a group too small to fold
        evaluate_embeddings(emb, tiny, EvalConfig(group_threshold="per-group"))
    with pytest.raises(RangeError, match="genuine and impostor"):
        pair_set("gen", emb, i1[same], i2[same], same[same])
    with pytest.raises(RangeError, match="group_threshold"):
        EvalConfig(group_threshold="each")
    with pytest.raises(RangeError, match="positive synthetic"):
        gap(90.0, 0.0)
