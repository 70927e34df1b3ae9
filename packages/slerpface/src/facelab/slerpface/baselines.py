"""One interface for SlerpFace and the baselines it is compared with.

Every protector takes the same inputs -- raw group templates ``(B, m, d)`` and attention
weights ``(B, m)`` -- and exposes:

- ``new_keys(n, num_groups, group_size, seed=None)``: per-user key material (CSPRNG by default);
- ``enroll(templates, weights, keys)`` -> dict of stored tensors (the protected template);
- ``match(gallery, probe_templates, probe_weights, keys)`` -> ``MatchResult`` for row-aligned
  pairs (the verifier holds the claimed user's key);
- ``link(a, b)``: the score an attacker *without keys* gets by comparing two stored templates
  directly (row-aligned) -- the linkage function of the unlinkability analysis;
- ``observe(gallery)``: the float vector an inversion attacker trains on;
- ``record(keys, weights)``: what ``match`` takes as ``keys`` for templates enrolled with
  ``keys`` and ``weights`` -- the keys themselves, or for keyed SlerpFace templates
  (``SlerpFaceProtector(storage="keyed")``) a ``KeyRecord`` with the weights.

The baselines work on the weighted template ``x = concat_i(w_i * t_i / |t_i|)`` (``m * d`` dims),
the same information SlerpFace starts from:

- ``Unprotected``: stores ``x`` (as groups); score ``sum_i w_i cos(t_i, q_i)`` -- SlerpFace's
  score with no rotation and no dropout.
- ``BioHashing`` (Teoh et al. 2004): per-user random orthonormal projection ``R`` (``m*d x L``,
  QR of a Gaussian drawn from the user's secret seed), stored bits ``b = [R^T x > 0]``; score =
  share of equal bits.
- ``IronMask`` (Kim et al. 2021): per user a uniformly random codeword ``c`` with ``alpha = 16``
  non-zeros ``+-1/sqrt(alpha)`` and a Haar-random orthogonal ``Q``; the stored template is
  ``P = R Q`` (``R`` the minimal rotation taking ``Q x_hat`` to ``c``, so ``P x_hat = c``) and
  ``SHA-256(c)``. A probe is accepted when decoding ``P q_hat`` (top-alpha magnitudes, their
  signs) reproduces the digest: the score is binary. Storage is ``(m*d)^2`` floats per user.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from facelab.core.errors import (
    FormatError,
    KeyMismatchError,
    RangeError,
    ShapeError,
    UnknownNameError,
    expect_tensor,
)
from facelab.slerpface._checks import (
    as_groups,
    check_nonzero_groups,
    check_same_shape,
    check_weights,
    compute_dtype,
)
from facelab.slerpface.keyed import KeyRecord, as_record
from facelab.slerpface.keys import KeyStore, generate_keys, generate_seeds
from facelab.slerpface.match import MatchResult, match, score_to_distance
from facelab.slerpface.protect import SlerpParams, protect
from facelab.slerpface.template import ProtectedTemplate


def _inputs(
    templates: torch.Tensor, weights: torch.Tensor, group_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    t = expect_tensor(templates, "templates", floating=True)
    if t.dim() != 3:
        raise ShapeError(f"templates: expected (B, m, d) group templates, got {tuple(t.shape)}")
    t = as_groups(t, group_size or t.shape[-1], "templates")
    w = check_weights(weights, t.shape[0], t.shape[1])
    check_nonzero_groups(t, "templates")
    dt = compute_dtype(t)
    return t.to(dt), w.to(device=t.device, dtype=dt)


def weighted_template(templates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(B, m, d)``: group i is ``w_i * t_i / |t_i|`` (norm w_i)."""
    t, w = _inputs(templates, weights)
    return t / t.norm(dim=-1, keepdim=True) * w.unsqueeze(-1)


