import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facelab.core.errors import FacelabTypeError, RangeError, ShapeError, UnknownNameError
from facelab.core.heads import CurricularFace, MarginHead, get_head


def close(actual, expected, rtol=1e-7, atol=0.0):
    """assert_allclose on tensors (torch.testing.assert_close costs seconds of imports)."""
    np.testing.assert_allclose(
        actual.detach().cpu().numpy(), expected.detach().cpu().numpy(), rtol=rtol, atol=atol
    )


D, C = 16, 40


def rng(seed=0):
    return np.random.default_rng(seed)


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def set_weight(head, w):
    """Move the head to float64 and set its class centres exactly."""
    head.double()
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(w, dtype=head.weight.dtype))


def embeddings_at_angles(w, labels, thetas, seed=1234):
    """Embeddings whose angle to their class centre W[label] is exactly ``thetas``."""
    r = rng(seed)
    wy = unit(w[labels])
    u = r.normal(size=wy.shape)
    u = unit(u - (u * wy).sum(1, keepdims=True) * wy)  # unit, orthogonal to w_y
    return np.cos(thetas)[:, None] * wy + np.sin(thetas)[:, None] * u


def reference_angles(emb, w):
    """All angles theta_ij with arccos in float64 (independent of the head's code)."""
    return np.arccos(np.clip(unit(emb) @ unit(w).T, -1.0, 1.0))


def run_head(head, emb, labels):
    head = head.double()
    out = head(torch.as_tensor(emb), torch.as_tensor(labels))
    return out.logits.detach().numpy(), out.targets.numpy()


# ---------------------------------------------------------------------------------------------
# CombinedMargin family


def test_arcface_logits_equal_s_cos_theta_plus_m():
    r = rng(0)
    w = r.normal(size=(C, D))
    labels = r.integers(0, C, size=12)
    thetas = np.linspace(0.05, math.pi - 0.6, 12)  # theta + m < pi: the margin branch
    emb = embeddings_at_angles(w, labels, thetas)
    head = MarginHead.from_preset("arcface", D, C)
    set_weight(head, w)
    logits, targets = run_head(head.eval(), emb, labels)
    theta = reference_angles(emb, w)
    expected = 64.0 * np.cos(theta)
    expected[np.arange(12), labels] = 64.0 * np.cos(theta[np.arange(12), labels] + 0.5)
    np.testing.assert_allclose(logits, expected, atol=1e-9)
    np.testing.assert_array_equal(targets, labels)


def test_arcface_fallback_when_theta_plus_m_exceeds_pi():
    r = rng(1)
    w = r.normal(size=(C, D))
    labels = r.integers(0, C, size=6)
    thetas = np.array([math.pi - 0.45, math.pi - 0.3, math.pi - 0.1, 3.0, 2.9, math.pi - 0.49])
    emb = embeddings_at_angles(w, labels, thetas)
    head = MarginHead(D, C, s=30.0, m2=0.5)
    set_weight(head, w)
    logits, _ = run_head(head.eval(), emb, labels)
    t = reference_angles(emb, w)[np.arange(6), labels]
    np.testing.assert_allclose(t, thetas, atol=1e-7)
    # insightface: cos(theta) - m * sin(m) once theta + m > pi
    np.testing.assert_allclose(
        logits[np.arange(6), labels], 30.0 * (np.cos(t) - 0.5 * math.sin(0.5)), atol=1e-9
    )


