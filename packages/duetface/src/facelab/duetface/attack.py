"""Privacy evaluation of DuetFace with the core attack harness.

An honest-but-curious server (or an eavesdropper) sees the :class:`ServerPayload`: the 162
high-frequency channels *and* the four masks. The masks come from the client's low-frequency
features, so they may carry appearance (face shape, where the eyes are); they are part of the
attacker's observation here. We compare inversion attacks (``facelab.core.privacy``:
a U-Net decoder trained on paired data, scored by SSIM/PSNR and identity leakage under an
independent recognizer) trained on

* ``"rgb"``: the image itself (what a server sees without any protection; the ceiling),
* ``"payload"``: high-frequency channels + masks (each mask nearest-upsampled to H x W, one
  channel per mask, so no value is lost),
* ``"high_freq"``: the high-frequency channels alone (isolates what the masks add),
* ``"masks"``: the four masks alone,

with the same decoder, seed, steps and data. Without training, :func:`idct_views` shows how much
of the image each side's channels carry: the inverse DCT of the 30 client channels alone (with
zeros elsewhere) is close to the image; of the 162 server channels alone it is not.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from facelab.core.errors import ShapeError, UnknownNameError
from facelab.core.freq import FrequencyCodec, merge_channels
from facelab.core.privacy import (
    AttackConfig,
    InversionAttack,
    evaluate_reconstructions,
    mean_image_baseline,
    save_grid,
    ssim,
)
from facelab.core.privacy import psnr as psnr_metric
from facelab.duetface.protocol import CODEC_MODE, DuetFaceClient, ServerPayload

OBSERVATIONS: tuple[str, ...] = ("rgb", "payload", "high_freq", "masks")


def payload_observation(payload: ServerPayload, kind: str = "payload") -> torch.Tensor:
    """What the attacker's decoder reads, float32 ``(B, C, H, W)``.

    ``payload``: the 162 channels then the masks nearest-upsampled to H x W; ``high_freq``: the
    channels only; ``masks``: the masks only.
    """
    if kind not in ("payload", "high_freq", "masks"):
        raise UnknownNameError(f"payload observation {kind!r}; valid: payload, high_freq, masks")
    x = payload.high_freq.float()
    size = tuple(x.shape[-2:])
    masks = [F.interpolate(m.float(), size=size, mode="nearest") for m in payload.masks]
    if kind == "high_freq":
        return x
    if not masks:
        raise ShapeError(f"observation {kind!r}: the payload carries no masks (plain server)")
    if kind == "masks":
        return torch.cat(masks, dim=1)
    return torch.cat([x, *masks], dim=1)


class ObservationSet(Dataset):
    """``(observation, image)`` pairs made from images by a client, batch by batch.

    ``InversionAttack.fit`` fetches whole batches through ``__getitems__``, so the client runs
    vectorized. With ``cache`` every observation is computed once and stored (in
    ``cache_dtype``; float16 halves the memory); without it they are recomputed on every fetch
    (paper-scale sets that do not fit in memory).
    """

    def __init__(
        self,
        client: DuetFaceClient,
        images: torch.Tensor,
        kind: str,
        *,
        cache: bool = True,
        cache_dtype: torch.dtype = torch.float16,
        batch_size: int = 128,
    ) -> None:
        if kind not in OBSERVATIONS:
            raise UnknownNameError(f"unknown observation {kind!r}; valid: {list(OBSERVATIONS)}")
        self.client, self.images, self.kind = client, images, kind
        self._cache: torch.Tensor | None = None
        if cache and kind == "rgb":
            self._cache = images  # the images themselves, no copy
        elif cache:
            parts = [
                self._compute(images[s : s + batch_size]).to(cache_dtype)
                for s in range(0, images.shape[0], batch_size)
            ]
            self._cache = torch.cat(parts)

    def _compute(self, images: torch.Tensor) -> torch.Tensor:
        if self.kind == "rgb":
            return images.float()
        return payload_observation(self.client.prepare(images), self.kind).cpu()

    def observations(self) -> torch.Tensor:
        """All observations (the cache, or computed now)."""
        if self._cache is not None:
            return self._cache
        return self._compute(self.images)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        img = self.images[idx]
        obs = self._cache[idx].float() if self._cache is not None else self._compute(img)
        return list(zip(obs.unbind(0), img.unbind(0)))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([int(i)])[0]


def idct_views(images: torch.Tensor, positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse DCT of the client channels alone and of the server channels alone (zeros for the
    other side), clamped to [-1, 1]: ``(client_only, server_only)`` images."""
    codec = FrequencyCodec(CODEC_MODE)
    coeffs = codec.encode(images.float())
    from facelab.core.freq import split_channels

    low, high = split_channels(coeffs, positions)
    client_only = codec.decode(merge_channels(low, torch.zeros_like(high), positions), clamp=True)
    server_only = codec.decode(merge_channels(torch.zeros_like(low), high, positions), clamp=True)
    return client_only, server_only


