import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import TensorDataset

from facelab.core.errors import (
    FacelabTypeError,
    FormatError,
    NonFiniteError,
    RangeError,
    ShapeError,
    ZeroVectorError,
)
from facelab.core.privacy import (
    AttackConfig,
    InversionAttack,
    build_decoder,
    compare_attacks,
    evaluate_reconstructions,
    identity_leakage,
    make_grid,
    mean_image_baseline,
    pair_scores,
    psnr,
    save_grid,
    ssim,
    success_rate,
    threshold_at_far,
    to_uint8,
)

SIZE = 32
TINY = dict(width=8, depth=2, mlp_hidden=64)


@pytest.fixture(autouse=True)
def one_thread():
    """Train single-threaded: on a shared, busy 2-core machine, two intra-op threads per
    process oversubscribe the cores and make these small convolutions ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def blobs(n, size=SIZE, seed=0):
    """Smooth random colour blobs in [-1, 1]: a 4x4 random field, bicubic-upsampled."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, 4, 4, generator=g)
    return torch.tanh(F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False))


def noisy(x, sigma, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)


# ------------------------------------------------------------------------------------------
# metrics against independent computations
# ------------------------------------------------------------------------------------------


def reference_ssim(x, y):
    """Gaussian-window SSIM written out in numpy on [0, 1] images (reflect borders,
    full-map mean, channel mean), one image at a time."""
    x = (x.double().numpy() + 1) / 2
    y = (y.double().numpy() + 1) / 2
    k = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(k / k.sum(), k / k.sum())

    def blur(im):  # "valid" correlation of the reflect-padded image with the window
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(im, 5, mode="reflect"), (11, 11))
        return np.einsum("ijkl,kl->ij", windows, w)

    c1, c2 = 0.01**2, 0.03**2
    per_channel = []
    for c in range(3):
        mx, my = blur(x[c]), blur(y[c])
        sxx = blur(x[c] ** 2) - mx**2
        syy = blur(y[c] ** 2) - my**2
        sxy = blur(x[c] * y[c]) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
        per_channel.append(s.mean())
    return float(np.mean(per_channel))


def test_ssim_matches_reference_and_identical_is_one():
    a = blobs(3)
    b = noisy(a, 0.3)
    ours = ssim(b, a)
    ref = [reference_ssim(b[i], a[i]) for i in range(3)]
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5)
    assert torch.allclose(ssim(a, a), torch.ones(3), atol=1e-6)
    assert bool((ours < 0.99).all())


def test_psnr_matches_formula():
    a = blobs(4)
    b = noisy(a, 0.1)
    x, y = (a.double().numpy() + 1) / 2, (b.double().numpy() + 1) / 2
    mse = ((x - y) ** 2).reshape(4, -1).mean(1)
    np.testing.assert_allclose(psnr(b, a).numpy(), 10 * np.log10(1.0 / mse), rtol=1e-5)
    assert torch.isinf(psnr(a, a)).all()


class PixelRecognizer(nn.Module):
    """A fixed random projection of the pixels: an 'independent recognizer' for the tests."""

    def __init__(self, size=SIZE, dim=16):
        super().__init__()
        self.proj = nn.Linear(3 * size * size, dim)
        with torch.no_grad():
            g = torch.Generator().manual_seed(123)
            self.proj.weight.copy_(torch.randn(dim, 3 * size * size, generator=g) / 50)
            self.proj.bias.copy_(torch.randn(dim, generator=g))

    def forward(self, x):
        return self.proj(x.flatten(1))


class FirstPixel(nn.Module):
    """Embedding = the RGB value of pixel (0, 0): lets a test set embeddings by hand."""

    def forward(self, x):
        return x[:, :, 0, 0]


def images_with_embeddings(emb, size=SIZE):
    x = torch.zeros(emb.shape[0], 3, size, size)
    x[:, :, 0, 0] = emb
    return x