def test_arcface_target_logit_is_monotone_and_gradients_finite():
    head = MarginHead.from_preset("arcface", D, C).double()
    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    target = head.target_logit(torch.cos(theta))
    assert bool((target[1:] <= target[:-1] + 1e-12).all()), "target logit must not increase"
    # exactly parallel / antiparallel embeddings: cos = +-1, no NaN gradient
    w = torch.randn(C, D, dtype=torch.float64)
    set_weight(head, w)
    emb = torch.stack([w[3], -w[5], w[7] * 2.0]).requires_grad_(True)
    loss = head.loss(emb, torch.tensor([3, 5, 7]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(emb.grad).all()
    assert torch.isfinite(head.weight.grad).all()


def test_cosface_and_sphereface_formulas():
    r = rng(2)
    w = r.normal(size=(C, D))
    labels = r.integers(0, C, size=10)
    thetas = np.linspace(0.0, math.pi, 10)
    emb = embeddings_at_angles(w, labels, thetas)
    theta = reference_angles(emb, w)
    rows = np.arange(10)

    cos_head = MarginHead.from_preset("cosface", D, C)
    set_weight(cos_head, w)
    logits, _ = run_head(cos_head.eval(), emb, labels)
    expected = 64.0 * np.cos(theta)
    expected[rows, labels] = 64.0 * (np.cos(theta[rows, labels]) - 0.4)
    np.testing.assert_allclose(logits, expected, atol=1e-9)

    sph = MarginHead.from_preset("sphereface", D, C)
    assert (sph.m1, sph.m2, sph.m3, sph.s) == (1.35, 0.0, 0.0, 64.0)
    set_weight(sph, w)
    logits, _ = run_head(sph.eval(), emb, labels)
    # SphereFace's psi(theta) = (-1)^k cos(m theta) - 2k, k = floor(m theta / pi), by cases
    ty = theta[rows, labels]
    psi = np.array(
        [math.cos(1.35 * a) if 1.35 * a < math.pi else -math.cos(1.35 * a) - 2 for a in ty]
    )
    expected = 64.0 * np.cos(theta)
    expected[rows, labels] = 64.0 * psi
    np.testing.assert_allclose(logits, expected, atol=1e-7)
    grid = torch.linspace(0, math.pi, 1001, dtype=torch.float64)
    vals = sph.double().target_logit(torch.cos(grid))
    assert bool((vals[1:] <= vals[:-1] + 1e-9).all())


def test_combined_margin_general_formula():
    head = MarginHead(D, C, s=10.0, m1=0.9, m2=0.4, m3=0.15).double()
    theta = torch.tensor([0.1, 1.0, 2.0, 3.0, 3.1], dtype=torch.float64)
    x = 0.9 * theta + 0.4
    expected = torch.cos(x) - 0.15
    expected[x > math.pi] = -torch.cos(x[x > math.pi]) - 2.0 - 0.15
    close(head.target_logit(torch.cos(theta)), expected, atol=1e-10, rtol=0)
    assert bool((x > math.pi).any())


def test_curricularface_formula_and_t_update():
    r = rng(3)
    w = r.normal(size=(C, D))
    labels = r.integers(0, C, size=16)
    emb = r.normal(size=(16, D)) + 2.0 * unit(w[labels])
    head = CurricularFace(D, C).double()
    set_weight(head, w)
    theta = reference_angles(emb, w)
    rows = np.arange(16)
    m, s, alpha = 0.5, 64.0, 0.01
    cos = np.cos(theta)
    cy = cos[rows, labels]
    cos_tm = np.cos(theta[rows, labels] + m)
    t_expected = 0.0
    for step in range(2):  # the EMA over two training steps
        t_expected = alpha * cy.mean() + (1 - alpha) * t_expected
        logits, _ = run_head(head.train(), emb, labels)
        expected = cos.copy()
        for i in range(16):  # brute force, one sample and one class at a time
            for j in range(C):
                if j == labels[i]:
                    expected[i, j] = (
                        cos_tm[i] if theta[i, j] + m <= math.pi else cy[i] - m * math.sin(m)
                    )
                elif cos[i, j] > cos_tm[i]:
                    expected[i, j] = cos[i, j] * (t_expected + cos[i, j])
        np.testing.assert_allclose(logits, s * expected, atol=1e-9, err_msg=f"step {step}")
        assert float(head.t) == pytest.approx(t_expected, abs=1e-12)
    assert bool((cos > cos_tm[:, None]).sum() > 16)  # some negatives really were hard
    # eval mode uses t but does not update it
    t_before = float(head.t)
    run_head(head.eval(), emb, labels)
    assert float(head.t) == t_before


def test_loss_is_cross_entropy_of_logits():
    head = get_head("arcface", D, C)
    emb, labels = torch.randn(8, D), torch.randint(0, C, (8,))
    out = head(emb, labels)
    close(head.loss(emb, labels), F.cross_entropy(out.logits, out.targets))
    assert out.classes is None and out.logits.shape == (8, C)


def test_presets_and_names():
    assert isinstance(get_head("curricularface", D, C), CurricularFace)
    arc = get_head("arcface", D, C)
    assert (arc.s, arc.m1, arc.m2, arc.m3) == (64.0, 1.0, 0.5, 0.0)
    cos = get_head("cosface", D, C, s=30.0)
    assert (cos.s, cos.m3, cos.m2) == (30.0, 0.4, 0.0)
    with pytest.raises(UnknownNameError, match=r"unknown head 'adaface'.*arcface.*curricularface"):
        get_head("adaface", D, C)
    with pytest.raises(UnknownNameError, match="valid presets"):
        MarginHead.from_preset("nope", D, C)


def test_bad_input():
    head = get_head("arcface", D, C)
    with pytest.raises(ShapeError, match=r"expected \(B, 16\), got shape \(4, 8\)"):
        head(torch.randn(4, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ShapeError, match=r"labels: expected \(4,\)"):
        head(torch.randn(4, D), torch.zeros(5, dtype=torch.long))
    with pytest.raises(FacelabTypeError, match="int64"):
        head(torch.randn(4, D), torch.zeros(4))
    with pytest.raises(RangeError, match=r"class ids in \[0, 40\), got min 0 and max 40"):
        head(torch.randn(4, D), torch.tensor([0, 1, 2, 40]))
    with pytest.raises(RangeError, match="got min -1"):
        head(torch.randn(4, D), torch.tensor([0, 1, 2, -1]))
    emb = torch.randn(4, D)
    emb[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        head(emb, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ShapeError, match="non-empty"):
        head(torch.randn(0, D), torch.zeros(0, dtype=torch.long))
    with pytest.raises(RangeError, match="sample_rate"):
        get_head("arcface", D, C, sample_rate=0.0)
    with pytest.raises(RangeError, match="sample_rate"):
        get_head("arcface", D, C, sample_rate=1.5)
    with pytest.raises(RangeError, match="m2"):
        MarginHead(D, C, m2=-0.1)


# ---------------------------------------------------------------------------------------------
# Partial FC


def test_partial_fc_keeps_positives_samples_count_and_remaps():
    n_cls, b = 1000, 24
    head = get_head("arcface", D, n_cls, sample_rate=0.1).train()
    labels = torch.randint(0, n_cls, (b,), generator=torch.Generator().manual_seed(0))
    labels[:4] = labels[4]  # repeated ids
    emb = torch.randn(b, D)
    out = head(emb, labels)
    assert out.classes is not None and out.classes.shape == (100,)
    assert out.logits.shape == (b, 100)
    assert set(labels.tolist()) <= set(out.classes.tolist())
    assert bool((out.classes[1:] > out.classes[:-1]).all())  # sorted, no duplicates
    close(out.classes[out.targets], labels, rtol=0, atol=0)
    # the sampled logits are the full head's logits restricted to the kept columns
    full = head.eval()(emb, labels)
    close(out.logits, full.logits[:, out.classes], rtol=1e-6, atol=1e-5)


def test_partial_fc_more_positives_than_samples():
    head = get_head("cosface", D, 100, sample_rate=0.05).train()  # 5 samples
    labels = torch.arange(0, 60, 3)  # 20 distinct positives
    out = head(torch.randn(20, D), labels)
    assert out.classes.shape == (20,)
    close(out.classes, labels, rtol=0, atol=0)


def test_partial_fc_gradient_only_on_sampled_rows():
    head = get_head("arcface", D, 500, sample_rate=0.2).train()
    labels = torch.randint(0, 500, (16,), generator=torch.Generator().manual_seed(1))
    out = head(torch.randn(16, D), labels)
    F.cross_entropy(out.logits, out.targets).backward()
    touched = head.weight.grad.abs().sum(1) > 0
    kept = torch.zeros(500, dtype=torch.bool)
    kept[out.classes] = True
    assert torch.equal(touched, kept)
    assert int(kept.sum()) == 100


def test_partial_fc_is_deterministic_per_step_and_resumable():
    labels = torch.tensor([1, 5, 9, 200])
    emb = torch.randn(4, D)
    a = get_head("arcface", D, 300, sample_rate=0.1, seed=7).train()
    b = get_head("arcface", D, 300, sample_rate=0.1, seed=7).train()
    seq_a = [a(emb, labels).classes for _ in range(3)]
    seq_b = [b(emb, labels).classes for _ in range(3)]
    for x, y in zip(seq_a, seq_b):
        assert torch.equal(x, y)
    assert not torch.equal(seq_a[0], seq_a[1])  # a new draw every step
    assert int(a.sample_step) == 3
    # resume: a fresh head loaded from the state dict draws what `a` would draw next
    c = get_head("arcface", D, 300, sample_rate=0.1, seed=7).train()
    c.load_state_dict(a.state_dict())
    assert torch.equal(c(emb, labels).classes, a(emb, labels).classes)
    other = get_head("arcface", D, 300, sample_rate=0.1, seed=8).train()
    assert not torch.equal(other(emb, labels).classes, seq_a[0])


def test_partial_fc_off_in_eval_and_at_rate_one():
    head = get_head("curricularface", D, 200, sample_rate=0.1).eval()
    out = head(torch.randn(4, D), torch.tensor([0, 1, 2, 3]))
    assert out.classes is None and out.logits.shape == (4, 200)
    full = get_head("arcface", D, 200).train()
    assert full(torch.randn(4, D), torch.tensor([0, 1, 2, 3])).classes is None


_DIST_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from facelab.core.heads import get_head

    LABELS = {0: [3, 17, 17, 250, 42], 1: [8, 3, 999, 500, 77, 640, 5]}  # unequal batches

    def worker(rank, init, out):
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
        torch.manual_seed(0)
        head = get_head("curricularface", 8, 1000, sample_rate=0.02, seed=11).train()
        labels = torch.tensor(LABELS[rank])
        emb = torch.randn(len(labels), 8, generator=torch.Generator().manual_seed(rank))
        res = []
        for _ in range(2):
            o = head(emb, labels)
            res.append((o.classes, o.targets, o.logits.detach()))
        torch.save({"res": res, "t": head.t.clone(), "emb": emb,
                    "weight": head.weight.detach().clone()}, f"{out}/rank{rank}.pt")
        dist.destroy_process_group()

    if __name__ == "__main__":
        out = sys.argv[1]
        mp.spawn(worker, args=(f"file://{out}/rendezvous", out), nprocs=2, join=True)
    """
)


def test_partial_fc_two_processes_gloo(tmp_path):
    script = tmp_path / "dist_head.py"
    script.write_text(_DIST_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    labels = {0: [3, 17, 17, 250, 42], 1: [8, 3, 999, 500, 77, 640, 5]}
    union = set(labels[0]) | set(labels[1])
    for step in range(2):
        c0, t0, _ = r0["res"][step]
        c1, t1, _ = r1["res"][step]
        assert torch.equal(c0, c1), "both ranks must keep the same classes"
        assert union <= set(c0.tolist())  # the union of all ranks' positives
        assert len(c0) == 20  # max(int(0.02 * 1000), 2 * local batch)
        close(c0[t0], torch.tensor(labels[0]), rtol=0, atol=0)
        close(c1[t1], torch.tensor(labels[1]), rtol=0, atol=0)
    assert not torch.equal(r0["res"][0][0], r0["res"][1][0])
    # CurricularFace's t is the EMA of the mean target cosine over both ranks' samples
    w = F.normalize(r0["weight"].double(), dim=1)
    assert torch.equal(r0["weight"], r1["weight"])
    cos = torch.cat(
        [
            (F.normalize(r["emb"].double(), dim=1) * w[torch.tensor(labels[k])]).sum(1)
            for k, r in ((0, r0), (1, r1))
        ]
    )
    t = 0.0
    for _ in range(2):
        t = 0.01 * float(cos.mean()) + 0.99 * t
    assert float(r0["t"]) == pytest.approx(t, abs=1e-6)
    assert float(r1["t"]) == pytest.approx(t, abs=1e-6)
