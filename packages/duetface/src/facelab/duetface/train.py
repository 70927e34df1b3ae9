"""DuetFace's two-stage training recipe on the shared trainer, and the RGB baseline beside it.

* Stage A (:func:`train_client`): the client model alone learns to recognise faces from its 30
  low-frequency channels (ArcFace head). It is frozen afterwards.
* Stage B (:func:`train_server`): the server model learns from the 162 high-frequency channels,
  with the frozen client's feature maps turned into masks by the interactive blocks (whose
  interface convs and overlay weights train with the server). ``model.interactive=False`` trains
  the plain server (the "server without mask" ablation) through the same code.
* The RGB baseline (:func:`train_baseline`): the same IResNet on RGB images through
  ``facelab.core.recipe.train_arcface`` with stage B's optimisation settings.

Paper defaults (TFace ``train.yaml``): 112x112 aligned faces, ArcFace s=64 m=0.5, SGD momentum
0.9, weight decay 5e-4, lr 0.1 with x0.1 at epochs 10, 18, 22 of 24, batch 64 per GPU, seed
1337, IR-18 server, MobileFaceNet client, 512-d embeddings. ``duetface_presets()["toy"]`` is a
CPU-minutes version on toyfaces.

Images are encoded to the reference-mode DCT inside the loss function, on the training device
and in float32 even under mixed precision (coefficients reach +-1024).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from facelab.core.errors import RangeError
from facelab.core.freq import FrequencyCodec, select_channels, split_channels
from facelab.core.recipe import (
    ArcFaceConfig,
    DataConfig,
    HeadConfig,
    RecipeResult,
    build_eval_sets,
    build_head,
    build_train_dataset,
    evaluate_sets,
    margin_loss,
    paper_shape_data,
    paper_train_config,
    to_jsonable,
    train_arcface,
    write_json,
)
from facelab.core.train import TrainConfig, Trainer, TrainResult, stage_config
from facelab.duetface.model import ClientModel, ServerModel
from facelab.duetface.protocol import (
    CODEC_MODE,
    DuetFaceClient,
    DuetFacePipeline,
    DuetFaceServer,
    save_bundle,
)
from facelab.duetface.roi import DEFAULT_ROI_MARGIN, ROI_MODES, RoiBuilder, RoiMode

#: toy datasets up to this many bytes (float32) are rendered once and kept in memory
_CACHE_LIMIT_BYTES = 1 << 30


@dataclass
class DuetFaceModelConfig:
    """Network sizes and the ROI (paper defaults)."""

    client_width: float = 1.0
    """MobileFaceNet channel multiplier of the client"""
    client_embedding_size: int = 512
    server_depth: int = 18
    """IResNet depth of the server: 18 (paper default) or 50"""
    server_base_width: int = 64
    embedding_size: int = 512
    dropout: float = 0.4
    interactive: bool = True
    """False trains the plain server on the 162 channels (no masks, no client needed)"""
    roi: RoiMode = "template"
    roi_margin: float = DEFAULT_ROI_MARGIN
    """hull dilation as a fraction of the image width"""

    def __post_init__(self) -> None:
        if self.roi not in ROI_MODES:
            raise RangeError(f"roi: expected one of {list(ROI_MODES)}, got {self.roi!r}")


def _paper_stage(output_dir: str) -> TrainConfig:
    return paper_train_config(output_dir, batch_size=64)


@dataclass
class DuetFaceConfig:
    """The whole recipe. Each stage checkpoints into its own ``output_dir`` (left empty, the
    default: ``output_dir/stage_a`` and ``output_dir/stage_b``, see ``stage``); the trained
    bundle (client, interface convs, server) and ``metrics.json`` go to ``output_dir``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: DuetFaceModelConfig = field(default_factory=DuetFaceModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    client_train: TrainConfig = field(default_factory=lambda: _paper_stage(""))
    """stage A (client alone); empty output_dir: output_dir/stage_a"""
    server_train: TrainConfig = field(default_factory=lambda: _paper_stage(""))
    """stage B (server with the frozen client; empty output_dir: output_dir/stage_b); the RGB
    baseline uses the same settings"""
    output_dir: str = "runs/duetface"
    client: str | None = None
    """a saved ClientModel directory: skip stage A and use it"""
    baseline: bool = False
    """also train the RGB baseline (IResNet on images) into output_dir/rgb_baseline"""
    resume: str | None = None
    """"latest": continue each stage from its newest checkpoint"""
    cache_train_images: bool = False
    """render toyfaces training images once and keep them in memory (small toy sets)"""
    eval_batch_size: int = 128

    def stage(self, name: str) -> TrainConfig:
        """``client_train`` or ``server_train`` with its output folder resolved (an empty one
        follows ``output_dir``; resolved here, not at construction, so that ``--output-dir`` on
        top of a preset moves the stages too)."""
        sub = {"client_train": "stage_a", "server_train": "stage_b"}[name]
        return stage_config(getattr(self, name), self.output_dir, sub)


def duetface_presets() -> dict[str, DuetFaceConfig]:
    """``paper``: the defaults above; ``toy``: 32 px toyfaces, tiny widths, CPU minutes;
    ``paper-shape``: the paper's 112 px faces and block layout (MobileFaceNet client tapped at
    56/28/14/7 px, IR-18 server with four stages at the same sizes) on toyfaces
    (``facelab.core.recipe.paper_shape_data``), with the toy preset's widths and optimisation."""

    def toy_stage(output_dir: str, epochs: int) -> TrainConfig:
        return TrainConfig(
            output_dir=output_dir,
            epochs=epochs,
            batch_size=64,
            lr=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            scheduler="step",
            milestones=(int(epochs * 0.6), int(epochs * 0.85)),
            warmup=1,
            seed=1337,
            log_every=10,
        )

    toy = DuetFaceConfig(
        data=DataConfig(
            image_size=32,
            toy_identities=200,
            toy_images_per_identity=12,
            eval_identities=100,
            eval_images_per_identity=8,
            eval_pairs=1000,
        ),
        model=DuetFaceModelConfig(
            client_width=0.25,
            client_embedding_size=64,
            server_base_width=16,
            embedding_size=64,
        ),
        client_train=toy_stage("", 10),
        server_train=toy_stage("", 10),
        output_dir="runs/duetface-toy",
        cache_train_images=True,
        eval_batch_size=256,
    )
    paper_shape = dataclasses.replace(
        toy,
        data=paper_shape_data(),
        # 1000 training images: 16 steps per epoch at batch 64
        client_train=toy_stage("", 12),
        server_train=toy_stage("", 12),
        output_dir="runs/duetface-paper-shape",
        eval_batch_size=64,
    )
    return {"paper": DuetFaceConfig(), "toy": toy, "paper-shape": paper_shape}


# --------------------------------------------------------------------------------------------
# building blocks


def build_client(cfg: DuetFaceConfig) -> ClientModel:
    return ClientModel(
        image_size=cfg.data.image_size,
        embedding_size=cfg.model.client_embedding_size,
        width=cfg.model.client_width,
    )


def build_server(
    cfg: DuetFaceConfig, client: ClientModel, *, interactive: bool | None = None
) -> ServerModel:
    return ServerModel(
        depth=cfg.model.server_depth,
        image_size=cfg.data.image_size,
        embedding_size=cfg.model.embedding_size,
        base_width=cfg.model.server_base_width,
        dropout=cfg.model.dropout,
        client_positions=client.positions,
        client_channels=[c for c, _, _ in client.stage_shapes],
        interactive=cfg.model.interactive if interactive is None else interactive,
    )


def training_data(cfg: DuetFaceConfig) -> tuple[Dataset, int]:
    """The training set (rendered once into memory with ``cache_train_images``)."""
    dataset, num_classes = build_train_dataset(cfg.data)
    if cfg.cache_train_images and cfg.data.is_toy:
        n = len(dataset)  # type: ignore[arg-type]
        size = cfg.data.image_size
        if n * 3 * size * size * 4 > _CACHE_LIMIT_BYTES:
            raise RangeError(
                f"cache_train_images: {n} images of {size}x{size} exceed "
                f"{_CACHE_LIMIT_BYTES >> 20} MiB; turn the cache off"
            )
        base = getattr(dataset, "base", dataset)  # RepeatDataset keeps the ToyFaces in .base
        images = base.render(torch.arange(len(base)))
        labels = base.labels
        times = len(dataset) // len(base)  # type: ignore[arg-type]
        dataset = TensorDataset(images.repeat(times, 1, 1, 1), labels.repeat(times))
    return dataset, num_classes


class _Encoder:
    """Images -> (client channels, server channels), float32 even under autocast."""

    def __init__(self, positions: tuple[int, ...]) -> None:
        self.positions = positions
        self.codec = FrequencyCodec(CODEC_MODE, check=False)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(images.device.type, enabled=False):
            return split_channels(self.codec.encode(images.float()), self.positions)

    def client_channels(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, enabled=False):
            return select_channels(self.codec.encode(images.float()), self.positions)


@dataclass
class StageResult:
    model: nn.Module
    train: TrainResult
    wall_time: float


def train_client(
    cfg: DuetFaceConfig, dataset: Dataset, num_classes: int, *, client: ClientModel | None = None
) -> StageResult:
    """Stage A: the client model with an ArcFace head on its 30 channels."""
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # initialisation from the stage seed alone
        torch.manual_seed(cfg.client_train.seed)
        client = client if client is not None else build_client(cfg)
        head = build_head(cfg.head, client.embedding_size, num_classes)
    encode = _Encoder(client.positions)

    def loss_fn(batch, modules, ctx):
        images, labels = batch
        low = encode.client_channels(images)
        return margin_loss(modules["head"], modules["client"](low), labels)

    trainer = Trainer(cfg.stage("client_train"), {"client": client, "head": head}, loss_fn, dataset)
    result = trainer.fit(resume=cfg.resume)
    model = trainer.unwrap("client")
    return StageResult(model, result, time.perf_counter() - t0)


def train_server(
    cfg: DuetFaceConfig,
    client: ClientModel,
    dataset: Dataset,
    num_classes: int,
    *,
    interactive: bool | None = None,
    train_cfg: TrainConfig | None = None,
) -> StageResult:
    """Stage B: the server on the 162 channels with the frozen client's masks.

    ``interactive`` overrides ``cfg.model.interactive`` (``False``: the plain server);
    ``train_cfg`` overrides ``cfg.server_train`` (e.g. another output folder).
    """
    t0 = time.perf_counter()
    stage_cfg = train_cfg or cfg.stage("server_train")
    with torch.random.fork_rng(devices=[]):
        # initialisation from the stage seed alone; head and backbone first, so a plain and an
        # interactive server of the same seed start from the same weights
        torch.manual_seed(stage_cfg.seed)
        head = build_head(cfg.head, cfg.model.embedding_size, num_classes)
        server = build_server(cfg, client, interactive=interactive)
    encode = _Encoder(client.positions)
    roi = RoiBuilder(cfg.model.roi, cfg.model.roi_margin)
    modules = {"server": server, "head": head}
    if server.interactive:
        modules["client"] = client

    def loss_fn(batch, modules, ctx):
        images, labels = batch
        low, high = encode(images)
        if not server.interactive:
            emb = modules["server"](high)
            return margin_loss(modules["head"], emb, labels)
        with torch.no_grad():
            maps = modules["client"].feature_maps(low)
        emb = modules["server"](high, client_maps=maps, roi=roi(images))
        w = torch.stack([blk.weight for blk in ctx.unwrap("server").blocks]).detach()
        return margin_loss(modules["head"], emb, labels), {"mask_w": w.abs().mean()}

    frozen = ("client",) if server.interactive else ()
    trainer = Trainer(stage_cfg, modules, loss_fn, dataset, frozen=frozen)
    result = trainer.fit(resume=cfg.resume)
    model = trainer.unwrap("server")
    return StageResult(model, result, time.perf_counter() - t0)


def build_pipeline(
    client: ClientModel, server: ServerModel, cfg: DuetFaceConfig | None = None
) -> DuetFacePipeline:
    """Client + server as one images -> embeddings module (evaluation, attacks)."""
    model_cfg = cfg.model if cfg is not None else DuetFaceModelConfig()
    masks = server.mask_generator() if server.interactive else None
    device = next(server.parameters()).device
    return DuetFacePipeline(
        DuetFaceClient(
            client.to(device), masks, roi=model_cfg.roi, roi_margin=model_cfg.roi_margin
        ),
        DuetFaceServer(server),
    )


def baseline_config(cfg: DuetFaceConfig) -> ArcFaceConfig:
    """The RGB baseline with the server's architecture and stage B's optimisation."""
    return ArcFaceConfig(
        data=cfg.data,
        backbone=f"r{cfg.model.server_depth}",
        embedding_size=cfg.model.embedding_size,
        base_width=cfg.model.server_base_width,
        dropout=cfg.model.dropout,
        head=cfg.head,
        train=dataclasses.replace(
            cfg.stage("server_train"), output_dir=str(Path(cfg.output_dir) / "rgb_baseline")
        ),
        eval_batch_size=cfg.eval_batch_size,
        resume=cfg.resume,
    )


def train_baseline(cfg: DuetFaceConfig) -> RecipeResult:
    """The RGB baseline through ``facelab.core.recipe.train_arcface``."""
    return train_arcface(baseline_config(cfg))


@dataclass
class DuetFaceResult:
    """What :func:`train` returns. ``verification`` (main process): ``{set: VerificationResult}``
    of the full protocol; ``baseline``: the RGB baseline's result when trained."""

    client: ClientModel
    server: ServerModel
    pipeline: DuetFacePipeline
    verification: dict[str, Any]
    stage_a: StageResult | None
    stage_b: StageResult
    baseline: RecipeResult | None
    output_dir: Path
    wall_time: float

    def summary(self) -> dict[str, Any]:
        def stage(s: StageResult | None) -> Any:
            if s is None:
                return None
            return {
                "steps": s.train.step,
                "wall_time_s": round(s.wall_time, 1),
                "losses": s.train.losses,
            }

        out = {
            "wall_time_s": round(self.wall_time, 1),
            "stage_a": stage(self.stage_a),
            "stage_b": stage(self.stage_b),
            "mask_weights": [float(b.weight) for b in self.server.blocks],
            "verification": {k: v.to_dict() for k, v in self.verification.items()},
        }
        if self.baseline is not None:
            out["rgb_baseline"] = self.baseline.summary()
        return out


def train(cfg: DuetFaceConfig) -> DuetFaceResult:
    """Stage A (unless ``cfg.client`` is given or the server is plain), stage B, evaluation on
    ``build_eval_sets(cfg.data)``, the bundle and ``metrics.json`` in ``cfg.output_dir``; the
    RGB baseline too with ``cfg.baseline``."""
    t0 = time.perf_counter()
    dataset, num_classes = training_data(cfg)
    stage_a: StageResult | None = None
    if cfg.client is not None:
        client = ClientModel.from_pretrained(cfg.client)
    elif not cfg.model.interactive:
        client = build_client(cfg)  # only its channel split is used by a plain server
    else:
        stage_a = train_client(cfg, dataset, num_classes)
        client = stage_a.model  # type: ignore[assignment]
    client.eval().requires_grad_(False)
    stage_b = train_server(cfg, client, dataset, num_classes)
    server: ServerModel = stage_b.model  # type: ignore[assignment]
    pipeline = build_pipeline(client, server, cfg)

    out = Path(cfg.output_dir)
    verification: dict[str, Any] = {}
    import accelerate

    is_main = accelerate.PartialState().is_main_process
    if is_main:
        verification = evaluate_sets(
            pipeline, build_eval_sets(cfg.data), batch_size=cfg.eval_batch_size
        )
        save_bundle(out, client, server, roi=cfg.model.roi, roi_margin=cfg.model.roi_margin)
    baseline = train_baseline(cfg) if cfg.baseline else None
    result = DuetFaceResult(
        client,
        server,
        pipeline,
        verification,
        stage_a,
        stage_b,
        baseline,
        out,
        time.perf_counter() - t0,
    )
    if is_main:
        write_json(out / "metrics.json", result.summary() | {"config": to_jsonable(cfg)})
    return result