def _cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.reshape(a.shape[0], -1).to(compute_dtype(a))
    b = b.reshape(b.shape[0], -1).to(a.dtype)
    if a.shape != b.shape:
        raise ShapeError(f"link: stored templates differ in shape: {a.shape} vs {b.shape}")
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def link_group_norms(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
    """Linkage by the group norms alone: the cosine of the ``(m,)`` vectors of per-group norms of
    two stored group templates (``"templates"``, ``(n, m, d)``).

    A SlerpFace template stores group ``i`` with norm ``w_i``, the attention weight of the
    image, whatever the key; an attacker can compare those weights without any key."""
    for x, name in ((a, "a"), (b, "b")):
        if "templates" not in x or x["templates"].dim() != 3:
            raise FormatError(
                f"link_group_norms: {name} must hold group templates (n, m, d) under "
                f"'templates', got keys {sorted(x)}"
            )
    return _cosine_rows(
        torch.linalg.vector_norm(a["templates"].float(), dim=-1),
        torch.linalg.vector_norm(b["templates"].float(), dim=-1),
    )


def _check_rows(keys: torch.Tensor, n: int, shape: tuple[int, ...], name: str = "keys") -> None:
    if keys.shape[0] != n or tuple(keys.shape[1:]) != shape:
        raise ShapeError(
            f"{name}: expected shape {(n, *shape)} (one key per template), got {tuple(keys.shape)}"
        )


class TemplateProtector(ABC):
    """The common interface (see the module docstring)."""

    method: ClassVar[str]
    binary_scores: ClassVar[bool] = False
    #: the stored template is ``(n, m, d)`` groups under ``"templates"`` (``link_group_norms``
    #: applies)
    group_templates: ClassVar[bool] = False
    #: the key record holds the enrolled image's attention weights (keyed SlerpFace)
    stores_weights: bool = False

    @abstractmethod
    def new_keys(
        self, n: int, num_groups: int, group_size: int, *, seed: int | None = None
    ) -> torch.Tensor: ...

    @abstractmethod
    def enroll(
        self,
        templates: torch.Tensor,
        weights: torch.Tensor,
        keys: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]: ...

    @abstractmethod
    def match(
        self,
        gallery: dict[str, torch.Tensor],
        probe_templates: torch.Tensor,
        probe_weights: torch.Tensor,
        keys: torch.Tensor,
    ) -> MatchResult: ...

    @abstractmethod
    def link(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor: ...

    @abstractmethod
    def observe(self, gallery: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def params(self) -> dict[str, Any]:
        return {}

    def record(self, keys: Any, weights: torch.Tensor) -> Any:
        """What ``match`` takes for templates enrolled with ``keys`` from images of attention
        ``weights``: the keys (a ``KeyRecord`` with the weights for keyed SlerpFace)."""
        return keys

    def stored_record(self, store: KeyStore, key_ids: list[str]) -> Any:
        """``record`` from a key store."""
        return store.record(key_ids) if self.stores_weights else store.get(key_ids)

    # ---- the trust-boundary flow: keys into a KeyStore, templates into a ProtectedTemplate --
    def enroll_with_store(
        self,
        templates: torch.Tensor,
        weights: torch.Tensor,
        store: KeyStore,
        *,
        subjects: list[str] | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> ProtectedTemplate:
        """Draw one key per template, keep it in ``store``, return the protected templates."""
        t = expect_tensor(templates, "templates", floating=True)
        if t.dim() != 3:
            raise ShapeError(f"templates: expected (B, m, d), got {tuple(t.shape)}")
        keys = self.new_keys(t.shape[0], t.shape[1], t.shape[2], seed=seed)
        data = self.enroll(t, weights, keys, generator=generator)
        ids = store.add(keys, weights=weights) if self.stores_weights else store.add(keys)
        return ProtectedTemplate(self.method, data, tuple(ids), self.params(), subjects)

    def verify(
        self,
        protected: ProtectedTemplate,
        store: KeyStore,
        probe_templates: torch.Tensor,
        probe_weights: torch.Tensor,
    ) -> MatchResult:
        """Match probe i against stored template i with its key from ``store``."""
        if protected.method != self.method:
            raise KeyMismatchError(
                f"verify: a {protected.method!r} template cannot be matched by {self.method!r}"
            )
        if protected.params != self.params():
            raise KeyMismatchError(
                f"verify: the template was protected with {protected.params}, this protector "
                f"uses {self.params()}"
            )
        keys = self.stored_record(store, list(protected.key_ids))
        return self.match(protected.tensors, probe_templates, probe_weights, keys)


class SlerpFaceProtector(TemplateProtector):
    """SlerpFace (see ``facelab.slerpface.protect``) behind the common interface.

    ``storage="paper"`` stores the paper's format; ``storage="keyed"`` (ours) stores unit groups
    in a key-derived order and keeps the weights in the key record (``record``), with identical
    match scores (``facelab.slerpface.keyed``)."""

    method = "slerpface"
    group_templates = True

    def __init__(
        self,
        alpha: float = 0.9,
        drop_rate: float = 0.5,
        group_size: int = 16,
        sampling: str = "replacement",
        gap_base: int = 8,
        storage: str = "paper",
    ) -> None:
        self.cfg = SlerpParams(alpha, drop_rate, group_size, sampling, gap_base, storage)  # type: ignore[arg-type]
        self.stores_weights = self.cfg.storage == "keyed"

    def params(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    def record(self, keys, weights):
        if not self.stores_weights:
            return keys
        return as_record(keys).with_weights(weights)

    def new_keys(self, n, num_groups, group_size, *, seed=None):
        if group_size != self.cfg.group_size:
            raise ShapeError(
                f"group_size: this protector uses groups of {self.cfg.group_size}, got {group_size}"
            )
        return generate_keys(n, num_groups, group_size, seed=seed)

    def enroll(self, templates, weights, keys, *, generator=None):
        c = self.cfg
        p = protect(
            templates,
            weights,
            keys,
            c.alpha,
            c.drop_rate,
            c.group_size,
            sampling=c.sampling,
            gap_base=c.gap_base,
            generator=generator,
            storage=c.storage,
        )
        return {"templates": p}

    def match(self, gallery, probe_templates, probe_weights, keys):
        if self.stores_weights and not isinstance(keys, KeyRecord):
            raise KeyMismatchError(
                "a keyed SlerpFace template cannot be matched without its key record: the key "
                "AND the attention weights kept next to it (got a bare key tensor; use "
                "protector.record(keys, weights) or KeyStore.record(ids))"
            )
        return match(
            gallery["templates"],
            probe_templates,
            probe_weights,
            keys,
            self.cfg.alpha,
            self.cfg.group_size,
            storage=self.cfg.storage,
        )

    def link(self, a, b):
        return _cosine_rows(a["templates"], b["templates"])

    def observe(self, gallery):
        g = gallery["templates"]
        return g.reshape(g.shape[0], -1).float()


class Unprotected(TemplateProtector):
    """Stores the weighted unit groups as they are (no key)."""

    method = "unprotected"
    group_templates = True

    def new_keys(self, n, num_groups, group_size, *, seed=None):
        return torch.zeros(n, 0)

    def enroll(self, templates, weights, keys, *, generator=None):
        x = weighted_template(templates, weights)
        _check_rows(keys, x.shape[0], (0,))
        return {"templates": x}

    def match(self, gallery, probe_templates, probe_weights, keys):
        g = expect_tensor(gallery["templates"], "gallery", floating=True)
        q, _ = _inputs(probe_templates, probe_weights)
        check_same_shape(g, q, "gallery", "probe_templates")
        _check_rows(keys, q.shape[0], (0,))
        s = (g.to(q.dtype) * (q / q.norm(dim=-1, keepdim=True))).sum(dim=(-1, -2))
        return MatchResult(s, score_to_distance(s))

    def link(self, a, b):
        return _cosine_rows(a["templates"], b["templates"])

    def observe(self, gallery):
        g = gallery["templates"]
        return g.reshape(g.shape[0], -1).float()


def _seeded_gaussians(
    seeds: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """One Gaussian array per int64 seed, ``(n, *shape)``; reproducible from the seed alone.

    A loop over users, but not over samples of a forward pass: a key derivation, done once per
    enrollment or verification batch.
    """
    out = torch.empty((seeds.shape[0], *shape), dtype=dtype)
    for i, s in enumerate(seeds.tolist()):
        g = torch.Generator().manual_seed(int(s))
        out[i] = torch.randn(shape, generator=g, dtype=dtype)
    return out


def _check_seeds(keys: torch.Tensor, n: int, per_key: int) -> torch.Tensor:
    keys = expect_tensor(keys, "keys")
    if keys.dtype != torch.int64:
        raise KeyMismatchError(f"keys: expected int64 seeds for this method, got {keys.dtype}")
    _check_rows(keys, n, (per_key,))
    return keys


class BioHashing(TemplateProtector):
    """Random orthonormal projection (per-user seed) + sign; score = share of equal bits."""

    method = "biohashing"

    def __init__(self, bits: int = 256) -> None:
        if not isinstance(bits, int) or bits < 1:
            raise RangeError(f"bits: expected a positive integer, got {bits!r}")
        self.bits = bits

    def params(self) -> dict[str, Any]:
        return {"bits": self.bits}

    def new_keys(self, n, num_groups, group_size, *, seed=None):
        if self.bits > num_groups * group_size:
            raise RangeError(
                f"bits={self.bits} exceeds the template length {num_groups * group_size}: an "
                "orthonormal projection cannot have more columns than rows"
            )
        return generate_seeds(n, 1, seed=seed)

    def projections(self, keys: torch.Tensor, dim: int) -> torch.Tensor:
        """``(n, dim, bits)`` orthonormal columns derived from the seeds."""
        if self.bits > dim:
            raise RangeError(f"bits={self.bits} exceeds the template length {dim}")
        gauss = _seeded_gaussians(keys[:, 0], (dim, self.bits), torch.float32)
        q, r = torch.linalg.qr(gauss)
        # fix the QR sign ambiguity so the basis is a function of the seed alone
        return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)

    def _bits(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1).float()
        r = self.projections(keys, x.shape[1])
        return torch.bmm(x.unsqueeze(1), r).squeeze(1) > 0

    def enroll(self, templates, weights, keys, *, generator=None):
        x = weighted_template(templates, weights)
        keys = _check_seeds(keys, x.shape[0], 1)
        return {"bits": self._bits(x, keys).to(torch.uint8)}

    def match(self, gallery, probe_templates, probe_weights, keys):
        x = weighted_template(probe_templates, probe_weights)
        keys = _check_seeds(keys, x.shape[0], 1)
        g = expect_tensor(gallery["bits"], "gallery bits")
        if tuple(g.shape) != (x.shape[0], self.bits):
            raise ShapeError(
                f"gallery bits: expected shape {(x.shape[0], self.bits)}, got {tuple(g.shape)}"
            )
        same = (self._bits(x, keys) == g.bool()).float().mean(-1)
        return MatchResult(same, 1.0 - same)

    def link(self, a, b):
        return (a["bits"].bool() == b["bits"].bool()).float().mean(-1)

    def observe(self, gallery):
        return gallery["bits"].float() * 2 - 1


def _codeword_digest(code: torch.Tensor) -> torch.Tensor:
    """SHA-256 of each ternary codeword row (int8 in {-1, 0, 1}) -> ``(n, 32)`` uint8."""
    rows = code.to(torch.int8).contiguous().cpu().numpy()
    digests = [hashlib.sha256(r.tobytes()).digest() for r in rows]
    return torch.tensor([list(d) for d in digests], dtype=torch.uint8).reshape(-1, 32)


class IronMask(TemplateProtector):
    """Random orthogonal rotation onto a sparse codeword, hashed; binary match decisions."""

    method = "ironmask"
    binary_scores = True

    def __init__(self, alpha: int = 16) -> None:
        if not isinstance(alpha, int) or alpha < 1:
            raise RangeError(f"alpha: expected a positive integer, got {alpha!r}")
        self.alpha = alpha

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def new_keys(self, n, num_groups, group_size, *, seed=None):
        if self.alpha > num_groups * group_size:
            raise RangeError(f"alpha={self.alpha} exceeds the template length")
        return generate_seeds(n, 2, seed=seed)

    def codewords(self, keys: torch.Tensor, dim: int) -> torch.Tensor:
        """``(n, dim)`` int8 codewords in {-1, 0, 1} with ``alpha`` non-zeros (seed 1)."""
        u = _seeded_gaussians(keys[:, 1], (2, dim), torch.float32)
        support = u[:, 0].abs().argsort(dim=-1, descending=True)[:, : self.alpha]
        signs = torch.where(u[:, 1].gather(1, support) >= 0, 1, -1).to(torch.int8)
        return torch.zeros(keys.shape[0], dim, dtype=torch.int8).scatter(1, support, signs)

    def rotations(self, x_hat: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """``P = R Q`` with ``P x_hat = c``; ``x_hat`` unit ``(n, D)`` -> ``(n, D, D)`` float32."""
        dim = x_hat.shape[1]
        # float32 draws (fast), float64 QR: P must be orthogonal to float64 precision
        gauss = _seeded_gaussians(keys[:, 0], (dim, dim), torch.float32).double()
        q, r = torch.linalg.qr(gauss)
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # Haar measure
        c = self.codewords(keys, dim).double() / self.alpha**0.5
        x = x_hat.double()
        u = torch.bmm(q, x.unsqueeze(-1)).squeeze(-1)  # Q x_hat, unit
        cos = (u * c).sum(-1, keepdim=True).clamp(-1.0, 1.0)
        v = c - cos * u
        sin = v.norm(dim=-1, keepdim=True)
        v = torch.where(sin > 1e-12, v / sin.clamp_min(1e-12), torch.zeros_like(v))
        # R = I + (cos - 1)(u u^T + v v^T) + sin (v u^T - u v^T); P = R Q, with u^T Q = x_hat^T:
        # P = Q + u a^T + v b^T, a = (cos - 1) x_hat - sin Q^T v, b = sin x_hat + (cos - 1) Q^T v,
        # one rank-2 update of Q (never a D x D temporary beyond P itself)
        vq = torch.bmm(v.unsqueeze(1), q).squeeze(1)  # v^T Q
        cm1 = cos - 1
        a = cm1 * x - sin * vq
        b = sin * x + cm1 * vq
        p = torch.baddbmm(q, torch.stack((u, v), dim=-1), torch.stack((a, b), dim=1))
        return p.float()

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        """Nearest codeword of each row of ``y``: sign of its ``alpha`` largest magnitudes."""
        support = y.abs().topk(self.alpha, dim=-1).indices
        signs = torch.where(y.gather(1, support) >= 0, 1, -1).to(torch.int8)
        return torch.zeros(y.shape, dtype=torch.int8).scatter(1, support, signs)

    @staticmethod
    def _unit(templates, weights) -> torch.Tensor:
        x = weighted_template(templates, weights)
        x = x.reshape(x.shape[0], -1)
        return x / x.norm(dim=-1, keepdim=True)

    def enroll(self, templates, weights, keys, *, generator=None):
        x = self._unit(templates, weights)
        keys = _check_seeds(keys, x.shape[0], 2)
        p = self.rotations(x, keys)
        return {"rotation": p, "digest": _codeword_digest(self.codewords(keys, x.shape[1]))}

    def match(self, gallery, probe_templates, probe_weights, keys):
        q = self._unit(probe_templates, probe_weights).float()
        p = expect_tensor(gallery["rotation"], "gallery rotation", floating=True)
        dim = q.shape[1]
        if tuple(p.shape) != (q.shape[0], dim, dim):
            raise ShapeError(
                f"gallery rotation: expected shape {(q.shape[0], dim, dim)}, got {tuple(p.shape)}"
            )
        y = torch.bmm(p.float(), q.unsqueeze(-1)).squeeze(-1)
        ok = (_codeword_digest(self.decode(y)) == gallery["digest"]).all(-1)
        s = ok.float()
        return MatchResult(s, 1.0 - s)

    def link(self, a, b):
        pa, pb = a["rotation"].float(), b["rotation"].float()
        return (pa * pb).sum(dim=(-1, -2)) / pa.shape[-1]

    def observe(self, gallery):
        """``P^T c0`` for a fixed public codeword guess c0: the template that decoding under c0
        would give (it equals x_hat only if c0 is the user's secret codeword)."""
        p = gallery["rotation"].float()
        c0 = torch.zeros(p.shape[-1])
        c0[: self.alpha] = self.alpha**-0.5
        return torch.einsum("nij,i->nj", p, c0)


PROTECTORS: dict[str, type[TemplateProtector]] = {
    "slerpface": SlerpFaceProtector,
    "unprotected": Unprotected,
    "biohashing": BioHashing,
    "ironmask": IronMask,
}


def get_protector(name: str, **options: Any) -> TemplateProtector:
    """``get_protector("slerpface", alpha=0.9)``; names: slerpface, unprotected, biohashing,
    ironmask."""
    if name not in PROTECTORS:
        raise UnknownNameError(f"unknown protector {name!r}; choose from {sorted(PROTECTORS)}")
    return PROTECTORS[name](**options)
