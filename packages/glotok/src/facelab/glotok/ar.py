"""Class-conditional autoregressive transformer over GloTok's two token grids.

Each grid position ``t`` (raster order) carries a semantic index ``s_t`` and a visual index
``v_t``. We factorize ``p(s_t, v_t | prefix) = p(s_t | prefix) p(v_t | prefix, s_t)``: one
decoder-only transformer reads ``[class, e(s_0, v_0), ..., e(s_{N-2}, v_{N-2})]`` with
``e(s, v) = E_sem[s] + E_vis[v]`` plus learned positions; the semantic head reads the hidden
state, the visual head reads the hidden state plus an embedding of the position's semantic index
(teacher-forced in training, the sampled one in generation). This is our choice: the paper's
generator (xAR) models the concatenated continuous quantized features, and the issue allows
either route; two index heads keep generation exact on the tokenizer's codebooks.

Generation: classifier-free guidance (a null class, ``class_dropout`` in training; logits
``u + scale (c - u)`` as LlamaGen), temperature and top-k sampling, and a KV cache (each step
feeds one token and attends to the cached keys/values of every layer). ``use_cache=False``
recomputes the whole prefix each step; both give the same samples for the same generator.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from facelab.core.errors import FacelabTypeError, RangeError, ShapeError
from facelab.core.hub import PretrainedMixin, register_model


@dataclass
class ARConfig:
    """Defaults: a GPT-B-sized model (LlamaGen's class-conditional GPT-B) over a 16 x 16 grid
    with the paper's codebooks."""

    num_classes: int = 1000
    grid: int = 16
    semantic_codes: int = 4096
    visual_codes: int = 12288
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    class_dropout: float = 0.1

    def __post_init__(self) -> None:
        for name in (
            "num_classes",
            "grid",
            "semantic_codes",
            "visual_codes",
            "dim",
            "depth",
            "heads",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RangeError(f"{name}: expected a positive int, got {v!r}")
        if self.dim % self.heads:
            raise RangeError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if not 0 <= self.class_dropout < 1 or not 0 <= self.dropout < 1:
            raise RangeError("class_dropout and dropout: expected values in [0, 1)")

    @property
    def seq_len(self) -> int:
        return self.grid * self.grid


KV = tuple[torch.Tensor, torch.Tensor]


class CausalSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, past: KV | None = None) -> tuple[torch.Tensor, KV]:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        # with a cache the new queries follow every cached key; only a multi-token chunk
        # without a past needs the causal mask (a chunk after a past is not used here)
        causal = past is None and n > 1
        if past is not None and n > 1:
            raise ShapeError("attention with a KV cache takes one new token at a time")
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=p)
        return self.proj(out.transpose(1, 2).reshape(b, n, d)), (k, v)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, past: KV | None = None) -> tuple[torch.Tensor, KV]:
        a, kv = self.attn(self.norm1(x), past)
        x = x + a
        return x + self.mlp(self.norm2(x)), kv