def test_identity_leakage_is_cosine_by_hand():
    rec = PixelRecognizer()
    a = blobs(5)
    b = noisy(a, 0.5)
    ours = identity_leakage(rec, a, b, batch_size=2)
    with torch.no_grad():
        for i in range(5):
            ea = rec(a[i : i + 1])[0].double().numpy()
            eb = rec(b[i : i + 1])[0].double().numpy()
            cos = ea @ eb / (np.linalg.norm(ea) * np.linalg.norm(eb))
            assert ours[i].item() == pytest.approx(cos, abs=1e-5)
    result = evaluate_reconstructions(b, a, recognizer=rec)
    assert result.identity_leakage == pytest.approx(float(ours.mean()), abs=1e-6)
    assert torch.allclose(result.leakage_scores, ours)
    assert result.leakage_std == pytest.approx(float(ours.std()), abs=1e-6)
    assert result.leakage_quantiles([0.5])[0] == pytest.approx(float(ours.median()), abs=1e-5)
    assert result.success_rate is None


def test_threshold_at_far_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2000, generator=g, dtype=torch.float64)
    ties = torch.round(torch.rand(3000, generator=g, dtype=torch.float64) * 20) / 20
    for s in (scores, ties):
        x = s.numpy()
        candidates = np.unique(x)
        # brute force: FAR (fraction of scores > c) of every candidate c; take the lowest c
        # whose FAR is <= far
        fars = (x[None, :] > candidates[:, None]).mean(1)
        for far in (1e-3, 1e-2, 0.1, 0.25):
            t = threshold_at_far(s, far)
            assert t == candidates[np.argmax(fars <= far)]
            assert float((s > t).double().mean()) <= far


def test_success_rate_hand_made():
    scores = torch.tensor([0.1, 0.5, 0.7, 0.9, 0.5])
    assert success_rate(scores, 0.5) == pytest.approx(2 / 5)  # strictly above
    assert success_rate(scores, 0.05) == 1.0
    assert success_rate(scores, 0.95) == 0.0


def test_pair_scores_match_double_loop():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(9, 4, generator=g, dtype=torch.float64)
    labels = [0, 0, 1, 1, 1, 2, 3, 3, 0]
    genuine, impostor = pair_scores(e, labels, chunk=4)
    en = (e / e.norm(dim=1, keepdim=True)).numpy()
    gen_ref, imp_ref = [], []
    for i in range(9):
        for j in range(i + 1, 9):
            (gen_ref if labels[i] == labels[j] else imp_ref).append(en[i] @ en[j])
    np.testing.assert_allclose(sorted(genuine.tolist()), sorted(gen_ref), atol=1e-12)
    np.testing.assert_allclose(sorted(impostor.tolist()), sorted(imp_ref), atol=1e-12)


def test_success_rate_against_original_and_identity():
    # embeddings (pixel 0,0) chosen by hand; unit directions in 3-D
    org = torch.tensor(
        [[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0], [0, 0.8, 0.2], [0, 0, 1.0], [0.5, 0.5, 0]]
    )
    rec = torch.tensor(
        [[1.0, 0, 0], [1.0, 0, 0], [0, 0.9, 0.1], [0.7, 0.7, 0], [0, 0, 1.0], [0, 0, 1.0]]
    )
    labels = torch.tensor([0, 0, 1, 1, 2, 3])
    threshold = 0.8
    ev = dict(recognizer=FirstPixel(), threshold=threshold)
    a, b = images_with_embeddings(org) * 0.5, images_with_embeddings(rec) * 0.5

    def cos(u, v):
        return float(u @ v / (u.norm() * v.norm()))

    res = evaluate_reconstructions(b, a, match="original", **ev)
    expected = np.mean([cos(rec[i], org[i]) > threshold for i in range(6)])
    assert res.success_rate == pytest.approx(expected)
    assert res.match == "original" and res.threshold == threshold

    res = evaluate_reconstructions(b, a, labels=labels, **ev)  # labels -> identity by default
    rates = []
    for i in range(6):
        mates = [j for j in range(6) if j != i and labels[j] == labels[i]]
        if mates:
            rates.append(np.mean([cos(rec[i], org[j]) > threshold for j in mates]))
    assert res.match == "identity"
    assert res.success_rate == pytest.approx(np.mean(rates))
    assert res.success_rate != pytest.approx(expected)  # the two modes really differ here


