"""The paper's claims on toyfaces with tiny models (one shared training run, see conftest)."""

import torch

from facelab.core.privacy import AttackConfig
from facelab.duetface import evaluate_privacy, idct_view_metrics


def measure_accuracy(run) -> dict[str, float]:
    """Held-out accuracy of each model and what the claims compare (also measured by
    scripts/calibrate_claims.py)."""
    acc = {k: v["accuracy"] for k, v in run["accuracy"].items()}
    weights = torch.stack([b.weight for b in run["server"].blocks]).detach()
    return acc | {
        "masks_minus_nomask": acc["duetface"] - acc["nomask"],
        "rgb_minus_duetface": acc["rgb"] - acc["duetface"],
        "min_model": min(acc.values()),
        "mask_weight_max": float(weights.abs().max()),
    }


def test_models_learned_and_masks_do_not_hurt(toy_run):
    m = measure_accuracy(toy_run)
    print({k: round(v, 4) for k, v in m.items()})
    # Calibration (scripts/calibrate_claims.py duetface measures exactly this): on the machine
    # this test was first written on, paired runs (same initialisation, data order and steps)
    # put the masks -4.5 to +2.5 points from the plain server (flip test off / on), unpaired
    # runs +-8 points; 400 pairs alone carry a standard error of ~2 points. On this machine the
    # quick suite's configuration (scripts/ppfr_accuracy.py duetface --preset quick, seed 0):
    # masks 0.828, plain 0.805; this test's own models here: masks 0.753, plain 0.765 (-1.25
    # points), RGB 0.913. The old bound (-5 points) sat 0.5 points under the worst paired run;
    # -8 keeps a margin of 3.5 points. Every model: worst 0.753, far above the 0.62 asked for.
    # Full calibration (seeds default + 1..4 x torch threads 1 and 2, 10 runs): every model
    # 0.715..0.775 (min), masks - plain -0.015..+0.037 (mean +0.017), mask weight max
    # 1.03..2.17, RGB 0.875..0.922, RGB - DuetFace 0.082..0.180.
    assert m["min_model"] > 0.62  # every model learned (chance is 0.5)
    # with the masks the server is at least as accurate as without, up to noise
    assert m["masks_minus_nomask"] > -0.08
    # the overlay weights left 0: the masks are in use
    assert m["mask_weight_max"] > 1e-3


def test_bundle_reloads_the_trained_pipeline(toy_run, tmp_path, make_faces):
    from facelab.duetface import load_pipeline, save_bundle

    cfg = toy_run["cfg"]
    save_bundle(tmp_path, toy_run["client"], toy_run["server"], roi=cfg.model.roi)
    images = make_faces(3, 2)[0]
    with torch.no_grad():
        torch.testing.assert_close(load_pipeline(tmp_path)(images), toy_run["pipeline"](images))


def measure_inversion(run, make_faces, seed: int = 0) -> dict[str, float]:
    """Attacks from the image and from the payload (same decoder, budget and ``seed``)."""
    train_images, _ = make_faces(40, 6, offset=8_000_000)
    test_images, _ = make_faces(12, 4, offset=9_000_000)
    rows = evaluate_privacy(
        run["pipeline"].client,
        train_images,
        test_images,
        observations=("rgb", "payload"),
        config=AttackConfig(width=8, depth=2),
        steps=120,
        batch_size=32,
        seed=seed,
        recognizer=run["recognizer"],
    )
    by = {r["attack"]: r for r in rows}
    out = {
        f"{k.replace(' ', '_')}_{m}": by[k][m]
        for k in ("rgb", "payload", "mean image")
        for m in ("ssim", "psnr", "identity_leakage")
    }
    pay, rgb, mean = by["payload"], by["rgb"], by["mean image"]
    return out | {
        "rgb_minus_payload_ssim": rgb["ssim"] - pay["ssim"],
        "rgb_minus_payload_psnr": rgb["psnr"] - pay["psnr"],
        "rgb_minus_payload_leakage": rgb["identity_leakage"] - pay["identity_leakage"],
        "payload_minus_mean_ssim": pay["ssim"] - mean["ssim"],
        "payload_minus_mean_leakage": pay["identity_leakage"] - mean["identity_leakage"],
    }


def test_inversion_from_the_payload_is_clearly_worse_than_from_rgb(toy_run, make_faces):
    m = measure_inversion(toy_run, make_faces)
    print({k: round(v, 3) for k, v in m.items()})
    # same decoder, budget and data: the payload (162 channels + masks) gives clearly worse
    # reconstructions than the image
    # (measured where the test was written: SSIM 0.63 vs 0.79, PSNR 17.7 vs 23.3 dB, leakage
    # 0.92-0.93 vs 0.99, mean image leakage 0.27-0.40; on this 2-core VM: SSIM 0.620 vs 0.754,
    # PSNR 17.5 vs 22.0 dB, leakage 0.874 vs 0.987, mean image 0.214 SSIM / 0.407 leakage).
    # Leakage saturates near 1 for both, so its difference (0.06-0.11) is only asked to keep
    # its sign. SSIM and PSNR carry the claim: the SSIM bound was 0.1, 0.03 under this VM's
    # 0.133; 0.07 keeps twice the difference between the two machines as margin.
    # Full calibration (seeds default + 1..4 x threads 1 and 2, 10 runs): RGB - payload SSIM
    # 0.113..0.176, PSNR 3.69..5.56 dB (the thinnest margin, 0.69 dB), leakage 0.053..0.174;
    # payload - mean image SSIM 0.332..0.408, leakage 0.398..0.647
    assert m["rgb_minus_payload_ssim"] > 0.07
    assert m["rgb_minus_payload_psnr"] > 3.0
    assert m["rgb_minus_payload_leakage"] > 0.0
    # ... but it is not private against a learned attack: far better than the mean image
    # (the reference-mode high-frequency channels are high-passed copies of the whole face)
    assert m["payload_minus_mean_ssim"] > 0.2
    assert m["payload_minus_mean_leakage"] > 0.2


def test_low_frequencies_carry_the_visible_image(make_faces):
    from facelab.core.freq import DUETFACE_CLIENT

    images, _ = make_faces(4, 2)
    v = idct_view_metrics(images, DUETFACE_CLIENT)
    print(v)
    assert v["client_only_ssim"] > 0.6
    assert v["server_only_ssim"] < 0.3
    assert v["client_only_psnr"] > v["server_only_psnr"] + 8
