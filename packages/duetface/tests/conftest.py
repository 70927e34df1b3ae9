import dataclasses
from pathlib import Path

import pytest
import torch

# 2 shared cores: more intra-op threads only spin against the other processes
torch.set_num_threads(1)

SIZE = 32  # toy image side: server stages 16, 8, 4, 2


def tiny_models(size: int = SIZE, seed: int = 0, interactive: bool = True):
    from facelab.duetface import ClientModel, ServerModel

    torch.manual_seed(seed)
    client = ClientModel(image_size=size, embedding_size=32, width=0.25).eval()
    server = ServerModel(
        image_size=size,
        embedding_size=32,
        base_width=8,
        client_channels=[c for c, _, _ in client.stage_shapes],
        interactive=interactive,
    ).eval()
    return client, server


def faces(n_ids: int, per_id: int, size: int = SIZE, offset: int = 7_000_000, seed: int = 0):
    from facelab.core.data.toyfaces import ToyFaces

    ds = ToyFaces(n_ids, per_id, size=size, seed=seed, identity_offset=offset)
    return ds.render(torch.arange(len(ds))), ds.labels


@pytest.fixture
def models():
    return tiny_models()


@pytest.fixture
def make_models():
    return tiny_models


@pytest.fixture
def make_faces():
    return faces


#: the claim tests' training seed (scripts/calibrate_claims.py reruns others)
TOY_SEED = 3


def train_toy_run(root, seed: int = TOY_SEED) -> dict:
    """One tiny DuetFace training run shared by the claim tests: the client (stage A), the server
    with masks and the plain server (same seed and data), an RGB recognizer with another seed
    (``seed + 8``), and the verification results of each."""
    from facelab.core.privacy import AttackConfig  # noqa: F401  (import cost paid once here)
    from facelab.core.recipe import DataConfig, HeadConfig, build_eval_sets, train_arcface
    from facelab.core.train import TrainConfig
    from facelab.duetface import (
        DuetFaceConfig,
        DuetFaceModelConfig,
        baseline_config,
        build_pipeline,
        train_client,
        train_server,
        training_data,
        verification_rows,
    )

    root = Path(root)

    def stage(name: str, epochs: int = 4) -> TrainConfig:
        return TrainConfig(
            output_dir=str(root / name),
            epochs=epochs,
            batch_size=32,
            lr=0.1,
            milestones=(epochs - 1,),
            seed=seed,
            log_every=10,
            progress=False,
            save_on_exit=False,
        )

    cfg = DuetFaceConfig(
        data=DataConfig(
            image_size=SIZE,
            toy_identities=30,
            toy_images_per_identity=16,
            toy_difficulty="easy",
            eval_identities=40,
            eval_images_per_identity=6,
            eval_pairs=400,
        ),
        # a milder margin than the paper's s=64, m=0.5 lets tiny nets learn in 60 steps (the
        # RGB recognizer uses the same head)
        head=HeadConfig(s=32.0, m=0.2),
        model=DuetFaceModelConfig(
            client_width=0.25, client_embedding_size=32, server_base_width=16, embedding_size=32
        ),
        client_train=stage("a"),
        server_train=stage("b"),
        output_dir=str(root / "bundle"),
        cache_train_images=True,
    )
    dataset, num_classes = training_data(cfg)
    stage_a = train_client(cfg, dataset, num_classes)
    client = stage_a.model.eval().requires_grad_(False)
    stage_b = train_server(cfg, client, dataset, num_classes)
    stage_n = train_server(
        cfg, client, dataset, num_classes, interactive=False, train_cfg=stage("n")
    )
    rgb_cfg = baseline_config(cfg)
    rgb_cfg.train = dataclasses.replace(stage("rgb"), seed=seed + 8)
    rgb_cfg.data = dataclasses.replace(cfg.data, eval_pairs=0)
    recognizer = train_arcface(rgb_cfg).model.eval()

    sets = build_eval_sets(cfg.data)
    duet = build_pipeline(client, stage_b.model, cfg)
    plain = build_pipeline(client, stage_n.model, cfg)
    acc = {
        "duetface": verification_rows(duet, sets)[0][0],
        "nomask": verification_rows(plain, sets)[0][0],
        "rgb": verification_rows(recognizer, sets)[0][0],
    }
    return {
        "cfg": cfg,
        "client": client,
        "server": stage_b.model,
        "plain_server": stage_n.model,
        "pipeline": duet,
        "recognizer": recognizer,
        "accuracy": acc,
        "root": root,
    }


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    return train_toy_run(tmp_path_factory.mktemp("toy_run"))
