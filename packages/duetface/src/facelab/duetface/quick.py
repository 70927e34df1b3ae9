"""``run_quick``: DuetFace's rows of the cross-method quick benchmark (toyfaces, CPU).

Trains, on 32 px toyfaces with tiny widths: the client (stage A), the server with masks
(stage B), and the RGB baseline (the same IResNet on images through
``facelab.core.recipe.train_arcface``, with a different seed; it also serves as the independent
recognizer that measures identity leakage). Then it evaluates verification on held-out people,
trains inversion attacks from the payload (high-frequency channels + masks) and from the RGB
image on a disjoint set of people, and measures the client/server compute split and the bytes
that cross the boundary. With ``small=False`` it also trains the plain server ("server without
mask") and reports it as a third row.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch

from facelab.core.data.toyfaces import ToyFaces
from facelab.core.privacy import AttackConfig
from facelab.core.recipe import DataConfig, HeadConfig, build_eval_sets, train_arcface
from facelab.core.train import TrainConfig
from facelab.duetface.attack import evaluate_privacy, idct_view_metrics
from facelab.duetface.evaluate import compute_split, verification_rows
from facelab.duetface.protocol import payload_bytes_per_image
from facelab.duetface.train import (
    DuetFaceConfig,
    DuetFaceModelConfig,
    baseline_config,
    build_pipeline,
    train_client,
    train_server,
    training_data,
)

#: people the attacks train and test on (disjoint from training and evaluation people)
ATTACK_OFFSET = 5_000_000
ROW_KEYS = (
    "method",
    "accuracy",
    "accuracy_std",
    "tar_at_far_1e-3",
    "attack_ssim",
    "attack_psnr",
    "attack_identity_leakage",
    "bytes_per_image",
    "train_time_s",
    "infer_images_per_s",
    "notes",
)


def quick_config(*, small: bool, seed: int, workdir: Path, progress: bool) -> DuetFaceConfig:
    """The toy configuration ``run_quick`` trains (smaller and shorter with ``small``)."""
    ids, per_id, epochs = (20, 12, 2) if small else (40, 16, 4)

    def stage(name: str) -> TrainConfig:
        return TrainConfig(
            output_dir=str(workdir / name),
            epochs=epochs,
            batch_size=32,
            lr=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            scheduler="step",
            milestones=(max(1, epochs - 1),) if epochs > 1 else (),
            seed=seed,
            log_every=10,
            progress=progress,
            save_on_exit=False,
        )

    return DuetFaceConfig(
        data=DataConfig(
            image_size=32,
            toy_identities=ids,
            toy_images_per_identity=per_id,
            toy_seed=seed,
            toy_difficulty="easy",
            eval_identities=30 if small else 50,
            eval_images_per_identity=6,
            eval_pairs=200 if small else 400,
        ),
        # tiny nets and ~80 steps: a milder margin than the paper's s=64, m=0.5 (every model
        # of run_quick, the RGB baseline included, uses it)
        head=HeadConfig(s=32.0, m=0.2),
        model=DuetFaceModelConfig(
            client_width=0.25, client_embedding_size=64, server_base_width=16, embedding_size=64
        ),
        client_train=stage("stage_a"),
        server_train=stage("stage_b"),
        output_dir=str(workdir),
        cache_train_images=True,
        eval_batch_size=256,
    )


def _throughput(fn: Any, images: torch.Tensor, repeat: int = 2) -> float:
    fn(images[:8])  # warm up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn(images)
    return repeat * images.shape[0] / (time.perf_counter() - t0)


def _attack_faces(cfg: DuetFaceConfig, n_ids: int, offset: int) -> ToyFaces:
    d = cfg.data
    return ToyFaces(
        n_ids,
        8,
        size=d.image_size,
        seed=d.toy_seed,
        identity_offset=offset,
        difficulty=d.toy_difficulty,
    )


def run_quick(
    *, small: bool = False, seed: int = 0, workdir: str | Path, progress: bool = True
) -> list[dict[str, Any]]:
    """Rows ``{method, accuracy, accuracy_std, tar_at_far_1e-3, attack_ssim, attack_psnr,
    attack_identity_leakage, bytes_per_image, train_time_s, infer_images_per_s, notes}`` for
    ``duetface``, ``duetface-rgb-baseline`` and (``small=False``) ``duetface-nomask``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # every draw from the global RNG (the baseline's initialisation) depends on `seed` only,
    # and the caller's RNG state is left as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _run(small, seed, workdir, progress)


