"""``run_quick``: PartialFace's rows of the cross-method quick benchmark (toyfaces, CPU).

Trains the toy PartialFace model through the recipe, an independent RGB ArcFace recognizer
(other toyfaces people, other seed) for identity leakage and as the RGB reference, runs the
inversion attacks (one subset's channels, DuetFace's 162 channels, the full spectrum) and
measures payload size and embedding throughput. Rows:

* ``partialface``: same-subset matching (gallery and probe under one challenge);
* ``partialface (cross-subset)``: gallery and probe under different subsets;
* ``partialface ref: duetface 162 ch`` / ``partialface ref: full spectrum``: the attack on
  those observations, for comparison (no recognition numbers: NaN).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from facelab.core.recipe import (
    ArcFaceConfig,
    DataConfig,
    HeadConfig,
    build_eval_sets,
    evaluate_sets,
    train_arcface,
)
from facelab.core.train import TrainConfig

NAN = float("nan")


@dataclass(frozen=True)
class QuickSizes:
    """Budget of one quick run (``small`` for smoke tests)."""

    image_size: int = 32
    train_identities: int = 150
    images_per_identity: int = 8
    eval_identities: int = 60
    eval_pairs: int = 400
    steps: int = 400  # one backbone for six subsets needs more steps than RGB (README)
    recognizer_steps: int = 160
    batch_size: int = 64
    base_width: int = 8
    eval_challenges: int = 6
    attack_train_images: int = 384
    attack_test_images: int = 96
    attack_steps: int = 150
    attack_width: int = 16
    attack_depth: int = 2


FULL = QuickSizes()
SMALL = QuickSizes(
    train_identities=40,
    images_per_identity=4,
    eval_identities=20,
    eval_pairs=100,
    steps=20,
    recognizer_steps=15,
    batch_size=32,
    eval_challenges=3,
    attack_train_images=96,
    attack_test_images=32,
    attack_steps=15,
    attack_width=8,
    attack_depth=1,
)


def _data(z: QuickSizes, toy_seed: int) -> DataConfig:
    return DataConfig(
        image_size=z.image_size,
        toy_identities=z.train_identities,
        toy_images_per_identity=z.images_per_identity,
        toy_seed=toy_seed,
        eval_identities=z.eval_identities,
        eval_images_per_identity=6,
        eval_pairs=z.eval_pairs,
        toy_difficulty="easy",  # the default blur/noise wipe out the kept high frequencies
        repeat=3,
    )


def _train_cfg(z: QuickSizes, out: Path, steps: int, seed: int, progress: bool) -> TrainConfig:
    return TrainConfig(
        output_dir=str(out),
        max_steps=steps,
        batch_size=z.batch_size,
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        scheduler="cosine",
        warmup=max(1, steps // 12),
        warmup_unit="step",
        seed=seed,
        log_every=max(1, steps // 4),
        save_on_exit=False,
        progress=progress,
    )


@torch.inference_mode()
def _throughput(fn, images: torch.Tensor, batch_size: int = 64, repeats: int = 3) -> float:
    """Images per second of ``fn`` over ``images`` in batches (best of ``repeats``)."""
    fn(images[:batch_size])  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for chunk in images.split(batch_size):
            fn(chunk)
        best = min(best, time.perf_counter() - t0)
    return images.shape[0] / best


def run_quick(
    *, small: bool = False, seed: int = 0, workdir: str | Path, progress: bool = True
) -> list[dict[str, Any]]:
    """Train, evaluate and attack PartialFace on toyfaces; rows for the quick benchmark."""
    from facelab.core.data.toyfaces import ToyFaces
    from facelab.partialface.attack import AttackSettings, run_attacks
    from facelab.partialface.protocol import PartialFaceClient, PartialFaceServer
    from facelab.partialface.train import partialface_presets, train

    z = SMALL if small else FULL
    root = Path(workdir) / "partialface"
    data = _data(z, toy_seed=seed)

    # 1. PartialFace through its recipe (reference plan, the paper's r = 3)
    base = partialface_presets()["toy"]
    cfg = dataclasses.replace(
        base,
        data=data,
        plan="reference",
        base_width=z.base_width,
        eval_challenges=z.eval_challenges,
        train=_train_cfg(z, root / "run", z.steps, seed, progress),
    )
    rr = train(cfg)
    model, plan = rr.model.eval(), rr.plan
    res = rr.verification["toy-heldout"]

    # 2. an independent RGB recognizer: other people (toy seed), other training seed
    rec_cfg = ArcFaceConfig(
        data=dataclasses.replace(_data(z, toy_seed=seed + 1), repeat=1),
        backbone="r18",
        embedding_size=cfg.embedding_size,
        base_width=z.base_width,
        head=HeadConfig(s=32.0),
        train=_train_cfg(z, root / "recognizer", z.recognizer_steps, seed + 101, progress),
        eval_batch_size=256,
    )
    recognizer = train_arcface(rec_cfg).model.eval()
    eval_set = build_eval_sets(data)[0]
    rgb_acc = evaluate_sets(recognizer, [eval_set])[eval_set.name].accuracy

    # 3. inversion attacks: the adversary trains on its own faces (a third population) and is
    #    scored on held-out evaluation faces
    attacker_faces = ToyFaces(
        math.ceil(z.attack_train_images / 6),
        6,
        size=z.image_size,
        seed=seed + 2,
        difficulty=data.toy_difficulty,
    ).render(slice(0, z.attack_train_images))
    test_images = eval_set.images[: z.attack_test_images]
    test_labels = eval_set.labels[: z.attack_test_images] if eval_set.labels is not None else None
    settings = AttackSettings(
        steps=z.attack_steps,
        batch_size=32,
        width=z.attack_width,
        depth=z.attack_depth,
        seed=seed,
    )
    attack_rows = run_attacks(
        attacker_faces,
        test_images,
        plan,
        kinds=("subset", "duetface", "full"),
        settings=settings,
        recognizer=recognizer,
        test_labels=test_labels,
        grid_path=root / "reconstructions.png",
    )
    attacks = {r["attack"]: r for r in attack_rows}

    # 4. what crosses the boundary, and embedding speed against the RGB recognizer
    server = PartialFaceServer(model, plan, seed=seed)
    challenge = server.challenge()
    batch = eval_set.images[:64]
    payload = PartialFaceClient().respond(batch, challenge)
    bytes_per_image = len(payload.to_bytes()) // batch.shape[0]
    encoder = model.make_encoder(check=False)
    positions = torch.tensor(challenge.positions)
    speed_images = eval_set.images[:256]
    pf_speed = _throughput(lambda x: model(encoder.encode(x, positions), positions), speed_images)
    rgb_speed = _throughput(recognizer, speed_images)

    train_time = rr.train.wall_time
    common = {
        "bytes_per_image": int(bytes_per_image),
        "train_time_s": float(train_time),
        "infer_images_per_s": float(pf_speed),
    }
    sub = attacks["subset"]
    plan_note = (
        f"IR-18 w{z.base_width} on {z.image_size}px toyfaces, {z.steps} steps, reference plan "
        f"(6 subsets x 9 positions, 3 permutations), 27 channels sent; RGB recognizer (same "
        f"size/budget class) acc {rgb_acc:.3f}, {rgb_speed:.0f} img/s vs PartialFace "
        f"{pf_speed:.0f} img/s (client DCT + model, ratio {pf_speed / rgb_speed:.2f}); "
        f"attack SSIM subset {sub['ssim']:.3f} vs duetface-162 "
        f"{attacks['duetface']['ssim']:.3f} vs full {attacks['full']['ssim']:.3f}, mean-image "
        f"baseline {attacks['mean image']['ssim']:.3f}"
    )

    def row(
        method: str, acc: Any, attack: dict[str, Any], note: str, channels: int | None = None
    ) -> dict[str, Any]:
        measured = common
        if channels is not None:  # attack-only reference rows: what that observation weighs
            side = model.map_size
            measured = {
                "bytes_per_image": channels * side * side * 4,
                "train_time_s": NAN,
                "infer_images_per_s": NAN,
            }
        return {
            "method": method,
            "accuracy": NAN if acc is None else float(acc.accuracy),
            "accuracy_std": NAN if acc is None else float(acc.accuracy_std),
            "tar_at_far_1e-3": NAN if acc is None else float(acc.val),
            "attack_ssim": float(attack["ssim"]),
            "attack_psnr": float(attack["psnr"]),
            "attack_identity_leakage": float(attack["identity_leakage"]),
            **measured,
            "notes": note,
        }

    return [
        row("partialface", res["same_subset"], sub, "same-subset matching; " + plan_note),
        row(
            "partialface (cross-subset)",
            res.get("cross_subset"),
            sub,
            "gallery and probe under different subsets and permutations; " + plan_note,
        ),
        row(
            "partialface ref: duetface 162 ch",
            None,
            attacks["duetface"],
            "attack reference: inversion from DuetFace's 162 server channels of the same images",
            162,
        ),
        row(
            "partialface ref: full spectrum",
            None,
            attacks["full"],
            "attack reference: inversion from all 192 DCT channels (the image itself)",
            192,
        ),
    ]