def test_threshold_chosen_at_far_on_real_images():
    g = torch.Generator().manual_seed(3)
    n_ids, per_id = 12, 4
    centers = torch.randn(n_ids, 3, generator=g)
    emb = centers.repeat_interleave(per_id, 0) + 0.3 * torch.randn(n_ids * per_id, 3, generator=g)
    labels = torch.arange(n_ids).repeat_interleave(per_id)
    a = images_with_embeddings(emb / emb.abs().max())
    b = images_with_embeddings(noisy(emb / emb.abs().max(), 0.2, seed=4))
    res = evaluate_reconstructions(b, a, recognizer=FirstPixel(), labels=labels, far=0.1)
    e = (emb / emb.norm(dim=1, keepdim=True)).double()
    impostor = [
        float(e[i] @ e[j])
        for i in range(len(e))
        for j in range(i + 1, len(e))
        if labels[i] != labels[j]
    ]
    brute = next(
        c for c in sorted(set(impostor)) if sum(v > c for v in impostor) / len(impostor) <= 0.1
    )
    assert res.threshold == pytest.approx(brute, abs=1e-6)
    assert res.far == 0.1 and 0.0 <= res.success_rate <= 1.0
    genuine = [
        float(e[i] @ e[j])
        for i in range(len(e))
        for j in range(i + 1, len(e))
        if labels[i] == labels[j]
    ]
    assert res.real_genuine_accept_rate == pytest.approx(np.mean(np.array(genuine) > brute))


# ------------------------------------------------------------------------------------------
# grids
# ------------------------------------------------------------------------------------------


def test_to_uint8_endpoints():
    x = torch.tensor([-1.0, 0.0, 1.0, -0.5]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (1, 1, 4, 3)
    assert out[0, 0, :, 0].tolist() == [0, round(127.5), 255, round(0.5 * 127.5)]


def test_grid_png_has_expected_size_and_pixels(tmp_path):
    a = blobs(5, size=16)
    recs = {"attack A": noisy(a, 0.2), "a much longer attack name": noisy(a, 0.6, seed=2)}
    n, pad, scale, lw = 3, 2, 2, 40
    path = save_grid(
        tmp_path / "sub" / "grid.png", a, recs, n=n, pad=pad, scale=scale, label_width=lw
    )
    img = np.asarray(Image.open(path))
    rows, cell = 3, 16 * scale
    assert img.shape == (rows * (cell + pad) + pad, lw + n * (cell + pad) + pad, 3)
    # cell (row 1 = first attack, column 2) holds that reconstruction, pixel-repeated
    top, left = pad + 1 * (cell + pad), lw + pad + 2 * (cell + pad)
    expected = to_uint8(recs["attack A"][2:3])[0].repeat(scale, 0).repeat(scale, 1)
    np.testing.assert_array_equal(img[top : top + cell, left : left + cell], expected)
    # without labels there is no label column; n larger than the batch shows the whole batch
    bare = make_grid(a, recs["attack A"], n=10, pad=1, labels=False)
    assert bare.shape == (2 * 17 + 1, 5 * 17 + 1, 3)
    with pytest.raises(ShapeError):
        make_grid(a, {"x": blobs(5, size=8)})


# ------------------------------------------------------------------------------------------
# the attack
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obs_shape", "image_shape"),
    [
        ((3, 32, 32), (3, 32, 32)),  # images themselves
        ((27, 16, 16), (3, 32, 32)),  # integer upscale: pixel shuffle
        ((192, 4, 4), (3, 32, 32)),  # compact DCT layout (x8)
        ((5, 12, 12), (3, 32, 32)),  # non-integer upscale: bilinear
        ((3, 64, 64), (3, 32, 32)),  # downscale
        ((784,), (3, 32, 32)),  # SlerpFace-like 49x16 template, flattened
        ((512,), (3, 56, 56)),  # embedding -> 7x7 -> 56 exactly
        ((16,), (3, 32, 24)),  # non-square target
    ],
)
def test_decoder_adapts_to_observation_shape(obs_shape, image_shape):
    dec = build_decoder(obs_shape, image_shape, AttackConfig(width=4, depth=2, mlp_hidden=16))
    dec.eval()
    out = dec(torch.randn(2, *obs_shape) * 50)
    assert out.shape == (2, *image_shape)
    assert bool((out.abs() <= 1).all())


def image_vs_noise_attacks(seed: int = 0, grid_path=None) -> list[dict]:
    """Attacks from the images themselves and from noise (``seed``: the attacks' seed)."""
    train, test = blobs(128), blobs(48, seed=1)
    g = torch.Generator().manual_seed(5)
    noise_train = torch.randn(128, 3, SIZE, SIZE, generator=g)
    noise_test = torch.randn(48, 3, SIZE, SIZE, generator=g)
    return compare_attacks(
        {"image": (train, test), "noise": (noise_train, noise_test)},
        train,
        test,
        config=AttackConfig(**TINY),
        steps=100,
        batch_size=8,
        lr=3e-3,
        seed=seed,
        device="cpu",
        grid_path=grid_path,
        grid_samples=4,
    )


