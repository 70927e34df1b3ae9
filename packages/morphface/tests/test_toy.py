"""Styled toyfaces: per-identity styles, the exact toyfaces -> 3DMM mapping, the renderer."""

import torch

from facelab.core.data import ToyFaces
from facelab.morphface.prior import StylePrior, subject_statistics
from facelab.morphface.render import StyleRenderer
from facelab.morphface.toy import EXPRESSIVE_STYLE, StyledToyFaces, toy_style_params


def test_styles_are_subject_specific_unlike_plain_toyfaces():
    styled = StyledToyFaces(30, 6, size=32, seed=0, difficulty="easy")
    plain = ToyFaces(30, 6, size=32, seed=0, difficulty="easy")
    t = styled.regression_targets()
    yaw_styled = subject_statistics(t[:, 0], styled.labels)
    yaw_plain = subject_statistics(plain._imp["yaw"], plain.labels)
    # config: between 14 deg, within 6 deg -> ICC = 196 / 232 = 0.84 in expectation
    assert yaw_styled["icc"] > 0.6
    assert yaw_plain["icc"] < 0.2
    smile = subject_statistics(t[:, 2], styled.labels)
    assert smile["icc"] > 0.4
    # the same identity keeps its habitual style in another dataset (pure function of seed, id)
    again = StyledToyFaces(5, 6, size=32, seed=0, difficulty="easy", identity_offset=2)
    torch.testing.assert_close(again.regression_targets()[:6], t[12:18])


def test_mapped_params_render_where_the_toy_face_is(head):
    toy = ToyFaces(6, 2, size=64, seed=1, difficulty="easy")
    params = toy_style_params(toy)
    assert len(params) == 12 and params.layout.num_shape == head.num_shape
    r = StyleRenderer(head, 64).render(params)
    mask = r.mask[:, 0]
    # the head covers the image centre and not the corners, and its centroid moves with yaw
    assert bool(mask[:, 28:36, 28:36].all())
    assert not bool(mask[:, :4, :4].any())
    cols = torch.arange(64).float()
    cx = (mask.sum(1) * cols).sum(1) / mask.sum((1, 2))
    # the nose tip projects inside the head, off the head centre towards the yaw side
    from facelab.morphface.geometry import project

    verts = head.vertices(params.shape, params.expression)
    screen, _ = project(verts, params.pose, params.camera, (64, 64))
    nose = screen[:, head.landmarks[2], :2]
    centre, _ = project(torch.zeros(12, 1, 3), params.pose, params.camera, (64, 64))
    inside = mask[torch.arange(12), nose[:, 1].long(), nose[:, 0].long()]
    assert bool(inside.all())
    yaw = params.pose[:, 0]
    turned = yaw.abs() > 0.15
    assert turned.any()
    dx = nose[:, 0] - centre[:, 0, 0]
    assert bool((torch.sign(dx[turned]) == torch.sign(yaw[turned])).all())
    assert cx.min() > 20 and cx.max() < 44


def test_prior_fitted_on_toy_params_reproduces_subject_structure():
    toy = StyledToyFaces(40, 5, size=32, seed=2, difficulty="easy")
    params = toy.style_params()
    prior = StylePrior.fit(params, toy.labels)
    gen, labels = prior.sample(40, 5, seed=0)
    real_icc = subject_statistics(params.pose[:, 0], toy.labels)["icc"]
    gen_icc = subject_statistics(gen.pose[:, 0], labels)["icc"]
    assert real_icc > 0.6 and gen_icc > 0.5


def test_expressive_style_moves_expression_variance_within_subjects():
    """EXPRESSIVE_STYLE (the toy-expression preset's data): expression mostly within a subject,
    mouth opening and brow raise with a wider spread, pose as in the defaults."""
    default = StyledToyFaces(40, 10, size=32, seed=0, difficulty="easy")
    wide = StyledToyFaces(40, 10, size=32, seed=0, difficulty="easy", style=EXPRESSIVE_STYLE)
    td, tw = default.regression_targets(), wide.regression_targets()
    for k in (2, 3, 4):  # smile, mouth opening, brow raise
        assert subject_statistics(td[:, k], default.labels)["icc"] > 0.6
        assert subject_statistics(tw[:, k], wide.labels)["icc"] < 0.45
    spread = tw[:, 2:].std(0) / td[:, 2:].std(0)
    assert 0.7 < float(spread[0]) < 1.4  # smile: the same total spread
    assert bool((spread[1:] > 2.0).all())  # mouth, brow: wider
    torch.testing.assert_close(tw[:, :2], td[:, :2])  # pose untouched


def test_toy_expression_preset_is_the_toy_preset_on_expressive_styles(tmp_path):
    from dataclasses import replace

    import pytest

    from facelab.core.errors import UnknownNameError
    from facelab.morphface.bench import toy_train_config
    from facelab.morphface.train import morphface_presets

    presets = morphface_presets()
    assert presets["toy-expression"] == replace(
        presets["toy"], style=replace(presets["toy"].style, toy=EXPRESSIVE_STYLE)
    )
    cfg = toy_train_config(tmp_path, preset="toy-expression")
    assert cfg.style.toy == EXPRESSIVE_STYLE and cfg.train.output_dir == str(tmp_path)
    with pytest.raises(UnknownNameError, match="toy-data presets"):
        toy_train_config(tmp_path, preset="paper")
    with pytest.raises(UnknownNameError, match="toy-data presets"):
        toy_train_config(tmp_path, preset="toyy")
