"""``facelab slerpface train | extract | enroll | match | eval | sweep | attack``.

Files that cross the trust boundary:

* ``extract`` writes *raw* templates (sensitive: keep them on the enrolling client);
* ``enroll`` reads raw templates, draws one key per template into a key store file (its own
  safetensors file, mode 0600) and writes a ``ProtectedTemplate`` file (no keys inside);
* ``match`` reads protected templates, the key store and raw probe templates: 1:1 against the
  same row, or 1:N search with ``--top-k``.

``enroll --storage keyed`` writes SlerpFace's keyed format (ours): unit groups in a key-derived
order, the attention weights in the key store next to each key; its scores equal the paper
format's. ``eval`` and ``sweep`` report the linkability of both formats under every attack.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

Method = Literal["slerpface", "unprotected", "biohashing", "ironmask"]
#: evaluation names: "slerpface-keyed" is SlerpFace with the keyed storage format
EvalMethod = Literal["slerpface", "slerpface-keyed", "unprotected", "biohashing", "ironmask"]
Attack = Literal["cosine", "aligned", "norms", "sorted_norms", "zeros", "zero_histogram"]
ALL_ATTACKS: tuple[Attack, ...] = (
    "cosine",
    "aligned",
    "norms",
    "sorted_norms",
    "zeros",
    "zero_histogram",
)


def _toyfaces(
    num_identities: int,
    images_per_identity: int,
    size: int,
    seed: int,
    offset: int,
    difficulty: str,
):
    from facelab.core.data.toyfaces import ToyFaces

    return ToyFaces(
        num_identities,
        images_per_identity,
        size=size,
        seed=seed,
        identity_offset=offset,
        difficulty=difficulty,
    )


def _load_extractor(model: str):
    from facelab.slerpface.model import SlerpFaceExtractor

    return SlerpFaceExtractor.from_pretrained(model).eval()


def _save_raw(path: Path, templates, weights, labels) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {"templates": templates.contiguous(), "weights": weights.contiguous(), "labels": labels},
        str(path),
        metadata={"format": "facelab.slerpface.raw-templates", "version": "1"},
    )


def _load_raw(path: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    from facelab.core.errors import FormatError
    from facelab.slerpface.keys import read_safetensors

    tensors, meta = read_safetensors(path)
    if meta.get("format") != "facelab.slerpface.raw-templates":
        raise FormatError(f"{path}: expected raw templates written by `slerpface extract`")
    for k in ("templates", "weights"):
        if k not in tensors:
            raise FormatError(f"{path}: missing tensor {k!r}")
    return tensors["templates"], tensors["weights"], tensors.get("labels")


def train(
    preset: Literal["toy", "paper"] = "toy",
    output_dir: str | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    num_identities: int | None = None,
    images_per_identity: int | None = None,
    data_root: str | None = None,
    backbone_weights: str | None = None,
    freeze_backbone: bool = False,
    resume: bool = True,
    progress: bool = True,
) -> int:
    """Train the extractor (group_cov + attention, our recipe) from a preset."""
    import logging

    from facelab.slerpface.train import presets

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from facelab.slerpface.train import train as run

    cfg = presets()[preset]
    t = {"progress": progress}
    if output_dir is not None:
        t["output_dir"] = output_dir
    if max_steps is not None:
        t["max_steps"] = max_steps
    if batch_size is not None:
        t["batch_size"] = batch_size
    d = {}
    if num_identities is not None:
        d["num_identities"] = num_identities
    if images_per_identity is not None:
        d["images_per_identity"] = images_per_identity
    if data_root is not None:
        d["root"] = data_root
    cfg = dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, **t),
        data=dataclasses.replace(cfg.data, **d),
        backbone_weights=backbone_weights or cfg.backbone_weights,
        freeze_backbone=freeze_backbone,
    )
    _, result = run(cfg, resume="latest" if resume else None)
    print(f"trained {result.step} steps; losses {result.losses}")
    print(f"extractor saved to {Path(cfg.train.output_dir) / 'extractor'}")
    return 0


def extract(
    model: str,
    out: str,
    num_identities: int = 100,
    images_per_identity: int = 4,
    identity_offset: int = 100_000,
    difficulty: str = "default",
    seed: int = 0,
    batch_size: int = 64,
) -> int:
    """Extract raw group templates + attention weights of toyfaces images (sensitive output)."""
    ex = _load_extractor(model)
    ds = _toyfaces(
        num_identities, images_per_identity, ex.input_size[0], seed, identity_offset, difficulty
    )
    images = ds.materialize(torch.float32)
    templates, weights = ex.extract(images, batch_size)
    _save_raw(Path(out), templates, weights, ds.labels)
    print(f"wrote {templates.shape[0]} raw templates {tuple(templates.shape[1:])} to {out}")
    return 0


def _protector(
    method: Method,
    alpha: float,
    drop_rate: float,
    sampling: str,
    bits: int,
    storage: str = "paper",
):
    from facelab.core.errors import UnknownNameError
    from facelab.slerpface.baselines import get_protector

    if storage != "paper" and method != "slerpface":
        raise UnknownNameError(f"--storage {storage}: only slerpface has storage formats")
    opts = {
        "slerpface": {
            "alpha": alpha,
            "drop_rate": drop_rate,
            "sampling": sampling,
            "storage": storage,
        },
        "biohashing": {"bits": bits},
        "ironmask": {},
        "unprotected": {},
    }[method]
    return get_protector(method, **opts)


def enroll(
    templates: str,
    keystore: str,
    out: str,
    method: Method = "slerpface",
    alpha: float = 0.9,
    drop_rate: float = 0.5,
    sampling: Literal["replacement", "exact"] = "replacement",
    bits: int = 256,
    rows: str | None = None,
    seed: int | None = None,
    storage: Literal["paper", "keyed"] = "paper",
) -> int:
    """Protect raw templates: keys into KEYSTORE, protected templates (no keys) into OUT.

    ``--rows 0:200:2`` enrolls a slice (e.g. the even images as gallery); ``--seed`` makes the
    keys reproducible and NOT secret (experiments only). ``--storage keyed`` (slerpface):
    unit groups in a key-derived order in OUT, the attention weights in KEYSTORE.
    """
    from facelab.slerpface.keys import KeyStore

    t, w, labels = _load_raw(templates)
    if rows:
        sl = slice(*(int(p) if p else None for p in rows.split(":")))
        t, w = t[sl], w[sl]
        labels = labels[sl] if labels is not None else None
    prot = _protector(method, alpha, drop_rate, sampling, bits, storage)
    store = KeyStore.open(keystore, kind=method)
    subjects = [str(int(x)) for x in labels] if labels is not None else None
    pt = prot.enroll_with_store(t, w, store, subjects=subjects, seed=seed)
    store.save()
    pt.save(out)
    fmt = f" ({storage} storage)" if method == "slerpface" else ""
    print(
        f"enrolled {len(pt)} templates with {method}{fmt}; keys in {keystore}, templates in {out}"
    )
    return 0


def match(
    protected: str,
    keystore: str,
    probes: str,
    rows: str | None = None,
    top_k: int | None = None,
    out: str | None = None,
) -> int:
    """Match raw probe templates against protected ones: row i vs row i, or 1:N (--top-k)."""
    from facelab.core.errors import UnknownNameError
    from facelab.slerpface.baselines import PROTECTORS
    from facelab.slerpface.keys import KeyStore
    from facelab.slerpface.match import search
    from facelab.slerpface.template import ProtectedTemplate

    pt = ProtectedTemplate.load(protected)
    store = KeyStore.load(keystore)
    q, wq, _ = _load_raw(probes)
    if rows:
        sl = slice(*(int(p) if p else None for p in rows.split(":")))
        q, wq = q[sl], wq[sl]
    if pt.method not in PROTECTORS:
        raise UnknownNameError(f"{protected}: unknown method {pt.method!r}")
    prot = PROTECTORS[pt.method](**pt.params)
    result: dict = {"method": pt.method, "storage": pt.storage}
    if top_k:
        if pt.method != "slerpface":
            raise UnknownNameError("1:N search (--top-k) is implemented for slerpface templates")
        keys = prot.stored_record(store, list(pt.key_ids))
        res = search(
            pt.tensors["templates"],
            keys,
            q,
            wq,
            pt.params["alpha"],
            pt.params["group_size"],
            top_k=top_k,
            storage=pt.storage,
        )
        result["indices"] = res.indices.tolist()
        result["scores"] = res.scores.tolist()
        if pt.subjects is not None:
            result["subjects"] = [[pt.subjects[i] for i in row] for row in res.indices.tolist()]
        print(f"searched {q.shape[0]} probes over {len(pt)} protected templates")
    else:
        r = prot.verify(pt, store, q, wq)
        result["scores"] = r.scores.tolist()
        result["distances"] = r.distances.tolist()
        print(f"matched {q.shape[0]} pairs: mean score {float(r.scores.mean()):.4f}")
    if out:
        Path(out).write_text(json.dumps(result))
    return 0


def _eval_sets(
    model: str,
    num_identities: int,
    images_per_identity: int,
    difficulty: str,
    seed: int,
    attack_identities: int,
):
    ex = _load_extractor(model)
    size = ex.input_size[0]
    ds = _toyfaces(num_identities, images_per_identity, size, seed, 100_000, difficulty)
    images = ds.materialize(torch.float32)
    t, w = ex.extract(images)
    atk = _toyfaces(attack_identities, images_per_identity, size, seed, 200_000, difficulty)
    atk_images = atk.materialize(torch.float32)
    ta, wa = ex.extract(atk_images)
    return ex, (t, w, ds.labels, images), (ta, wa, atk_images)


def eval_command(
    model: str,
    out_dir: str = "results/slerpface",
    methods: tuple[EvalMethod, ...] = (
        "slerpface",
        "slerpface-keyed",
        "unprotected",
        "biohashing",
        "ironmask",
    ),
    num_identities: int = 100,
    images_per_identity: int = 4,
    num_pairs: int = 600,
    difficulty: str = "default",
    attack: bool = True,
    attack_identities: int = 200,
    attack_steps: int = 300,
    alpha: float = 0.9,
    drop_rate: float = 0.5,
    bits: int = 256,
    seed: int = 0,
    attacks: tuple[Attack, ...] = ALL_ATTACKS,
    sweep_alphas: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0),
    sweep: bool = True,
) -> int:
    """Accuracy, unlinkability (every linkability attack), irreversibility and renewability of
    every method on toyfaces, then both SlerpFace storage formats over ``--sweep-alphas``.

    ``--bits`` (BioHashing code length) must not exceed the template length (groups x 16)."""
    from facelab.slerpface.evaluate import EvalConfig, evaluate

    ex, (t, w, labels, images), (ta, wa, atk_images) = _eval_sets(
        model,
        num_identities,
        images_per_identity,
        difficulty,
        seed,
        attack_identities if attack else 1,
    )
    cfg = EvalConfig(
        methods=tuple(methods),
        alpha=alpha,
        drop_rate=drop_rate,
        biohash_bits=bits,
        num_pairs=num_pairs,
        attack=attack,
        attack_steps=attack_steps,
        seed=seed,
        out_dir=out_dir,
        attacks=tuple(attacks),
        sweep_alphas=tuple(sweep_alphas) if sweep else (),
    )
    report = evaluate(
        t,
        w,
        labels,
        cfg,
        attack_data=lambda: ((ta, wa, atk_images), images),
        recognizer=ex.backbone,
    )
    print(report.markdown())
    print(f"report written to {out_dir}")
    return 0


def sweep(
    model: str,
    alphas: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0),
    num_identities: int = 200,
    images_per_identity: int = 4,
    num_pairs: int = 1200,
    difficulty: str = "default",
    drop_rate: float = 0.5,
    seed: int = 0,
    out: str | None = None,
    attacks: tuple[Attack, ...] = ALL_ATTACKS,
) -> int:
    """SlerpFace's privacy / utility trade-off over alpha on toyfaces: accuracy, TAR@FAR, EER and
    D_sys of the stored templates' direct linkage, plus D_sys of their group norms alone; then
    both storage formats (paper, keyed) under every linkability attack, with permutation nulls."""
    from facelab.slerpface.evaluate import (
        alpha_sweep,
        linkability_markdown,
        linkability_sweep,
        sweep_markdown,
    )

    _, (t, w, labels, _), _ = _eval_sets(
        model, num_identities, images_per_identity, difficulty, seed, 1
    )
    rows = alpha_sweep(t, w, labels, alphas, drop_rate=drop_rate, num_pairs=num_pairs, seed=seed)
    print(sweep_markdown(rows))
    links = linkability_sweep(
        t,
        w,
        labels,
        alphas,
        attacks=attacks,
        drop_rate=drop_rate,
        num_pairs=num_pairs,
        seed=seed,
    )
    print("D_sys (null mean, null 95th percentile) of each attack, both storage formats:\n")
    print(linkability_markdown(links))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"rows": rows, "linkability": links}, indent=2))
    return 0


def attack(
    model: str,
    method: EvalMethod = "slerpface",
    num_identities: int = 100,
    images_per_identity: int = 4,
    attack_identities: int = 200,
    steps: int = 300,
    difficulty: str = "default",
    bits: int = 256,
    seed: int = 0,
    out: str | None = None,
) -> int:
    """Train the inversion attack on one method's stored templates and report what leaks."""
    from facelab.slerpface.evaluate import EvalConfig, inversion_attack

    ex, (t, w, labels, images), (ta, wa, atk_images) = _eval_sets(
        model, num_identities, images_per_identity, difficulty, seed, attack_identities
    )
    cfg = EvalConfig(methods=(method,), attack_steps=steps, biohash_bits=bits, seed=seed)
    res = inversion_attack(
        cfg.protector(method), (ta, wa, atk_images), (t, w, images, labels), ex.backbone, cfg
    )
    print(json.dumps({"method": method, **res}))
    if out:
        Path(out).write_text(json.dumps({"method": method, **res}))
    return 0


COMMANDS = {
    "train": train,
    "extract": extract,
    "enroll": enroll,
    "match": match,
    "eval": eval_command,
    "sweep": sweep,
    "attack": attack,
}


def main(argv: Sequence[str] | None = None) -> int:
    """SlerpFace template protection: train, extract, enroll, match, eval, sweep, attack."""
    from facelab.core.cli import subcommands

    args = list(sys.argv[1:] if argv is None else argv)
    rc = subcommands("facelab slerpface", COMMANDS, args, description=__doc__ or "")
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