def _run(small: bool, seed: int, workdir: Path, progress: bool) -> list[dict[str, Any]]:
    cfg = quick_config(small=small, seed=seed, workdir=workdir, progress=progress)
    size = cfg.data.image_size
    nan = float("nan")

    # --- training
    dataset, num_classes = training_data(cfg)
    stage_a = train_client(cfg, dataset, num_classes)
    client = stage_a.model.eval().requires_grad_(False)
    stage_b = train_server(cfg, client, dataset, num_classes)
    pipeline = build_pipeline(client, stage_b.model, cfg)  # type: ignore[arg-type]
    base_cfg = baseline_config(cfg)
    base_cfg.train = dataclasses.replace(base_cfg.train, seed=seed + 101)
    base_cfg.data = dataclasses.replace(cfg.data, eval_pairs=0)  # evaluated below, same sets
    baseline = train_arcface(base_cfg)
    recognizer = baseline.model.eval()

    # --- verification on held-out people
    sets = build_eval_sets(cfg.data)
    duet_rows, _ = verification_rows(pipeline, sets, batch_size=cfg.eval_batch_size)
    base_rows, _ = verification_rows(recognizer, sets, batch_size=cfg.eval_batch_size)

    # --- attacks on disjoint people: payload vs RGB image, same decoder and budget
    attack_train = _attack_faces(cfg, 16 if small else 40, ATTACK_OFFSET)
    attack_test = _attack_faces(cfg, 6 if small else 12, ATTACK_OFFSET + 100_000)
    train_images = attack_train.render(torch.arange(len(attack_train)))
    test_images = attack_test.render(torch.arange(len(attack_test)))
    rows = evaluate_privacy(
        pipeline.client,
        train_images,
        test_images,
        observations=("rgb", "payload"),
        config=AttackConfig(width=8, depth=2),
        steps=40 if small else 200,
        batch_size=32,
        seed=seed,
        recognizer=recognizer,
        baseline=False,
        grid_path=str(workdir / "attack_grid.png"),
    )
    attack = {r["attack"]: r for r in rows}
    views = idct_view_metrics(test_images[:32], client.positions)

    # --- cost
    probe = sets[0].images[:64]
    split = compute_split(pipeline.client, pipeline.server, probe[:8])
    masks = stage_b.model.mask_sizes  # type: ignore[union-attr]
    bytes32 = payload_bytes_per_image(size, masks, pipeline.server.server.in_channels)
    bytes16 = payload_bytes_per_image(
        size, masks, pipeline.server.server.in_channels, torch.float16
    )
    with torch.inference_mode():
        duet_speed = _throughput(pipeline, probe)
        base_speed = _throughput(recognizer, probe)
    weights = [round(float(b.weight), 4) for b in stage_b.model.blocks]  # type: ignore[union-attr]

    def row(method: str, ver: dict, att: dict, nbytes: int, t: float, speed: float, notes: str):
        return {
            "method": method,
            "accuracy": float(ver["accuracy"]),
            "accuracy_std": float(ver["accuracy_std"]),
            "tar_at_far_1e-3": float(ver["tar_at_far_1e-3"]),
            "attack_ssim": float(att.get("ssim", nan)),
            "attack_psnr": float(att.get("psnr", nan)),
            "attack_identity_leakage": float(att.get("identity_leakage", nan)),
            "bytes_per_image": int(nbytes),
            "train_time_s": float(t),
            "infer_images_per_s": float(speed),
            "notes": notes,
        }

    out = [
        row(
            "duetface",
            duet_rows[0],
            attack["payload"],
            bytes32,
            stage_a.wall_time + stage_b.wall_time,
            duet_speed,
            f"{size}px toyfaces; payload = 162 DCT channels + 4 masks, float32 "
            f"({bytes16} B/image in float16); attack observes channels+masks; client FLOPs = "
            f"{100 * split['client_over_server']:.0f}% of server FLOPs "
            f"({split['client_flops'] / 1e6:.1f} vs {split['server_flops'] / 1e6:.1f} MFLOP/image); "
            f"IDCT SSIM client-only {views['client_only_ssim']:.2f} vs server-only "
            f"{views['server_only_ssim']:.2f}; mask weights w={weights}",
        ),
        row(
            "duetface-rgb-baseline",
            base_rows[0],
            attack["rgb"],
            3 * size * size,
            baseline.wall_time,
            base_speed,
            "same IResNet on RGB, same recipe, other seed (also the identity-leakage "
            "recognizer); bytes = uint8 image; attack observes the image",
        ),
    ]
    if not small:
        stage_n = train_server(
            cfg,
            client,
            dataset,
            num_classes,
            interactive=False,
            train_cfg=dataclasses.replace(cfg.server_train, output_dir=str(workdir / "nomask")),
        )
        plain = build_pipeline(client, stage_n.model, cfg)  # type: ignore[arg-type]
        plain_rows, _ = verification_rows(plain, sets, batch_size=cfg.eval_batch_size)
        with torch.inference_mode():
            plain_speed = _throughput(plain, probe)
        out.append(
            row(
                "duetface-nomask",
                plain_rows[0],
                {},
                payload_bytes_per_image(size, (), pipeline.server.server.in_channels),
                stage_n.wall_time,
                plain_speed,
                "ablation: the server on the 162 channels without masks (no client model at "
                "inference); same seed and recipe as duetface's stage B",
            )
        )
    for r in out:
        for k in ("accuracy", "train_time_s", "infer_images_per_s"):
            if not math.isfinite(r[k]):
                raise ValueError(f"run_quick: {r['method']} has a non-finite {k}")
    return out


__all__ = ["ROW_KEYS", "quick_config", "run_quick"]
