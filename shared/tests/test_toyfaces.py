import math

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata
from skimage import transform as sktransform

from facelab.core.data import toyfaces
from facelab.core.data.toyfaces import ToyFaces, make_pairs, to_float, to_uint8
from facelab.core.errors import FacelabTypeError, RangeError, ShapeError, UnknownNameError
from facelab.core.freq import DUETFACE_CLIENT, FrequencyCodec, merge_channels, split_channels

# ArcFace 112x112 template (specs/core.md) and MTCNN's five points on skimage's astronaut
# (facenet-pytorch MTCNN, measured once; MTCNN is an optional extra, so not run here).
ARCFACE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)
ASTRONAUT_POINTS = np.array(
    [
        [205.011, 101.727],
        [246.763, 103.714],
        [224.671, 128.965],
        [201.716, 139.246],
        [245.265, 141.857],
    ]
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Rendering is many small ops: on a shared 2-core machine one thread is much faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy64():
    return ToyFaces(16, 4, seed=3).render(slice(0, 64)).double()


@pytest.fixture(scope="module")
def astronaut():
    if hasattr(sktransform.SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tf = sktransform.SimilarityTransform.from_estimate(ASTRONAUT_POINTS, ARCFACE)
    else:
        tf = sktransform.SimilarityTransform()
        assert tf.estimate(ASTRONAUT_POINTS, ARCFACE)
    img = sktransform.warp(
        skdata.astronaut(), tf.inverse, output_shape=(112, 112), cval=0, preserve_range=True
    )
    return torch.from_numpy(img.astype(np.float64)).permute(2, 0, 1)[None] / 127.5 - 1


# --------------------------------------------------------------------------------------------
# independent spectral reference: JFIF YCbCr + scipy's per-block DCT


def client_energy_shares(x: torch.Tensor) -> tuple[float, float]:
    """(share of all energy, share of non-DC energy) in the DuetFace client coefficients."""
    rgb = (x.numpy() + 1) * 127.5
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    ycc = np.stack(
        [
            0.299 * r + 0.587 * g + 0.114 * b - 128,
            -0.168736 * r - 0.331264 * g + 0.5 * b,
            0.5 * r - 0.418688 * g - 0.081312 * b,
        ],
        1,
    )
    n, c, h, w = ycc.shape
    blocks = ycc.reshape(n, c, h // 8, 8, w // 8, 8)
    coef = scipy.fft.dctn(blocks, axes=(3, 5), norm="ortho")  # (n, c, hb, u, wb, v)
    energy = (coef**2).sum(axis=(0, 1, 2, 4)).reshape(64)  # per k = 8u + v
    client = energy[list(DUETFACE_CLIENT)].sum()
    total = energy.sum()
    return client / total, (client - energy[0]) / (total - energy[0])


def highpass_y(x: torch.Tensor) -> torch.Tensor:
    """Luminance of the image rebuilt from the server (non-client) DCT channels alone."""
    codec = FrequencyCodec("compact")
    c = codec.encode(x)
    client, server = split_channels(c, DUETFACE_CLIENT)
    hp = codec.decode(merge_channels(torch.zeros_like(client), server, DUETFACE_CLIENT))
    return (hp - codec.decode(torch.zeros_like(c))).mean(1)


def lowpass_y(x: torch.Tensor) -> torch.Tensor:
    codec = FrequencyCodec("compact")
    client, server = split_channels(codec.encode(x), DUETFACE_CLIENT)
    return codec.decode(merge_channels(client, torch.zeros_like(server), DUETFACE_CLIENT)).mean(1)


def outline_scores(x: torch.Tensor) -> tuple[float, float]:
    """How much the high-pass image looks like an outline drawing rather than noise.

    (share of high-pass energy on the 10 % strongest low-pass edges, share of high-pass energy
    in the 5 % most energetic pixels). White noise: about (0.1, 0.16); a drawing: both high.
    """
    hp = highpass_y(x) ** 2
    lp = lowpass_y(x)
    gy = lp[:, 2:, 1:-1] - lp[:, :-2, 1:-1]
    gx = lp[:, 1:-1, 2:] - lp[:, 1:-1, :-2]
    grad = F.pad((gx**2 + gy**2).sqrt(), (1, 1, 1, 1))
    thr = grad.flatten(1).quantile(0.9, dim=1).view(-1, 1, 1)
    on_edges = ((hp * (grad >= thr)).sum((1, 2)) / hp.sum((1, 2))).mean()
    e = hp.flatten(1)
    top = e.topk(e.shape[1] // 20, dim=1).values.sum(1) / e.sum(1)
    return float(on_edges), float(top.mean())


def hard_cartoons(n: int = 16, size: int = 112, seed: int = 0) -> torch.Tensor:
    """Hard-edged flat-colour faces drawn here (the kind of image DESIGN warns about)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    imgs = []
    for _ in range(n):
        r = torch.rand(12, generator=g)
        img = torch.ones(3, size, size) * (0.2 + 0.6 * r[0])
        face = ((xx - 56 - 4 * r[1]) / 38) ** 2 + ((yy - 60) / 50) ** 2 < 1
        img[:, face] = (torch.tensor([0.9, 0.7, 0.6]) * (0.5 + 0.5 * r[2]))[:, None]
        for ex in (38.0, 73.0):
            eye = ((xx - ex) / 7) ** 2 + ((yy - 52 - 3 * r[3]) / 3.5) ** 2 < 1
            img[:, eye] = 0.95
            img[:, (xx - ex) ** 2 + (yy - 52 - 3 * r[3]) ** 2 < 6] = 0.1
        mouth = ((xx - 56) / (14 + 3 * r[4])) ** 2 + ((yy - 92) / 2.5) ** 2 < 1
        img[:, mouth] = torch.tensor([0.7, 0.2, 0.2])[:, None]
        imgs.append(img)
    return torch.stack(imgs).double() * 2 - 1


# --------------------------------------------------------------------------------------------
# determinism, ranges, labels


def test_deterministic_and_seed_dependent():
    a = ToyFaces(4, 3, size=48).render(slice(None))
    b = ToyFaces(4, 3, size=48).render(slice(None))
    c = ToyFaces(4, 3, size=48, seed=1).render(slice(None))
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.1


def test_identity_offset_gives_the_same_people_and_disjoint_ranges():
    big = ToyFaces(6, 3, size=48)
    part = ToyFaces(3, 3, size=48, identity_offset=3)
    assert torch.equal(part.render(slice(None)), big.render(slice(9, 18)))
    # the first images of an identity do not depend on how many images the dataset holds
    assert torch.equal(ToyFaces(2, 2, size=48).render([0, 1, 2, 3]), big.render([0, 1, 3, 4]))
    # disjoint offset ranges: no identity's parameters coincide (nearest distance clearly > 0)
    p1 = ToyFaces(200, 1, size=32).identity_parameters()
    p2 = ToyFaces(200, 1, size=32, identity_offset=200).identity_parameters()
    scale = torch.cat([p1, p2]).std(0).clamp(min=1e-6)
    d = torch.cdist(p1 / scale, p2 / scale)
    within = torch.cdist(p1 / scale, p1 / scale) + torch.eye(200) * 1e9
    assert d.min() > 0.2 * within.min(1).values.median()
    assert not (p1[:, None, :] == p2[None, :, :]).all(-1).any()


def test_images_labels_range_and_8bit_grid():
    ds = ToyFaces(5, 4, size=64, seed=2)
    assert len(ds) == 20
    img, label = ds[7]
    assert img.dtype == torch.float32 and img.shape == (3, 64, 64)
    assert label.dtype == torch.int64 and int(label) == 1
    assert torch.equal(ds.labels, torch.arange(20) // 4)
    x = ds.render(slice(None))
    assert x.min() >= -1 and x.max() <= 1
    assert x.std() > 0.2  # not a blank image
    u8 = torch.round((x + 1) * 127.5)
    assert torch.equal(u8 / 127.5 - 1, x)  # exactly on the 8-bit grid
    assert torch.equal(to_float(to_uint8(x)), x)
    assert ds[-1][1] == 4 and torch.equal(ds[-1][0], ds[19][0])


def test_render_equals_getitem_and_materialize():
    ds = ToyFaces(7, 5, size=56, seed=4)
    idx = [33, 0, 17, 17, 5]
    batch = ds.render(idx)
    single = torch.stack([ds[i][0] for i in idx])
    assert torch.equal(batch, single)
    # batches longer than one render chunk, in any order
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))
    full = ds.render(perm)
    assert torch.equal(full[perm.argsort()], ds.render(torch.arange(len(ds))))
    u8 = ds.materialize()
    assert u8.dtype == torch.uint8 and u8.shape == (35, 3, 56, 56)
    assert ds.materialize() is u8  # cached
    assert torch.equal(ds[33][0], batch[0])  # served from the uint8 cache
    f = ds.materialize(torch.float32)
    assert torch.equal(f[idx], batch)
    assert torch.equal(ds[3][0], f[3])


def test_parts_do_not_depend_on_their_drawing_windows(monkeypatch):
    """Facial parts are drawn in windows that bound them for a whole batch; every part must
    fit its window (else a pixel would depend on which images share the batch): drawing
    everything on the full image must give the same pixels. Difficulty 3 has many occluders."""
    from facelab.core.data import _toyfaces_render

    ds = ToyFaces(12, 3, size=112, seed=5, difficulty=3.0)
    assert (ds.batch_attributes()["occlusion_type"] > 0).sum() >= 10
    windowed = ds.render(slice(None))
    monkeypatch.setattr(
        _toyfaces_render._Frame,
        "window",
        lambda self, *args, **kwargs: (slice(0, self.size), slice(0, self.size)),
    )
    assert torch.equal(ds.render(slice(None)), windowed)


def test_sizes_render_the_same_scene():
    """Geometry follows the template scaled to ``size``: a 112 px image pooled to 56 px is the
    56 px image of the same sample, up to texture and noise detail."""
    small = ToyFaces(2, 2, size=56, seed=1).render(slice(None))
    for size in (112, 224):
        big = F.avg_pool2d(ToyFaces(2, 2, size=size, seed=1).render(slice(None)), size // 56)
        for a, b in zip(big, small):
            assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.85
        assert (big - small).abs().mean() < 0.15
    other = ToyFaces(2, 2, size=56, seed=2).render(slice(None))
    assert (other - small).abs().mean() > 0.3


def test_dataloader_batches_render_together():
    ds = ToyFaces(5, 3, size=32, seed=6)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False)
    images, labels = zip(*loader)
    assert torch.equal(torch.cat(images), torch.stack([ds[i][0] for i in range(15)]))
    assert torch.equal(torch.cat(labels), ds.labels)
    assert len(ds.__getitems__([2, 2, -1])) == 3


def test_write_folders_round_trip(tmp_path):
    ds = ToyFaces(3, 2, size=32, seed=5)
    root = ds.write_folders(tmp_path / "toy")
    dirs = sorted(p.name for p in root.iterdir())
    assert dirs == ["00000", "00001", "00002"]
    for k in range(3):
        for j in range(2):
            png = np.array(Image.open(root / f"{k:05d}" / f"{j:03d}.png"))
            assert png.dtype == np.uint8 and png.shape == (32, 32, 3)
            ref = ds[k * 2 + j][0]
            back = torch.from_numpy(png).permute(2, 0, 1).float() / 127.5 - 1
            assert torch.equal(back, ref)
    with pytest.raises(FileExistsError):
        ds.write_folders(root)
    ds.write_folders(root, overwrite=True)


# --------------------------------------------------------------------------------------------
# photograph-like statistics


def test_spectral_energy_close_to_a_real_aligned_face(toy64, astronaut):
    ref_all, ref_ac = client_energy_shares(astronaut)
    assert ref_all == pytest.approx(0.98, abs=0.005) and ref_ac == pytest.approx(0.86, abs=0.01)
    toy_all, toy_ac = client_energy_shares(toy64)
    assert 0.96 <= toy_all <= 0.995
    assert 0.80 <= toy_ac <= 0.92
    assert abs(toy_ac - ref_ac) < 0.04
    # the same numbers through the project's codec (compact mode, DuetFace client channels)
    c = FrequencyCodec("compact").encode(toy64)
    client, _ = split_channels(c, DUETFACE_CLIENT)
    dc = (c[:, [0, 64, 128]] ** 2).sum()
    share_all = float((client**2).sum() / (c**2).sum())
    share_ac = float(((client**2).sum() - dc) / ((c**2).sum() - dc))
    assert share_all == pytest.approx(toy_all, abs=1e-6)
    assert share_ac == pytest.approx(toy_ac, abs=1e-6)


def test_highpass_looks_like_noise_not_an_outline(toy64, astronaut):
    toy_edges, toy_peak = outline_scores(toy64)
    ref_edges, ref_peak = outline_scores(astronaut)
    cart_edges, cart_peak = outline_scores(hard_cartoons())
    # hard cartoons: the high-pass energy sits on their outlines; the real face is in between
    assert cart_edges > 0.6 and cart_peak > 0.6
    assert toy_edges < ref_edges + 0.05 and toy_peak < ref_peak + 0.05
    assert toy_edges < cart_edges - 0.25 and toy_peak < cart_peak - 0.2


def test_identity_learnable_by_a_cheap_proxy_but_nuisance_is_real():
    ids, per = 24, 6
    codec = FrequencyCodec("compact")
    accs = {}
    for diff in ("easy", "default", "hard"):
        ds = ToyFaces(ids, per, size=48, seed=7, difficulty=diff)
        x = ds.render(slice(None))
        feats = split_channels(codec.encode(x), DUETFACE_CLIENT)[0].flatten(1)
        feats = F.normalize(feats - feats.mean(0), dim=1).view(ids, per, -1)
        means = F.normalize(feats[:, : per // 2].mean(1), dim=1)  # enrol half of the images
        probe = feats[:, per // 2 :].reshape(-1, feats.shape[-1])
        truth = torch.arange(ids).repeat_interleave(per - per // 2)
        accs[diff] = float(((probe @ means.T).argmax(1) == truth).float().mean())
        if diff == "default":
            # images of one identity differ a lot: same-identity pixel distance is a large
            # fraction of the distance between identities
            x = x.view(ids, per, -1)
            same = (x[:, :1] - x[:, 1:]).abs().mean()
            other = (x[:1, :1] - x[1:, :1]).abs().mean()
            assert same > 0.45 * other and same > 0.2
    chance = 1 / ids
    assert accs["default"] > 5 * chance  # far above chance (measured: 8x) ...
    assert accs["default"] < 0.95  # ... but a nearest-mean probe does not solve it
    assert accs["easy"] > accs["default"] > accs["hard"]


def test_difficulty_zero_removes_the_nuisance():
    ds = ToyFaces(3, 4, size=64, difficulty=0.0)
    att = ds.batch_attributes()
    for name in ("yaw", "pitch", "roll", "smile", "mouth_open", "occlusion_amount"):
        assert torch.all(att[name] == 0), name
    assert torch.all(att["occlusion_type"] == 0)
    assert torch.all(att["eye_openness"] == 1)


# --------------------------------------------------------------------------------------------
# attributes


def test_attributes_shapes_ranges_and_consistency():
    ds = ToyFaces(40, 5, size=32, seed=9, identity_offset=100)
    att = ds.batch_attributes()
    assert tuple(att) == toyfaces.ATTRIBUTE_NAMES
    for name, v in att.items():
        assert v.shape == (200,), name
        assert torch.isfinite(v.float()).all(), name
    assert torch.equal(att["label"], ds.labels)
    assert torch.equal(att["identity"], ds.labels + 100)
    assert torch.equal(att["image"], torch.arange(200) % 5)
    assert att["yaw"].abs().max() <= 60 and att["yaw"].std() > 5
    assert att["roll"].abs().max() <= 30 and att["pitch"].abs().max() <= 40
    assert ((att["smile"] >= 0) & (att["smile"] <= 1)).all()
    assert ((att["eye_openness"] > 0) & (att["eye_openness"] <= 1)).all()
    assert ((att["blur_sigma"] > 0) & (att["noise_sigma"] > 0)).all()
    assert set(att["occlusion_type"].tolist()) <= set(range(len(toyfaces.OCCLUSION_TYPES)))
    assert 0.05 < (att["occlusion_type"] > 0).float().mean() < 0.5
    assert set(att["skin_tone_group"].tolist()) <= set(range(toyfaces.SKIN_TONE_GROUPS))
    assert len(set(att["skin_tone_group"].tolist())) == toyfaces.SKIN_TONE_GROUPS
    assert ((att["skin_tone"] >= 0) & (att["skin_tone"] <= 1)).all()
    # the tone group is the sixth the continuous tone falls in
    assert torch.equal(att["skin_tone_group"], (att["skin_tone"] * 6).long())
    # identity-level attributes are constant within an identity, image-level ones are not
    for name in toyfaces.IDENTITY_ATTRIBUTES:
        v = att[name].view(40, 5).float()
        assert torch.all(v == v[:, :1]), name
    assert (att["yaw"].view(40, 5).std(1) > 0).all()
    one = ds.attributes(13)
    for name, v in one.items():
        assert v == pytest.approx(float(att[name][13])), name
    assert isinstance(one["occlusion_type"], int) and isinstance(one["yaw"], float)
    sub = ds.batch_attributes([13, 2])
    assert torch.equal(sub["yaw"], att["yaw"][[13, 2]])


def test_attributes_describe_the_image():
    """Darker skin tones render darker faces; sunglasses darken the eyes."""
    ds = ToyFaces(40, 6, size=48, seed=11)
    att = ds.batch_attributes()
    x = (ds.render(slice(None)) + 1) / 2
    lum = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    s = 48 / 112
    cheeks = lum[:, int(62 * s) : int(70 * s), int(30 * s) : int(82 * s)].mean((1, 2))
    tone = att["skin_tone"].numpy()
    corr = np.corrcoef(tone, cheeks.numpy())[0, 1]
    assert corr < -0.5
    eyes = lum[:, int(46 * s) : int(58 * s), int(30 * s) : int(82 * s)].mean((1, 2))
    sun = att["occlusion_type"] == toyfaces.OCCLUSION_TYPES.index("sunglasses")
    none = att["occlusion_type"] == 0
    assert sun.sum() >= 3
    assert eyes[sun].mean() < eyes[none].mean() - 0.08


# --------------------------------------------------------------------------------------------
# verification pairs


def test_make_pairs_balanced_unique_and_deterministic():
    ds = ToyFaces(30, 6, size=32)
    i1, i2, same = make_pairs(ds, 400, seed=3)
    assert i1.dtype == torch.int64 and same.dtype == torch.bool
    assert len(i1) == 400 and int(same.sum()) == 200
    lab = ds.labels
    for a, b, s in zip(i1.tolist(), i2.tolist(), same.tolist()):  # brute-force check
        assert a < b
        assert (lab[a] == lab[b]) == s
    keys = set(zip(i1.tolist(), i2.tolist()))
    assert len(keys) == 400
    j1, j2, s2 = make_pairs(ds, 400, seed=3)
    assert torch.equal(i1, j1) and torch.equal(i2, j2) and torch.equal(same, s2)
    k1, _, _ = make_pairs(ds, 400, seed=4)
    assert not torch.equal(i1, k1)
    # dense request: every genuine pair of a small set, labels as a tensor
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    i1, i2, same = make_pairs(labels, 8, seed=0)
    genuine = sorted(zip(i1[same].tolist(), i2[same].tolist()))
    assert genuine == [(0, 1), (2, 3), (2, 4), (3, 4)]
    assert (labels[i1[~same]] != labels[i2[~same]]).all()


def test_make_pairs_bad_input():
    ds = ToyFaces(2, 2, size=32)
    with pytest.raises(RangeError, match="genuine"):
        make_pairs(ds, 10)  # only 2 genuine pairs exist
    with pytest.raises(RangeError):
        make_pairs(ds, 1)
    with pytest.raises(ShapeError):
        make_pairs(torch.zeros(4), 2)
    with pytest.raises(FacelabTypeError):
        make_pairs([0, 0, 1, 1], 2)
    with pytest.raises(RangeError, match="impostor"):
        make_pairs(torch.zeros(6, dtype=torch.int64), 2)  # one identity: no impostors


# --------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_identities": 0}, RangeError, "num_identities"),
        ({"num_identities": -3}, RangeError, "num_identities"),
        ({"images_per_identity": 0}, RangeError, "images_per_identity"),
        ({"size": 100}, ShapeError, "multiple of 8"),
        ({"size": 24}, ShapeError, "at least 32"),
        ({"seed": -1}, RangeError, "seed"),
        ({"identity_offset": -5}, RangeError, "identity_offset"),
        ({"difficulty": "medium"}, UnknownNameError, "difficulty"),
        ({"difficulty": 5.0}, RangeError, "difficulty"),
        ({"difficulty": math.nan}, RangeError, "difficulty"),
        ({"num_identities": 2.5}, FacelabTypeError, "num_identities"),
        ({"size": True}, FacelabTypeError, "size"),
    ],
)
def test_constructor_rejects_bad_input(kwargs, error, match):
    args = {"num_identities": 2, "images_per_identity": 2, "size": 32} | kwargs
    with pytest.raises(error, match=match):
        ToyFaces(**args)


def test_indexing_rejects_bad_input():
    ds = ToyFaces(2, 3, size=32)
    with pytest.raises(IndexError, match="out of range"):
        ds[6]
    with pytest.raises(IndexError):
        ds[-7]
    with pytest.raises(FacelabTypeError):
        ds[1.0]
    with pytest.raises(IndexError, match="out of range"):
        ds.render([0, 6])
    with pytest.raises(FacelabTypeError):
        ds.render(torch.tensor([0.0, 1.0]))
    with pytest.raises(ShapeError):
        ds.render(torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(IndexError):
        ds.attributes(99)
    with pytest.raises(FacelabTypeError):
        ds.materialize(torch.int32)
    assert ds.render([]).shape == (0, 3, 32, 32)