@register_model(key="facelab.glotok.ARTransformer")
class ARTransformer(nn.Module, PretrainedMixin):
    def __init__(self, config: ARConfig | None = None, **fields: Any) -> None:
        super().__init__()
        cfg = config if config is not None else ARConfig(**fields)
        if not isinstance(cfg, ARConfig):
            raise FacelabTypeError(f"ARTransformer: expected an ARConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.class_emb = nn.Embedding(cfg.num_classes + 1, cfg.dim)  # last row: the null class
        self.sem_emb = nn.Embedding(cfg.semantic_codes, cfg.dim)
        self.vis_emb = nn.Embedding(cfg.visual_codes, cfg.dim)
        self.pos = nn.Parameter(torch.zeros(1, cfg.seq_len, cfg.dim))
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.sem_head = nn.Linear(cfg.dim, cfg.semantic_codes)
        self.sem_given = nn.Embedding(cfg.semantic_codes, cfg.dim)
        self.vis_norm = nn.LayerNorm(cfg.dim)
        self.vis_head = nn.Linear(cfg.dim, cfg.visual_codes)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    @property
    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self.cfg)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ARTransformer:
        return cls(ARConfig(**config))

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    # ------------------------------------------------------------------ checks

    def _check_tokens(self, semantic: torch.Tensor, visual: torch.Tensor) -> None:
        n = self.cfg.seq_len
        for name, t, k in (
            ("semantic", semantic, self.cfg.semantic_codes),
            ("visual", visual, self.cfg.visual_codes),
        ):
            if (
                t.dtype not in (torch.int64, torch.int32, torch.int16)
                or t.dim() != 2
                or t.shape[1] != n
            ):
                raise ShapeError(
                    f"{name} tokens: expected an integer (B, {n}) tensor, got {t.dtype} {tuple(t.shape)}"
                )
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
                raise RangeError(
                    f"{name} tokens: expected values in [0, {k - 1}], got [{int(t.min())}, {int(t.max())}]"
                )
        if semantic.shape != visual.shape:
            raise ShapeError(
                f"semantic {tuple(semantic.shape)} and visual {tuple(visual.shape)} tokens differ in shape"
            )

    def _check_labels(self, labels: torch.Tensor, allow_null: bool = False) -> None:
        hi = self.cfg.num_classes + (1 if allow_null else 0)
        if labels.dim() != 1 or labels.dtype not in (torch.int64, torch.int32):
            raise ShapeError(
                f"labels: expected an integer (B,) tensor, got {labels.dtype} {tuple(labels.shape)}"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= hi):
            raise RangeError(
                f"labels: expected class ids in [0, {hi - 1}], got [{int(labels.min())}, {int(labels.max())}]"
            )

    # ------------------------------------------------------------------ training

    def _token_emb(self, semantic: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        return self.sem_emb(semantic.long()) + self.vis_emb(visual.long())

    def _vis_logits(self, h: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        return self.vis_head(self.vis_norm(h + self.sem_given(semantic.long())))

    def forward(
        self, semantic: torch.Tensor, visual: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced logits ``(B, N, K_sem)`` and ``(B, N, K_vis)``. In training mode each
        label becomes the null class with probability ``class_dropout`` (for CFG)."""
        self._check_tokens(semantic, visual)
        self._check_labels(labels, allow_null=True)
        if self.training and self.cfg.class_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.cfg.class_dropout
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        x = torch.cat(
            [
                self.class_emb(labels.long())[:, None],
                self._token_emb(semantic[:, :-1], visual[:, :-1]),
            ],
            dim=1,
        )
        h = self.drop(x + self.pos)
        for blk in self.blocks:
            h, _ = blk(h)
        h = self.norm(h)
        return self.sem_head(h), self._vis_logits(h, semantic)

    def loss(
        self, semantic: torch.Tensor, visual: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ls, lv = self(semantic, visual, labels)
        ce_s = F.cross_entropy(ls.flatten(0, 1), semantic.long().flatten())
        ce_v = F.cross_entropy(lv.flatten(0, 1), visual.long().flatten())
        return ce_s + ce_v, {"ce_sem": ce_s.detach(), "ce_vis": ce_v.detach()}

    # ------------------------------------------------------------------ generation

    def _run(self, x: torch.Tensor, past: list[KV] | None) -> tuple[torch.Tensor, list[KV]]:
        new = []
        for i, blk in enumerate(self.blocks):
            x, kv = blk(x, None if past is None else past[i])
            new.append(kv)
        return self.norm(x), new

    @torch.no_grad()
    def generate(
        self,
        labels: torch.Tensor,
        *,
        cfg_scale: float = 1.0,
        temperature: float = 1.0,
        top_k: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``(semantic (B, N), visual (B, N))`` token sequences for class ``labels``."""
        self._check_labels(labels)
        if not temperature > 0:
            raise RangeError(f"temperature: expected > 0, got {temperature}")
        if top_k is not None and not 1 <= top_k:
            raise RangeError(f"top_k: expected >= 1 or None, got {top_k}")
        if not cfg_scale >= 0:
            raise RangeError(f"cfg_scale: expected >= 0, got {cfg_scale}")
        was = self.training
        self.eval()
        try:
            return self._generate(labels, cfg_scale, temperature, top_k, use_cache, generator)
        finally:
            self.train(was)

    def _generate(self, labels, cfg_scale, temperature, top_k, use_cache, generator):
        b, n = labels.shape[0], self.cfg.seq_len
        guided = cfg_scale != 1.0
        cond = torch.cat([labels, torch.full_like(labels, self.null_class)]) if guided else labels
        sem = torch.zeros(b, n, dtype=torch.long, device=labels.device)
        vis = torch.zeros_like(sem)
        inputs = self.class_emb(cond.long())[:, None] + self.pos[:, :1]  # (B', 1, D)
        past: list[KV] | None = None
        for t in range(n):
            if use_cache:
                h, past = self._run(inputs[:, -1:], past)
            else:
                h, _ = self._run(inputs, None)
            h = h[:, -1]
            s = self._sample(
                self._guide(self.sem_head(h), guided, cfg_scale), temperature, top_k, generator
            )
            s2 = torch.cat([s, s]) if guided else s
            v = self._sample(
                self._guide(self._vis_logits(h, s2), guided, cfg_scale),
                temperature,
                top_k,
                generator,
            )
            sem[:, t], vis[:, t] = s, v
            if t + 1 < n:
                v2 = torch.cat([v, v]) if guided else v
                nxt = self._token_emb(s2, v2)[:, None] + self.pos[:, t + 1 : t + 2]
                inputs = nxt if use_cache else torch.cat([inputs, nxt], dim=1)
        return sem, vis

    @staticmethod
    def _guide(logits: torch.Tensor, guided: bool, scale: float) -> torch.Tensor:
        if not guided:
            return logits
        c, u = logits.chunk(2)
        return u + scale * (c - u)

    @staticmethod
    def _sample(
        logits: torch.Tensor, temperature: float, top_k: int | None, generator
    ) -> torch.Tensor:
        logits = logits.float() / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
