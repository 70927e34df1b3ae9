"""Evaluation of a tokenizer (reconstruction) and of generated samples."""

from __future__ import annotations

import torch
from torch import nn

from facelab.glotok.histogram import TeacherHistogram, codebook_histogram, histogram_relation_loss
from facelab.glotok.metrics import (
    codebook_usage,
    frechet_distance,
    perplexity,
    psnr,
    ssim,
    uniformity,
)
from facelab.glotok.model import GloTok


@torch.no_grad()
def tokenizer_metrics(
    model: GloTok,
    images: torch.Tensor,
    *,
    teacher: TeacherHistogram | None = None,
    extractor: nn.Module | None = None,
    inception_weights: str | None = None,
    batch_size: int = 128,
) -> dict[str, float]:
    """PSNR, SSIM, code usage and perplexity of both codebooks, uniformity of the semantic
    latents and codebook, KL to the teacher histogram (when given) and rFID (when a feature
    extractor or Inception weights are given) on ``images`` in [-1, 1]."""
    was = model.training
    model.eval()
    try:
        recon, sem_idx, vis_idx, z_sem = [], [], [], []
        for s in range(0, images.shape[0], batch_size):
            out = model(images[s : s + batch_size])
            recon.append(out.recon.clamp(-1, 1))
            sem_idx.append(out.semantic.indices)
            vis_idx.append(out.visual.indices)
            z_sem.append(out.semantic.z.permute(0, 2, 3, 1).reshape(-1, model.cfg.code_dim))
    finally:
        model.train(was)
    recon_t = torch.cat(recon)
    sem, vis = torch.cat(sem_idx), torch.cat(vis_idx)
    m = {
        "psnr": psnr(recon_t, images),
        "ssim": ssim(recon_t, images),
        "usage_semantic": codebook_usage(sem, model.cfg.semantic_codes),
        "usage_visual": codebook_usage(vis, model.cfg.visual_codes),
        "perplexity_semantic": perplexity(sem, model.cfg.semantic_codes),
        "perplexity_visual": perplexity(vis, model.cfg.visual_codes),
        "uniformity_latent": uniformity(torch.cat(z_sem)),
        "uniformity_codebook": uniformity(model.semantic_quantizer.normalized_codebook()),
    }
    if teacher is not None and teacher.hist.shape[0] == teacher.bins:
        m["hist_kl"] = float(histogram_relation_loss(model.semantic_codebook, teacher))
    if extractor is not None or inception_weights is not None:
        m["rfid"] = frechet_distance(
            images, recon_t, extractor, inception_weights=inception_weights
        )
    return m


def student_histogram(model: GloTok, bins: int, alpha: float) -> torch.Tensor:
    with torch.no_grad():
        return codebook_histogram(model.semantic_codebook, bins, alpha)
