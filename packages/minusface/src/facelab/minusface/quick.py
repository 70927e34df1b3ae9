"""MinusFace rows of the cross-method quick benchmark (``facelab bench quick``).

``run_quick`` trains, on toyfaces and on the CPU, an independent RGB ArcFace (core's recipe,
another seed: the identity-leakage recognizer and the accuracy baseline), MinusFace stage 1 and
stage 2, verifies client + server on held-out identities, runs the inversion attack from the
protected images with and without shuffling, and times the client and the server.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

NAN = float("nan")


@dataclass(frozen=True)
class QuickSettings:
    identities: int
    images_per_identity: int
    eval_identities: int
    eval_images_per_identity: int
    eval_pairs: int
    baseline_steps: int
    stage1_steps: int
    stage2_steps: int
    attack_train_identities: int
    attack_images_per_identity: int
    attack_test_identities: int
    attack_steps: int
    attack_width: int = 16
    batch_size: int = 32
    image_size: int = 32
    timing_images: int = 64


FULL = QuickSettings(  # the toy preset's stage budgets
    identities=100,
    images_per_identity=10,
    eval_identities=60,
    eval_images_per_identity=6,
    eval_pairs=600,
    baseline_steps=150,
    stage1_steps=70,
    stage2_steps=200,
    attack_train_identities=50,
    attack_images_per_identity=4,
    attack_test_identities=20,
    attack_steps=60,
    attack_width=12,
)
SMALL = QuickSettings(
    identities=30,
    images_per_identity=6,
    eval_identities=20,
    eval_images_per_identity=4,
    eval_pairs=100,
    baseline_steps=25,
    stage1_steps=8,
    stage2_steps=25,
    attack_train_identities=16,
    attack_images_per_identity=4,
    attack_test_identities=8,
    attack_steps=15,
    attack_width=8,
    batch_size=16,
    timing_images=32,
)


def quick_config(settings: QuickSettings, seed: int, workdir: Path):
    """The MinusFace toy preset resized to ``settings``."""
    from facelab.core.recipe import DataConfig
    from facelab.minusface.train import minusface_presets

    toy = minusface_presets()["toy"]
    data = DataConfig(
        image_size=settings.image_size,
        toy_identities=settings.identities,
        toy_images_per_identity=settings.images_per_identity,
        toy_seed=seed,
        eval_identities=settings.eval_identities,
        eval_images_per_identity=settings.eval_images_per_identity,
        eval_pairs=settings.eval_pairs,
        toy_difficulty=toy.data.toy_difficulty,
    )

    def stage(base, steps: int):
        return dataclasses.replace(
            base,
            max_steps=steps,
            batch_size=settings.batch_size,
            warmup=min(20, steps // 4),
            seed=seed,
            log_every=max(1, steps),
            checkpoint_every=None,
            save_on_exit=False,
        )

    return dataclasses.replace(
        toy,
        output_dir=str(workdir / "minusface"),
        data=data,
        stage1=stage(toy.stage1, settings.stage1_steps),
        stage2=stage(toy.stage2, settings.stage2_steps),
        baseline=False,
        evaluate=False,
        eval_seed=seed,
    )


def _verify(model, eval_set, batch_size: int = 256) -> tuple[Any, float]:
    """(VerificationResult, TAR at FAR 1e-3) from one pass of embeddings (flip test)."""
    from facelab.core.eval import embed, tar_at_far, verify_interleaved

    emb = embed(model, eval_set.images, flip=True, batch_size=batch_size)
    res = verify_interleaved(emb, eval_set.issame, nfolds=min(10, eval_set.num_pairs))
    scores = (emb[0::2] * emb[1::2]).sum(1)
    tar = tar_at_far(scores, eval_set.issame, 1e-3)[1e-3]
    return res, float(tar)


def _images_per_s(fn, images: torch.Tensor, repeat: int = 3) -> float:
    with torch.no_grad():
        fn(images)  # warm-up
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn(images)
            times.append(time.perf_counter() - t0)
    return images.shape[0] / sorted(times)[len(times) // 2]


def run_quick(
    *, small: bool = False, seed: int = 0, workdir: str | Path, progress: bool = True
) -> list[dict]:
    """Train and evaluate MinusFace on toyfaces; two rows: the method and its no-shuffle
    ablation (the attack on ``d(r)`` without channel shuffling)."""
    from facelab.core.data.toyfaces import ToyFaces
    from facelab.core.privacy import AttackConfig
    from facelab.core.recipe import (
        TOY_HELDOUT_OFFSET,
        ArcFaceConfig,
        build_eval_sets,
        train_arcface,
    )
    from facelab.minusface.client import MinusFacePipeline, protect_uint8
    from facelab.minusface.evaluate import SHUFFLED, UNSHUFFLED, privacy_eval
    from facelab.minusface.protocol import to_model_input
    from facelab.minusface.train import materialize_toy, stage1_trainer, stage2_trainer

    settings = SMALL if small else FULL
    work = Path(workdir)
    cfg = quick_config(settings, seed, work)
    log = print if progress else (lambda *a, **k: None)

    # the independent RGB recognizer (another seed), also the accuracy baseline
    t0 = time.perf_counter()
    arc = ArcFaceConfig(
        data=dataclasses.replace(cfg.data, eval_pairs=0),  # verified below with the same set
        backbone=cfg.backbone,
        embedding_size=cfg.embedding_size,
        base_width=cfg.base_width,
        head=cfg.head,
        train=dataclasses.replace(
            cfg.stage2,
            output_dir=str(work / "arcface"),
            max_steps=settings.baseline_steps,
            seed=seed + 1,
            progress=progress,
        ),
        eval_batch_size=256,
    )
    baseline = train_arcface(arc)
    arcface = baseline.model.eval()
    log(f"[minusface quick] baseline trained in {time.perf_counter() - t0:.0f} s")

    # MinusFace stages 1 and 2
    from facelab.core.recipe import build_train_dataset

    dataset, num_classes = build_train_dataset(cfg.data)
    materialize_toy(dataset)
    t1 = time.perf_counter()
    cfg1 = dataclasses.replace(cfg, stage1=dataclasses.replace(cfg.stage1, progress=progress))
    tr1 = stage1_trainer(cfg1, dataset, num_classes)
    tr1.fit()
    generator = tr1.unwrap("generator").eval()
    cfg2 = dataclasses.replace(cfg, stage2=dataclasses.replace(cfg.stage2, progress=progress))
    tr2 = stage2_trainer(cfg2, dataset, num_classes, generator)
    tr2.fit()
    recognizer = tr2.unwrap("recognizer").eval()
    train_time = time.perf_counter() - t1
    log(f"[minusface quick] stages 1+2 trained in {train_time:.0f} s")

    # verification (held-out identities; client permutations seeded for reproducibility)
    (eval_set,) = build_eval_sets(cfg.data)
    pipe = MinusFacePipeline(generator, recognizer, seed=seed)
    ver, tar = _verify(pipe, eval_set)
    base_ver, _ = _verify(arcface, eval_set)

    # privacy: inversion from X_p with and without shuffling
    size = cfg.data.image_size
    adv = ToyFaces(
        settings.attack_train_identities,
        settings.attack_images_per_identity,
        size=size,
        seed=seed,
        identity_offset=2 * TOY_HELDOUT_OFFSET,
        difficulty=cfg.data.toy_difficulty,
    )
    victims = ToyFaces(
        settings.attack_test_identities,
        settings.attack_images_per_identity,
        size=size,
        seed=seed + 7,
        identity_offset=TOY_HELDOUT_OFFSET,
        difficulty=cfg.data.toy_difficulty,
    )
    report = privacy_eval(
        generator,
        adv.render(slice(None)),
        victims.render(slice(None)),
        n_duplicates=cfg.n_duplicates,
        attack_config=AttackConfig(width=settings.attack_width, depth=2),
        steps=settings.attack_steps,
        batch_size=32,
        seed=seed,
        recognizer=arcface,
        device="cpu",
    )

    # throughput: client protect, server recognizer, both
    batch = eval_set.images[: settings.timing_images]
    protect_ips = _images_per_s(lambda x: protect_uint8(generator, x, cfg.n_duplicates), batch)
    xp = to_model_input(protect_uint8(generator, batch, cfg.n_duplicates))
    rec_ips = _images_per_s(lambda _: recognizer(xp), batch)
    e2e_ips = _images_per_s(pipe, batch)

    h = w = size
    nbytes = 3 * cfg.n_duplicates * h * w
    shuf, plain = report.row(SHUFFLED), report.row(UNSHUFFLED)
    sim = report.protected_similarity
    notes_common = (
        f"toyfaces {size}px, {settings.identities} ids; RGB ArcFace baseline acc "
        f"{base_ver.accuracy:.3f} (same backbone, {settings.baseline_steps} steps)"
    )
    if small:
        notes_common = "small: a smoke run, too short for meaningful numbers; " + notes_common
    rows = [
        {
            "method": "minusface",
            "accuracy": float(ver.accuracy),
            "accuracy_std": float(ver.accuracy_std),
            "tar_at_far_1e-3": tar,
            "attack_ssim": float(shuf["ssim"]),
            "attack_psnr": float(shuf["psnr"]),
            "attack_identity_leakage": float(shuf["identity_leakage"]),
            "bytes_per_image": int(nbytes),
            "train_time_s": float(train_time),
            "infer_images_per_s": float(e2e_ips),
            "notes": (
                f"{notes_common}; X_p vs face SSIM {sim[SHUFFLED]['ssim']:.3f}; client protect "
                f"{protect_ips:.0f} img/s, {rec_ips / protect_ips:.2f}x the recognizer's time per image; "
                f"bytes = raw uint8 X_p ({cfg.n_duplicates} duplicate(s))"
            ),
        },
        {
            "method": "minusface (no shuffle)",
            "accuracy": NAN,
            "accuracy_std": NAN,
            "tar_at_far_1e-3": NAN,
            "attack_ssim": float(plain["ssim"]),
            "attack_psnr": float(plain["psnr"]),
            "attack_identity_leakage": float(plain["identity_leakage"]),
            "bytes_per_image": int(3 * h * w),
            "train_time_s": NAN,
            "infer_images_per_s": NAN,
            "notes": (
                f"ablation: attack on d(r) without channel shuffling (same generator); d(r) vs "
                f"face SSIM {sim[UNSHUFFLED]['ssim']:.3f}"
            ),
        },
    ]
    for r in rows:
        for k, v in r.items():
            if isinstance(v, float) and math.isinf(v):
                r[k] = NAN
    return rows