def measure_image_attack(seed: int = 0, rows=None) -> dict[str, float]:
    """What the image-vs-noise test asserts on (also measured by scripts/calibrate_claims.py)."""
    by = {r["attack"]: r for r in (rows or image_vs_noise_attacks(seed))}
    return {
        "image_ssim": by["image"]["ssim"],
        "noise_ssim": by["noise"]["ssim"],
        "mean_ssim": by["mean image"]["ssim"],
        "noise_minus_mean_ssim": by["noise"]["ssim"] - by["mean image"]["ssim"],
        "image_minus_noise_ssim": by["image"]["ssim"] - by["noise"]["ssim"],
        "image_minus_noise_psnr": by["image"]["psnr"] - by["noise"]["psnr"],
    }


def test_image_attack_reconstructs_noise_attack_does_not(tmp_path):
    train, test = blobs(128), blobs(48, seed=1)
    rows = image_vs_noise_attacks(grid_path=tmp_path / "grid.png")
    by = {r["attack"]: r for r in rows}
    assert list(by) == ["mean image", "image", "noise"]
    base = mean_image_baseline(train, test)
    assert by["mean image"]["ssim"] == pytest.approx(base.ssim)
    # independent check of the baseline number
    mean = train.mean(0, keepdim=True).expand_as(test)
    assert base.ssim == pytest.approx(
        np.mean([reference_ssim(mean[i], test[i]) for i in range(48)]), abs=1e-4
    )
    m = measure_image_attack(rows=rows)
    print({k: round(v, 3) for k, v in m.items()})
    # calibrated (scripts/calibrate_claims.py core-attack-image; attack seeds 0-4 x torch
    # threads 1 and 2, 10 runs): image SSIM 0.732-0.796 (this seed 0.796), noise - mean image
    # SSIM -0.021..-0.009, image - noise SSIM 0.588-0.665 and PSNR 9.2-12.0 dB (the two thread
    # counts agree to 0.001). The image threshold was 0.7, 0.03 under the
    # worst seed; 0.65 keeps a margin of two seed spreads and still says "reconstructs"
    # (noise and the mean image score 0.13-0.15)
    assert m["image_ssim"] > 0.65
    assert m["noise_minus_mean_ssim"] < 0.1
    assert m["image_minus_noise_ssim"] > 0.4
    assert m["image_minus_noise_psnr"] > 5
    assert by["image"]["observation"] == "3x32x32"
    assert math.isnan(by["image"]["identity_leakage"])
    assert Image.open(tmp_path / "grid.png").size[1] == 3 * (SIZE + 2) + 2


def measure_code_attack(seed: int = 0) -> dict[str, float]:
    """An attack from an invertible linear code of the image vs one from noise (``seed``: the
    attacks' seed; also measured by scripts/calibrate_claims.py)."""
    g = torch.Generator().manual_seed(0)
    basis = F.interpolate(torch.randn(8, 3, 4, 4, generator=g), size=(SIZE, SIZE), mode="bicubic")

    def coded(n, s):
        z = torch.randn(n, 8, generator=torch.Generator().manual_seed(s))
        return z, torch.tanh(0.5 * torch.einsum("nk,kchw->nchw", z, basis))

    z_train, train = coded(256, 1)
    z_test, test = coded(64, 2)
    mix = torch.randn(8, 8, generator=g)  # invertible (a Gaussian matrix is, almost surely)
    assert torch.linalg.matrix_rank(mix) == 8
    results = {}
    for name, (tr, te) in {
        "code": (z_train @ mix, z_test @ mix),
        "noise": (torch.randn(256, 8, generator=g), torch.randn(64, 8, generator=g)),
    }.items():
        attack = InversionAttack(seed=seed, device="cpu", **TINY)
        attack.fit(tr, train, steps=120, batch_size=8, lr=3e-3)
        results[name] = attack.evaluate(te, test)
    base = mean_image_baseline(train, test)
    return {
        "code_ssim": results["code"].ssim,
        "noise_ssim": results["noise"].ssim,
        "mean_ssim": base.ssim,
        "code_minus_noise_ssim": results["code"].ssim - results["noise"].ssim,
        "code_minus_mean_ssim": results["code"].ssim - base.ssim,
        "noise_minus_mean_ssim": results["noise"].ssim - base.ssim,
    }


