"""Vector quantizer with a learnable codebook (straight-through, codebook + commitment loss).

Why not ``vector-quantize-pytorch`` (checked at 1.32.0): GloTok needs (1) the paper's
``L_Q = ||sg[Z] - Zq||^2 + beta ||sg[Zq] - Z||^2``, i.e. weight 1 on the codebook term and
``beta`` = 0.25 on the commitment term; the library's learnable-codebook loss is one
``mse(quantize, x)`` in which both sides receive the gradient with the same weight; (2)
L2-normalized (cosine) codes as in LlamaGen's tokenizer, which the library asserts are "not
compatible with learnable codebook yet"; (3) the raw codebook as a plain ``nn.Parameter`` that
the histogram relation loss differentiates, with no EMA or dead-code replacement rewriting it in
place. What is left is a nearest-neighbour search and two MSE terms, written here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from facelab.core.errors import RangeError, ShapeError

#: nearest-code search works on blocks of this many vectors (bounds the distance matrix)
SEARCH_BLOCK = 8192


@dataclass
class Quantized:
    """``z``: the (normalized) input ``(B, D, H, W)``; ``z_q``: straight-through codes (values of
    the codes, gradient to ``z``); ``codes``: the code vectors with gradient to the codebook;
    ``indices`` ``(B, H, W)``; ``loss`` = ``codebook_loss + beta * commit_loss``."""

    z: torch.Tensor
    z_q: torch.Tensor
    codes: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor
    codebook_loss: torch.Tensor
    commit_loss: torch.Tensor


class VectorQuantizer(nn.Module):
    """``num_codes`` learnable codes of ``dim``; ``l2_normalize`` compares and returns unit
    vectors (LlamaGen's cosine codebook). Initialization as taming/LlamaGen:
    ``U(-1/K, 1/K)`` (then normalized when ``l2_normalize``)."""

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, l2_normalize: bool = True):
        super().__init__()
        if num_codes < 2 or dim < 1:
            raise RangeError(
                f"VectorQuantizer: expected num_codes >= 2 and dim >= 1, got {num_codes}, {dim}"
            )
        if not 0 <= beta:
            raise RangeError(f"beta: expected >= 0, got {beta}")
        self.num_codes, self.dim, self.beta, self.l2_normalize = num_codes, dim, beta, l2_normalize
        self.codebook = nn.Parameter(
            torch.empty(num_codes, dim).uniform_(-1 / num_codes, 1 / num_codes)
        )

    def normalized_codebook(self) -> torch.Tensor:
        return F.normalize(self.codebook, dim=1) if self.l2_normalize else self.codebook

    @torch.no_grad()
    def nearest(self, flat: torch.Tensor, codebook: torch.Tensor | None = None) -> torch.Tensor:
        """Index of the nearest code (squared L2) of every row of ``flat`` ``(N, D)``."""
        cb = self.normalized_codebook() if codebook is None else codebook
        cb_sq = cb.square().sum(1)
        out = []
        for s in range(0, flat.shape[0], SEARCH_BLOCK):
            x = flat[s : s + SEARCH_BLOCK]
            # ||x||^2 is constant per row: argmin of ||c||^2 - 2 x.c
            out.append(torch.addmm(cb_sq, x, cb.T, alpha=-2.0).argmin(1))
        return torch.cat(out) if out else flat.new_zeros(0, dtype=torch.long)

    def forward(self, z: torch.Tensor) -> Quantized:
        if z.dim() != 4 or z.shape[1] != self.dim:
            raise ShapeError(
                f"quantizer input: expected (B, {self.dim}, H, W), got {tuple(z.shape)}"
            )
        b, d, h, w = z.shape
        if self.l2_normalize:
            z = F.normalize(z, dim=1)
        cb = self.normalized_codebook()
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        idx = self.nearest(flat.detach(), cb.detach())
        codes = F.embedding(idx, cb).view(b, h, w, d).permute(0, 3, 1, 2)
        codebook_loss = F.mse_loss(codes, z.detach())
        commit_loss = F.mse_loss(z, codes.detach())
        z_q = z + (codes - z).detach()
        return Quantized(
            z=z,
            z_q=z_q,
            codes=codes,
            indices=idx.view(b, h, w),
            loss=codebook_loss + self.beta * commit_loss,
            codebook_loss=codebook_loss,
            commit_loss=commit_loss,
        )

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes ``(B, D, H, W)`` of indices ``(B, H, W)``."""
        if indices.dtype not in (torch.int64, torch.int32) or indices.dim() != 3:
            raise ShapeError(
                f"indices: expected an integer (B, H, W) tensor, got {indices.dtype} {tuple(indices.shape)}"
            )
        if indices.numel():
            lo, hi = int(indices.min()), int(indices.max())
            if lo < 0 or hi >= self.num_codes:
                raise RangeError(
                    f"indices: expected values in [0, {self.num_codes - 1}], got min {lo} max {hi}"
                )
        return F.embedding(indices.long(), self.normalized_codebook()).permute(0, 3, 1, 2)