def idct_view_metrics(images: torch.Tensor, positions: Sequence[int]) -> dict[str, float]:
    """SSIM/PSNR of each side's inverse-DCT view against the images."""
    client_only, server_only = idct_views(images, positions)
    return {
        "client_only_ssim": float(ssim(client_only, images).mean()),
        "client_only_psnr": float(psnr_metric(client_only, images).mean()),
        "server_only_ssim": float(ssim(server_only, images).mean()),
        "server_only_psnr": float(psnr_metric(server_only, images).mean()),
    }


def evaluate_privacy(
    client: DuetFaceClient,
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    *,
    observations: Sequence[str] = ("rgb", "payload"),
    config: AttackConfig | None = None,
    steps: int = 1000,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    recognizer: nn.Module | None = None,
    test_labels: torch.Tensor | None = None,
    far: float | None = None,
    baseline: bool = True,
    cache: bool = True,
    grid_path: str | None = None,
    grid_samples: int = 8,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Train one inversion attack per observation kind, score each on the test images.

    Every attack gets the same decoder config, seed, steps, batch size and learning rate (as
    ``facelab.core.privacy.compare_attacks``, but observations are made by the client batch by
    batch, so 112 px payloads need not fit in memory). With ``recognizer`` the rows carry
    identity leakage; with ``far`` and ``test_labels`` also the attack success rate at the
    threshold chosen on the real test images. ``baseline`` adds the "mean image" row (an attack
    that learned nothing). Returns rows: ``attack``, ``observation`` (shape), the metrics of
    ``AttackResult.as_row`` and ``train_loss`` / ``train_seconds``.
    """
    for k in observations:
        if k not in OBSERVATIONS:
            raise UnknownNameError(f"unknown observation {k!r}; valid: {list(OBSERVATIONS)}")
    scoring: dict[str, Any] = {"recognizer": recognizer}
    if recognizer is not None and far is not None:
        scoring.update(labels=test_labels, far=far)
    rows: list[dict[str, Any]] = []
    if baseline:
        row = mean_image_baseline(train_images, test_images, **scoring).as_row("mean image")
        row.update(observation="none", train_loss=float("nan"), train_seconds=0.0)
        rows.append(row)
    recs: dict[str, torch.Tensor] = {}
    for kind in observations:
        t0 = time.perf_counter()
        train_set = ObservationSet(client, train_images, kind, cache=cache)
        attack = InversionAttack(config, seed=seed, device=device)
        history = attack.fit(
            train_set if not cache else train_set.observations(),
            None if not cache else train_images,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            progress=progress,
        )
        test_set = ObservationSet(client, test_images, kind, cache=False)
        rec = torch.cat(
            [
                attack.reconstruct(test_set._compute(test_images[s : s + 256]))
                for s in range(0, test_images.shape[0], 256)
            ]
        ).to(test_images.device)
        result = evaluate_reconstructions(rec, test_images, **scoring)
        row = result.as_row(kind)
        row.update(
            observation="x".join(str(v) for v in attack.decoder.observation_shape),
            train_loss=history.final_loss,
            train_seconds=time.perf_counter() - t0,
        )
        rows.append(row)
        recs[kind] = rec[:grid_samples]
    if grid_path is not None:
        client_only, server_only = idct_views(test_images[:grid_samples], client.client.positions)
        save_grid(
            grid_path,
            test_images[:grid_samples],
            {"IDCT client": client_only, "IDCT server": server_only, **recs},
            scale=max(1, 112 // test_images.shape[-1]),
        )
    return rows