def test_vector_code_attack_beats_noise():
    m = measure_code_attack()
    print({k: round(v, 3) for k, v in m.items()})
    # calibration (`uv run python scripts/calibrate_claims.py core-attack-code`, seeds default + 1..4 x torch threads 1 and 2, 10 runs;
    # the same at both thread counts): code - noise SSIM 0.525..0.547, code - mean 0.503..0.535,
    # noise - mean -0.026..-0.012
    assert m["code_minus_noise_ssim"] > 0.3
    assert m["code_minus_mean_ssim"] > 0.3
    assert m["noise_minus_mean_ssim"] < 0.1


def small_problem(n=24, obs_dim=None, seed=0):
    img = blobs(n, seed=seed)
    obs = (
        img
        if obs_dim is None
        else torch.randn(n, obs_dim, generator=torch.Generator().manual_seed(seed))
    )
    return obs, img


def test_deterministic_with_seed_and_leaves_global_rng_alone():
    obs, img = small_problem()
    state = torch.random.get_rng_state()
    runs = []
    for seed in (7, 7, 8):
        attack = InversionAttack(seed=seed, device="cpu", width=4, depth=1)
        history = attack.fit(obs, img, steps=6, batch_size=8, log_every=2)
        runs.append((history.losses, attack.reconstruct(obs)))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert runs[0][0] == runs[1][0] and len(runs[0][0]) == 3
    assert torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][1], runs[2][1])


def test_ssim_loss_term_is_added():
    obs, img = small_problem()
    first = {}
    for w in (0.0, 0.5):
        attack = InversionAttack(seed=0, device="cpu", width=4, depth=1, ssim_weight=w)
        # batch = whole set, so the first-step loss does not depend on the shuffling
        first[w] = attack.fit(obs, img, steps=1, batch_size=24, log_every=1).losses[0]
    assert 0.0 < first[0.5] - first[0.0] <= 0.5 * 2


def test_save_load_round_trip(tmp_path):
    obs, img = small_problem(obs_dim=40)
    attack = InversionAttack(seed=3, device="cpu", width=4, depth=1, mlp_hidden=16)
    attack.fit(obs, img, steps=3, batch_size=8)
    path = attack.save(tmp_path / "attack.safetensors")
    loaded = InversionAttack.load(path, device="cpu")
    assert loaded.config == attack.config and loaded.seed == 3
    assert torch.equal(loaded.reconstruct(obs), attack.reconstruct(obs))
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left nothing behind
    # continued training works on a loaded attack
    loaded.fit(obs, img, steps=1, batch_size=8)
    with pytest.raises(ShapeError, match="trained on observations"):
        loaded.reconstruct(torch.randn(2, 41))

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(FormatError):
        InversionAttack.load(corrupt)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(FormatError, match="not a saved InversionAttack"):
        InversionAttack.load(foreign)
    with pytest.raises(FileNotFoundError):
        InversionAttack.load(tmp_path / "missing.safetensors")


def test_dataset_input_matches_tensor_evaluation():
    obs, img = small_problem()
    attack = InversionAttack(seed=0, device="cpu", width=4, depth=1)
    history = attack.fit(TensorDataset(obs, img), steps=4, batch_size=8, stats_samples=10)
    assert len(history.losses) == 1 and math.isfinite(history.final_loss)
    from_data = attack.evaluate(TensorDataset(obs, img), batch_size=5)
    from_tensors = attack.evaluate(obs, img)
    assert torch.allclose(from_data.ssim_per_image, from_tensors.ssim_per_image, atol=1e-6)

    bad = obs.clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        InversionAttack(device="cpu", width=4, depth=1).fit(
            TensorDataset(bad, img), steps=2, batch_size=4
        )
    with pytest.raises(ValueError, match="pass None"):
        attack.fit(TensorDataset(obs, img), img, steps=1)


