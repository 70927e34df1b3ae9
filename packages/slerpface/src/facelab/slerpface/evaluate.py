"""The protection report: accuracy, unlinkability, irreversibility and renewability of SlerpFace
and its baselines on the same templates (ISO/IEC 24745 / 30136 criteria).

* accuracy: verification pairs; the gallery image of a pair is protected with a fresh key, the
  probe is raw (as the reference's ``gen_sim``); distances ``arccos(score) / pi`` (bit error
  rate for BioHashing, 0/1 for IronMask) go through insightface's 10-fold protocol (core
  ``verify``, thresholds 0:4:0.01 as the reference applies them to these distances), plus
  threshold-free TAR@FAR and EER;
* unlinkability: for every identity two images protected under two independent keys (mated)
  versus images of two identities (non-mated), compared by the method's linkage function with
  no key (``TemplateProtector.link``); ``D_sys`` and ``D(s)`` (Gomez-Barrero et al. 2018), a plot
  of both score distributions, and ``d_sys_null``: the estimator's value on two halves of the
  non-mated scores (its small-sample bias: what "0" looks like at this sample size); for
  methods that store group templates also ``D_sys`` of the group norms alone
  (``link_group_norms``: SlerpFace stores the attention weights as the group norms);
* irreversibility: core's ``InversionAttack`` trained on what the method stores (on the
  attacker's own identities, disjoint from the evaluated ones) and evaluated on held-out
  identities: SSIM/PSNR, identity leakage (cosine of recognizer embeddings of reconstruction and
  original) and attack success rate (reconstruction accepted against other images of its
  identity at FAR 1e-2 of the recognizer). ``unprotected`` is the raw-template attack;
* renewability: each probe's gallery template is re-keyed in a ``KeyStore`` and re-enrolled;
  genuine probes are matched against the revoked template with the new key (should fail like
  impostors) and against the new template (should pass); the revoked key id must be refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facelab.core.errors import KeyMismatchError, RangeError
from facelab.slerpface.baselines import TemplateProtector, get_protector, link_group_norms
from facelab.slerpface.keys import KeyStore
from facelab.slerpface.linkability import ATTACKS, get_attacks, linkability, linkage_scores
from facelab.slerpface.unlinkability import Unlinkability, plot_unlinkability, unlinkability

#: "slerpface-keyed": SlerpFace with the keyed storage format (ours), same key material as
#: "slerpface" in the report (identical scores)
METHODS: tuple[str, ...] = ("slerpface", "slerpface-keyed", "unprotected", "biohashing", "ironmask")
#: seed index of each method (the keyed format shares SlerpFace's keys and dropout draws)
_SEED_INDEX = {
    "slerpface": 0,
    "slerpface-keyed": 0,
    "unprotected": 1,
    "biohashing": 2,
    "ironmask": 3,
}
#: IronMask stores an (m*d)^2 rotation per template: enroll/match it in chunks of this many
CHUNK = {"ironmask": 32}
_DEFAULT_CHUNK = 4096


@dataclass
class EvalConfig:
    """What ``evaluate`` measures (toyfaces sizes default to a few minutes on a CPU)."""

    methods: tuple[str, ...] = METHODS
    alpha: float = 0.9
    drop_rate: float = 0.5
    sampling: str = "replacement"
    biohash_bits: int = 256
    ironmask_alpha: int = 16
    num_pairs: int = 600
    far: float = 1e-2
    omega: float = 1.0
    attack: bool = True
    attack_steps: int = 300
    attack_batch_size: int = 32
    attack_width: int = 16
    attack_depth: int = 2
    seed: int = 0
    out_dir: str | None = None
    #: linkability attacks on group templates (``facelab.slerpface.linkability.ATTACKS``)
    attacks: tuple[str, ...] = tuple(ATTACKS)
    #: alphas of the linkability sweep (both SlerpFace formats); empty: no sweep
    sweep_alphas: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0)
    #: relabelings behind each permutation null of the linkability tables
    null_rounds: int = 50

    def protector(self, name: str) -> TemplateProtector:
        slerp = {"alpha": self.alpha, "drop_rate": self.drop_rate, "sampling": self.sampling}
        opts: dict[str, Any] = {
            "slerpface": slerp,
            "slerpface-keyed": {**slerp, "storage": "keyed"},
            "biohashing": {"bits": self.biohash_bits},
            "ironmask": {"alpha": self.ironmask_alpha},
        }.get(name, {})
        return get_protector("slerpface" if name == "slerpface-keyed" else name, **opts)


@dataclass
class MethodReport:
    method: str
    accuracy: float = math.nan
    accuracy_std: float = math.nan
    tar_at_far: float = math.nan
    eer: float = math.nan
    genuine_mean: float = math.nan
    impostor_mean: float = math.nan
    d_sys: float = math.nan
    d_sys_null: float = math.nan
    d_sys_norms: float = math.nan
    d_sys_norms_null: float = math.nan
    attack: dict[str, float] = field(default_factory=dict)
    renew_old_accept: float = math.nan
    renew_new_accept: float = math.nan
    renew_revoked_refused: bool | None = None
    #: group-template methods: ``{attack: Linkage.to_dict()}`` (``D_sys`` and permutation null)
    linkability: dict[str, dict[str, Any]] = field(default_factory=dict)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _seed(cfg: EvalConfig, k: int) -> int:
    return cfg.seed * 1000 + k


def _seed_index(name: str, position: int) -> int:
    """A method's seed offset: the keyed format shares SlerpFace's keys and dropout draws (so
    its scores equal SlerpFace's); other names keep their position."""
    return _SEED_INDEX.get(name, position)


def enroll_and_match(
    prot: TemplateProtector,
    t_gallery: torch.Tensor,
    w_gallery: torch.Tensor,
    t_probe: torch.Tensor,
    w_probe: torch.Tensor,
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and distances of row-aligned pairs, each gallery row under its own new key
    (chunked so IronMask's rotations never all sit in memory)."""
    n, m, d = t_gallery.shape
    keys = prot.new_keys(n, m, d, seed=seed)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    scores, dists = [], []
    for sl in _chunks(n, CHUNK.get(prot.method, _DEFAULT_CHUNK)):
        g = prot.enroll(t_gallery[sl], w_gallery[sl], keys[sl], generator=gen)
        r = prot.match(g, t_probe[sl], w_probe[sl], prot.record(keys[sl], w_gallery[sl]))
        scores.append(r.scores.double())
        dists.append(r.distances.double())
    return torch.cat(scores), torch.cat(dists)


def verify_distances(distances: Any, issame: Any, nfolds: int = 10) -> Any:
    """Core's insightface 10-fold ``verify`` on precomputed distances (as one-dimensional
    "embeddings" ``sqrt(d)`` vs 0, whose squared L2 distance is ``d``)."""
    from facelab.core.eval import verify

    d = np.asarray(distances, dtype=np.float64)
    if (d < 0).any() or not np.isfinite(d).all():
        raise RangeError("distances: expected finite non-negative distances")
    return verify(
        np.sqrt(d)[:, None], np.zeros((d.size, 1)), issame, nfolds, far_target=None, normalize=False
    )


def accuracy(
    prot: TemplateProtector,
    templates: torch.Tensor,
    weights: torch.Tensor,
    pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    far: float,
    seed: int | None = None,
) -> dict[str, Any]:
    from facelab.core.eval import eer, tar_at_far

    i1, i2, same = pairs
    scores, dists = enroll_and_match(
        prot, templates[i1], weights[i1], templates[i2], weights[i2], seed
    )
    v = verify_distances(dists.numpy(), same.numpy())
    s, y = scores.numpy(), same.numpy().astype(int)
    return {
        "accuracy": v.accuracy,
        "accuracy_std": v.accuracy_std,
        "tar_at_far": float(tar_at_far(s, y, [far])[far]),
        "eer": float(eer(s, y)),
        "genuine_mean": float(s[y == 1].mean()),
        "impostor_mean": float(s[y == 0].mean()),
        "scores": scores,
        "same": same,
    }


def link_scores(
    prot: TemplateProtector,
    templates: torch.Tensor,
    weights: torch.Tensor,
    labels: torch.Tensor,
    seed: int | None = None,
    nonmated_shifts: Sequence[int] = (1, 2, 3),
    link: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mated and non-mated linkage scores: the first two images of every identity, each
    protected under its own key (A and B); mated = A_i vs B_i, non-mated = A_i vs B_(i+s).
    ``link`` compares two stored templates (default: the method's ``prot.link``)."""
    links = {"link": link or prot.link}
    step = CHUNK.get(prot.method, _DEFAULT_CHUNK)
    return linkage_scores(prot, templates, weights, labels, links, seed, nonmated_shifts, step)[
        "link"
    ]


def d_sys_with_null(
    mated: torch.Tensor, nonmated: torch.Tensor, omega: float = 1.0
) -> tuple[Unlinkability, float]:
    """``unlinkability(mated, nonmated)`` and the estimator's null value: ``D_sys`` of two
    halves of the non-mated scores (what "unlinkable" measures as at this sample size)."""
    half = nonmated.shape[0] // 2
    null = unlinkability(nonmated[:half], nonmated[half:], omega=omega)
    return unlinkability(mated, nonmated, omega=omega), null.d_sys


#: the alphas ``alpha_sweep`` and ``facelab slerpface sweep`` try by default
SWEEP_ALPHAS: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0)


def alpha_sweep(
    templates: torch.Tensor,
    weights: torch.Tensor,
    labels: torch.Tensor,
    alphas: Sequence[float] = SWEEP_ALPHAS,
    *,
    drop_rate: float = 0.5,
    sampling: str = "replacement",
    num_pairs: int = 600,
    far: float = 1e-2,
    omega: float = 1.0,
    seed: int = 0,
) -> list[dict[str, float]]:
    """SlerpFace's privacy / utility trade-off: for each ``alpha``, verification accuracy (10-fold),
    TAR@FAR, EER and ``D_sys`` (with its null value) of the direct linkage of stored templates.

    The last row (``alpha = nan``) is the group-norm linkage, which no ``alpha`` changes."""
    from facelab.core.data.toyfaces import make_pairs

    if not alphas:
        raise RangeError("alphas: expected at least one value")
    pairs = make_pairs(labels, num_pairs, seed=seed)
    rows: list[dict[str, float]] = []
    prot = None
    for j, alpha in enumerate(alphas):
        prot = get_protector("slerpface", alpha=alpha, drop_rate=drop_rate, sampling=sampling)
        acc = accuracy(prot, templates, weights, pairs, far, seed * 1000 + j)
        mated, nonmated = link_scores(prot, templates, weights, labels, seed * 1000 + 500 + j)
        u, null = d_sys_with_null(mated, nonmated, omega)
        row = {f: float(acc[f]) for f in ("accuracy", "accuracy_std", "tar_at_far", "eer")}
        rows.append({"alpha": float(alpha), **row, "d_sys": u.d_sys, "d_sys_null": null})
    mated, nonmated = link_scores(prot, templates, weights, labels, seed, link=link_group_norms)
    u, null = d_sys_with_null(mated, nonmated, omega)
    nan = math.nan
    rows.append(
        {"alpha": nan, "accuracy": nan, "accuracy_std": nan, "tar_at_far": nan, "eer": nan}
        | {"d_sys": u.d_sys, "d_sys_null": null}
    )
    return rows


def sweep_markdown(rows: Sequence[dict[str, float]], far: float = 1e-2) -> str:
    """``alpha_sweep``'s rows as a markdown table."""
    out = [
        f"| alpha | acc (10-fold) | TAR@FAR={far:g} | EER | D_sys (null) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        d = f"{r['d_sys']:.3f} ({r['d_sys_null']:.3f})"
        if math.isnan(r["alpha"]):
            out.append(f"| group norms only (any alpha) | | | | {d} |")
        else:
            out.append(
                f"| {r['alpha']:g} | {r['accuracy']:.4f} +- {r['accuracy_std']:.4f} "
                f"| {r['tar_at_far']:.4f} | {r['eer']:.4f} | {d} |"
            )
    return "\n".join(out) + "\n"


STORAGES: tuple[str, ...] = ("paper", "keyed")


def linkability_sweep(
    templates: torch.Tensor,
    weights: torch.Tensor,
    labels: torch.Tensor,
    alphas: Sequence[float] = SWEEP_ALPHAS,
    *,
    storages: Sequence[str] = STORAGES,
    attacks: Sequence[str] | None = None,
    drop_rate: float = 0.5,
    sampling: str = "replacement",
    num_pairs: int = 600,
    far: float = 1e-2,
    omega: float = 1.0,
    rounds: int = 50,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Accuracy and every linkability attack of both SlerpFace storage formats over ``alpha``:
    one row per (alpha, storage) with ``accuracy``, ``accuracy_std``, ``tar_at_far``, ``eer``
    and ``linkability = {attack: Linkage.to_dict()}``. Both formats of one alpha get the same
    key material and dropout draws, so their accuracy rows agree (the scores are identical)."""
    from facelab.core.data.toyfaces import make_pairs

    if not alphas:
        raise RangeError("alphas: expected at least one value")
    names = list(get_attacks(attacks))
    pairs = make_pairs(labels, num_pairs, seed=seed)
    rows: list[dict[str, Any]] = []
    for j, alpha in enumerate(alphas):
        for storage in storages:
            prot = get_protector(
                "slerpface", alpha=alpha, drop_rate=drop_rate, sampling=sampling, storage=storage
            )
            acc = accuracy(prot, templates, weights, pairs, far, seed * 1000 + j)
            links = linkability(
                prot,
                templates,
                weights,
                labels,
                names,
                seed=seed * 1000 + 500 + j,
                omega=omega,
                rounds=rounds,
            )
            row: dict[str, Any] = {"alpha": float(alpha), "storage": storage}
            row |= {f: float(acc[f]) for f in ("accuracy", "accuracy_std", "tar_at_far", "eer")}
            row["linkability"] = {k: v.to_dict() for k, v in links.items()}
            rows.append(row)
    return rows


def _cell(link: dict[str, Any] | None) -> str:
    if not link:
        return "-"
    return f"{link['d_sys']:.3f} ({link['null_mean']:.3f}, {link['null_q95']:.3f})"


def linkability_markdown(rows: Sequence[dict[str, Any]], far: float = 1e-2) -> str:
    """``linkability_sweep``'s rows (or any rows with ``alpha``, ``storage`` and
    ``linkability``) as a markdown table: ``D_sys (null mean, null 95th percentile)``."""
    names = list(dict.fromkeys(k for r in rows for k in r.get("linkability", {})))
    head = "| alpha | storage | acc (10-fold) | EER | " + " | ".join(names) + " |"
    out = [head, "|" + "---|" * (4 + len(names))]
    for r in rows:
        acc = r.get("accuracy", math.nan)
        acc_s = "" if math.isnan(acc) else f"{acc:.4f} +- {r['accuracy_std']:.4f}"
        eer = r.get("eer", math.nan)
        cells = " | ".join(_cell(r["linkability"].get(n)) for n in names)
        out.append(
            f"| {r['alpha']:g} | {r['storage']} | {acc_s} | "
            f"{'' if math.isnan(eer) else f'{eer:.4f}'} | {cells} |"
        )
    return "\n".join(out) + "\n"


def renewability(
    prot: TemplateProtector,
    templates: torch.Tensor,
    weights: torch.Tensor,
    pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    threshold: float,
) -> dict[str, Any]:
    """Re-key every genuine pair's gallery template in a KeyStore and match again."""
    i1, i2, same = pairs
    g_idx, p_idx = i1[same], i2[same]
    if g_idx.numel() == 0:
        raise RangeError("renewability: no genuine pairs")
    g_idx, p_idx = g_idx[:256], p_idx[:256]
    step = CHUNK.get(prot.method, _DEFAULT_CHUNK)
    old_acc, new_acc = [], []
    refused = True
    store = KeyStore(kind=prot.method)
    for sl in _chunks(g_idx.numel(), step):
        tg, wg = templates[g_idx[sl]], weights[g_idx[sl]]
        tp, wp = templates[p_idx[sl]], weights[p_idx[sl]]
        old = prot.enroll_with_store(tg, wg, store)
        new_ids = [
            store.rekey(
                k,
                prot.new_keys(1, tg.shape[1], tg.shape[2])[0],
                weights=wg[j] if prot.stores_weights else None,
            )
            for j, k in enumerate(old.key_ids)
        ]
        new_keys = prot.stored_record(store, new_ids)
        new = prot.enroll(tg, wg, new_keys)
        old_acc.append(prot.match(old.tensors, tp, wp, new_keys).scores >= threshold)
        new_acc.append(prot.match(new, tp, wp, new_keys).scores >= threshold)
        try:
            prot.verify(old, store, tp, wp)
            refused = False
        except KeyMismatchError:
            pass
    return {
        "renew_old_accept": float(torch.cat(old_acc).double().mean()),
        "renew_new_accept": float(torch.cat(new_acc).double().mean()),
        "renew_revoked_refused": refused,
    }


def observations(
    prot: TemplateProtector, templates: torch.Tensor, weights: torch.Tensor, seed: int | None
) -> torch.Tensor:
    """What an attacker holding the stored templates sees, one vector per image."""
    n, m, d = templates.shape
    keys = prot.new_keys(n, m, d, seed=seed)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    out = []
    for sl in _chunks(n, CHUNK.get(prot.method, _DEFAULT_CHUNK)):
        out.append(prot.observe(prot.enroll(templates[sl], weights[sl], keys[sl], generator=gen)))
    return torch.cat(out).float()


def inversion_attack(
    prot: TemplateProtector,
    train_set: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    test_set: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    recognizer: torch.nn.Module,
    cfg: EvalConfig,
) -> dict[str, float]:
    """Train core's InversionAttack on (observation, image) of the attacker's identities and
    evaluate on the held-out ones. ``train_set = (templates, weights, images)``,
    ``test_set = (templates, weights, images, labels)``."""
    from facelab.core.privacy import InversionAttack

    t_tr, w_tr, img_tr = train_set
    t_te, w_te, img_te, lab_te = test_set
    obs_tr = observations(prot, t_tr, w_tr, _seed(cfg, 11))
    obs_te = observations(prot, t_te, w_te, _seed(cfg, 12))
    attack = InversionAttack(
        width=cfg.attack_width, depth=cfg.attack_depth, seed=cfg.seed, device="cpu"
    )
    attack.fit(obs_tr, img_tr, steps=cfg.attack_steps, batch_size=cfg.attack_batch_size)
    res = attack.evaluate(obs_te, img_te, recognizer=recognizer, far=cfg.far, labels=lab_te)
    return {
        "ssim": res.ssim,
        "psnr": res.psnr,
        "identity_leakage": float(res.identity_leakage)
        if res.identity_leakage is not None
        else math.nan,
        "success_rate": float(res.success_rate) if res.success_rate is not None else math.nan,
    }


@dataclass
class Report:
    methods: list[MethodReport]
    settings: dict[str, Any]
    #: ``linkability_sweep`` rows (both SlerpFace formats over alpha)
    linkability_sweep: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "methods": [asdict(m) for m in self.methods],
            "linkability_sweep": self.linkability_sweep,
        }

    def linkability_markdown(self) -> str:
        """Every linkability attack per group-template method, then the sweep over alpha."""
        rows = [r for r in self.methods if r.linkability]
        out = ""
        if rows:
            names = list(dict.fromkeys(a for r in rows for a in r.linkability))
            out += "D_sys (null mean, null 95th percentile) of each linkability attack:\n\n"
            out += "| method | " + " | ".join(names) + " |\n"
            out += "|" + "---|" * (1 + len(names)) + "\n"
            for r in rows:
                cells = " | ".join(_cell(r.linkability.get(n)) for n in names)
                out += f"| {r.method} | {cells} |\n"
        if self.linkability_sweep:
            out += "\nBoth SlerpFace storage formats over alpha:\n\n"
            out += linkability_markdown(self.linkability_sweep)
        return out

    def markdown(self) -> str:
        head = (
            "| method | acc (10-fold) | TAR@FAR | EER | D_sys (null) | D_sys norms (null) | leakage "
            "| attack success | SSIM | renew: old / new accept |\n"
            "|---|---|---|---|---|---|---|---|---|---|"
        )
        rows = [head]
        for r in self.methods:
            a = r.attack
            rows.append(
                f"| {r.method} | {r.accuracy:.4f} +- {r.accuracy_std:.4f} | {r.tar_at_far:.4f} "
                f"| {r.eer:.4f} | {r.d_sys:.3f} ({r.d_sys_null:.3f}) "
                f"| {r.d_sys_norms:.3f} ({r.d_sys_norms_null:.3f}) "
                f"| {a.get('identity_leakage', math.nan):.3f} | {a.get('success_rate', math.nan):.3f} "
                f"| {a.get('ssim', math.nan):.3f} | {r.renew_old_accept:.3f} / {r.renew_new_accept:.3f} |"
            )
        link = self.linkability_markdown()
        return "\n".join(rows) + "\n" + ("\n" + link if link else "")

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(self.to_dict(), indent=2, default=float))
        (out / "report.md").write_text(self.markdown())
        return out


def evaluate(
    templates: torch.Tensor,
    weights: torch.Tensor,
    labels: torch.Tensor,
    cfg: EvalConfig,
    *,
    attack_data: Callable[[], tuple[Any, Any]] | None = None,
    recognizer: torch.nn.Module | None = None,
    log: Callable[[str], None] = print,
) -> Report:
    """The full report on extracted templates ``(N, m, d)``, weights ``(N, m)`` and labels.

    ``attack_data() -> ((t, w, images) of the attacker's identities, images of the evaluated
    set)``; with it and a ``recognizer`` the inversion attacks run.
    """
    from facelab.core.data.toyfaces import make_pairs

    pairs = make_pairs(labels, cfg.num_pairs, seed=cfg.seed)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else None
    attack_sets = attack_data() if (cfg.attack and attack_data and recognizer) else None
    reports = []
    for k, name in enumerate(cfg.methods):
        k = _seed_index(name, k)
        prot = cfg.protector(name)
        rep = MethodReport(name)
        acc = accuracy(prot, templates, weights, pairs, cfg.far, _seed(cfg, 20 + k))
        for f in ("accuracy", "accuracy_std", "tar_at_far", "eer", "genuine_mean", "impostor_mean"):
            setattr(rep, f, acc[f])
        log(f"[{name}] accuracy {rep.accuracy:.4f} +- {rep.accuracy_std:.4f}, EER {rep.eer:.4f}")

        mated, nonmated = link_scores(prot, templates, weights, labels, _seed(cfg, 40 + k))
        u, rep.d_sys_null = d_sys_with_null(mated, nonmated, cfg.omega)
        rep.d_sys = u.d_sys
        log(f"[{name}] D_sys {u.d_sys:.3f} (null {rep.d_sys_null:.3f})")
        if out_dir is not None:
            plot_unlinkability(u, out_dir / f"unlinkability_{name}.png", title=name)
        if prot.group_templates:
            mated, nonmated = link_scores(
                prot, templates, weights, labels, _seed(cfg, 40 + k), link=link_group_norms
            )
            un, rep.d_sys_norms_null = d_sys_with_null(mated, nonmated, cfg.omega)
            rep.d_sys_norms = un.d_sys
            log(
                f"[{name}] D_sys of the group norms {un.d_sys:.3f} (null {rep.d_sys_norms_null:.3f})"
            )
            if cfg.attacks:
                links = linkability(
                    prot,
                    templates,
                    weights,
                    labels,
                    cfg.attacks,
                    seed=_seed(cfg, 40 + k),
                    omega=cfg.omega,
                    rounds=cfg.null_rounds,
                )
                rep.linkability = {a: v.to_dict() for a, v in links.items()}
                log(
                    f"[{name}] linkability D_sys (null mean): "
                    + ", ".join(f"{a} {v.d_sys:.3f} ({v.null_mean:.3f})" for a, v in links.items())
                )

        # the system threshold: the score at FAR = cfg.far on this method's impostor pairs
        s, same = acc["scores"], acc["same"]
        imp = s[~same].sort(descending=True).values
        thr = float(imp[min(int(cfg.far * imp.numel()), imp.numel() - 1)]) if imp.numel() else 0.0
        if prot.binary_scores:
            thr = 0.5
        ren = renewability(prot, templates, weights, pairs, thr)
        rep.renew_old_accept = ren["renew_old_accept"]
        rep.renew_new_accept = ren["renew_new_accept"]
        rep.renew_revoked_refused = ren["renew_revoked_refused"]
        log(
            f"[{name}] renewability: old template + new key accepted {rep.renew_old_accept:.3f}, "
            f"new template {rep.renew_new_accept:.3f}"
        )

        if attack_sets is not None:
            (t_tr, w_tr, img_tr), img_te = attack_sets
            rep.attack = inversion_attack(
                prot, (t_tr, w_tr, img_tr), (templates, weights, img_te, labels), recognizer, cfg
            )
            log(f"[{name}] attack {rep.attack}")
        reports.append(rep)
    report = Report(reports, {k: v for k, v in asdict(cfg).items()})
    if cfg.sweep_alphas and cfg.attacks and any(n.startswith("slerpface") for n in cfg.methods):
        report.linkability_sweep = linkability_sweep(
            templates,
            weights,
            labels,
            cfg.sweep_alphas,
            attacks=cfg.attacks,
            drop_rate=cfg.drop_rate,
            sampling=cfg.sampling,
            num_pairs=cfg.num_pairs,
            far=cfg.far,
            omega=cfg.omega,
            rounds=cfg.null_rounds,
            seed=cfg.seed,
        )
        log("linkability over alpha:\n" + linkability_markdown(report.linkability_sweep))
    if out_dir is not None:
        report.save(out_dir)
    return report
