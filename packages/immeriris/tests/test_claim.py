"""The paper's claim at test size, on procedural eyes with the true segmentation: the classical
iris-code pipeline is near-perfect on Control (frontal, clean) and breaks on Gaze (off-axis),
while NormFree, the recognition network on the iris crop, degrades much less and beats it there.

NormFree is the toy preset's network the package ships (``toy_normfree()``: training seed 1337,
1,000 steps of 64 on 200 subjects, float16 on disk; ``scripts/make_toy_weights.py`` remakes it,
about 6 CPU-minutes). Evaluation: 10 held-out subjects (ids disjoint from training) x 99
captures, left eye, Control and Gaze built by ``build_protocols``, about 25 CPU-s. The
README's table is the full-size version (30 subjects, every protocol, three training seeds).

At this size Control has a few hundred impostor pairs, so FAR 1e-3 has no support there; the
test compares EER and FRR at FAR 1e-1 (supported on both protocols) and rank-1.

Calibration: the shipped network (training seed 1337) and the toy networks of training seeds 1
and 2 (exported to float16 the same way), each on test sets of seeds 0-4, one torch thread as
the suite runs (15 runs; the classical rows depend on the test set only). Classical Control: EER
0, rank-1 1.0 in every run (24-34 genuine pairs); classical Gaze: EER 0.142-0.218, FRR at FAR
1e-1 0.173-0.331 (4,104-4,770 impostor pairs); NormFree minus classical on Gaze: EER 0.068-0.172
lower, FRR at FAR 1e-1 0.123-0.304 lower, rank-1 0.122-0.295 higher; NormFree's EER rise from
Control to Gaze over the classical one's: -0.01-0.43. Asserted: classical Control EER <= 0.02
and rank-1 1; classical Gaze EER >= 0.10 and FRR >= 0.12; NormFree better by > 0.04 EER, > 0.08
FRR, > 0.05 rank-1; rise ratio < 0.6. With 2 torch threads the three networks give the same
values on test-set seed 0 as with one (the test only evaluates fixed weights; the training seeds
stand for the trajectories another CPU would take). The test runs the shipped network on
test-set seed 0 (NormFree Gaze EER 0.062 against 0.158)."""

import pytest
import torch
from safetensors import safe_open

from facelab.immeriris import TOY_WEIGHTS, toy_normfree
from facelab.immeriris.evaluate import EvalConfig, evaluate
from facelab.immeriris.generator import OcularConfig


@pytest.fixture(scope="module")
def report():
    net = toy_normfree()
    cfg = EvalConfig(
        num_subjects=10,
        seed=0,
        generator=OcularConfig(repeats=1),
        protocols=("Control", "Gaze"),
        eyes=("left",),
        segmentations=("oracle",),
    )
    return evaluate(cfg, {"NormFree": net}, keep_curves=False, log=lambda *a: None).results


def test_the_shipped_weights_are_the_toy_normfree_in_float16():
    net = toy_normfree()
    assert net.paradigm == "normfree" and net.standardize
    assert net.crop_size == 48
    # stored in float16 (half the size), loaded into float32
    with safe_open(str(TOY_WEIGHTS / "model.safetensors"), "pt") as f:
        stored = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert "F16" in stored and "F32" not in stored, stored
    assert {p.dtype for p in net.parameters()} == {torch.float32}


def test_classical_is_strong_on_control_and_normfree_wins_off_axis(report):
    cl = report["classical (oracle seg.)"]
    nf = report["NormFree (oracle seg.)"]
    cc, cg = cl["Control-left"], cl["Gaze-left"]
    nc, ng = nf["Control-left"], nf["Gaze-left"]
    assert cc.n_genuine >= 20 and cg.n_impostor >= 2000  # both protocols are populated
    # the classical pipeline is near-perfect frontally ...
    assert cc.eer <= 0.02 and cc.rank1 == 1.0, (cc.eer, cc.rank1)
    # ... and breaks off-axis
    assert cg.eer >= 0.10 and cg.frr[1e-1] >= 0.12, (cg.eer, cg.frr)
    # NormFree beats it on Gaze
    assert ng.eer < cg.eer - 0.04, (ng.eer, cg.eer)
    assert ng.frr[1e-1] < cg.frr[1e-1] - 0.08, (ng.frr, cg.frr)
    assert ng.rank1 > cg.rank1 + 0.05, (ng.rank1, cg.rank1)
    # and degrades much less from Control to Gaze
    assert (ng.eer - nc.eer) < 0.6 * (cg.eer - cc.eer), (nc.eer, ng.eer, cc.eer, cg.eer)