def test_bad_inputs():
    obs, img = small_problem()
    attack = InversionAttack(device="cpu", width=4, depth=1)
    with pytest.raises(RuntimeError, match="first fit"):
        attack.reconstruct(obs)
    with pytest.raises(ShapeError, match="pair up"):
        attack.fit(obs[:-1], img, steps=1)
    with pytest.raises(RangeError, match=r"\[-1, 1\]"):
        attack.fit(obs, (img + 1) * 127.5, steps=1)
    nan_obs = obs.clone()
    nan_obs[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        attack.fit(nan_obs, img, steps=1)
    with pytest.raises(ShapeError, match="flatten"):
        attack.fit(torch.randn(24, 49, 16), img, steps=1)
    with pytest.raises(FacelabTypeError):
        attack.fit(torch.zeros(24, 8, dtype=torch.long), img, steps=1)
    with pytest.raises(ShapeError, match="RGB"):
        attack.fit(obs, img[:, :1], steps=1)
    with pytest.raises(ValueError, match="steps"):
        attack.fit(obs, img, steps=0)
    with pytest.raises(FacelabTypeError, match="unknown config"):
        InversionAttack(widht=8)
    with pytest.raises(ValueError, match="depth"):
        AttackConfig(depth=-1)
    with pytest.raises(ShapeError, match="too small"):
        InversionAttack(device="cpu", depth=6).fit(obs, img, steps=1)
    assert not attack.is_fitted

    attack.fit(obs, img, steps=1)
    with pytest.raises(ShapeError):
        attack.evaluate(obs, img[:-1])
    with pytest.raises(ShapeError, match="built for"):
        attack.fit(torch.randn(24, 8), img, steps=1)

    a, b = blobs(6), blobs(6, seed=2)
    with pytest.raises(ShapeError, match="same shape"):
        ssim(a, b[:5])
    with pytest.raises(RangeError):
        psnr(a * 3, b)
    with pytest.raises(ShapeError, match="at least 11"):
        ssim(blobs(2, size=8), blobs(2, size=8))
    with pytest.raises(ValueError, match="recognizer"):
        evaluate_reconstructions(a, b, threshold=0.5)
    with pytest.raises(ValueError, match="labels"):
        evaluate_reconstructions(a, b, recognizer=FirstPixel(), far=0.1)
    with pytest.raises(ValueError, match="threshold or a far"):
        evaluate_reconstructions(a, b, recognizer=FirstPixel(), match="original")
    with pytest.raises(ShapeError, match="6 labels"):
        evaluate_reconstructions(a, b, recognizer=FirstPixel(), labels=[0, 1], threshold=0.5)
    with pytest.raises(FacelabTypeError, match="integer"):
        evaluate_reconstructions(a, b, recognizer=FirstPixel(), labels=torch.rand(6), threshold=0.5)
    with pytest.raises(ShapeError, match="embeddings of shape"):
        identity_leakage(nn.Identity(), a, b)
    with pytest.raises(ZeroVectorError):
        identity_leakage(FirstPixel(), torch.zeros(2, 3, SIZE, SIZE), b[:2])
    with pytest.raises(ValueError, match="impostor scores"):
        threshold_at_far(torch.rand(100), 1e-3)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        threshold_at_far(torch.rand(100), 1.5)
    with pytest.raises(NonFiniteError):
        success_rate(torch.tensor([0.1, float("nan")]), 0.5)
    with pytest.raises(ValueError, match="no identity has two"):
        evaluate_reconstructions(
            a, b, recognizer=FirstPixel(), labels=torch.arange(6), threshold=0.5, match="identity"
        )
    with pytest.raises(ShapeError, match="train and test"):
        compare_attacks({"x": (obs, torch.randn(24, 8))}, img, img, steps=1)


def test_compare_attacks_reports_training_progress_only_when_asked(capsys, monkeypatch):
    """Off a terminal, ``progress=True`` prints whole progress lines of each attack's training
    (core ``progress_bar``); the default prints none."""
    monkeypatch.setenv("FACELAB_PROGRESS_INTERVAL", "0")
    train, test = blobs(16), blobs(8, seed=1)
    kw = dict(config=AttackConfig(**TINY), steps=3, batch_size=8, device="cpu", baseline=False)
    compare_attacks({"image": (train, test)}, train, test, **kw)
    assert "inversion attack" not in capsys.readouterr().err
    compare_attacks({"image": (train, test)}, train, test, progress=True, **kw)
    err = capsys.readouterr().err
    assert "inversion attack" in err and "\r" not in err
