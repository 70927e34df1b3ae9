"""The ``quick`` suite: every method side by side on toyfaces, on a CPU, in minutes.

Stages (each prints a start and an end line with wall and CPU time):

1. render toyfaces: the training people, held-out verification pairs, the attacker's people
   and the victims (four disjoint identity ranges);
2. the ArcFace baseline (core recipe, ``arcface_presets()["toy"]`` resized) and its
   verification; the trained model is also the recognizer that measures identity leakage of
   the attacks run here;
3. templates: a SlerpFace extractor on the frozen baseline body (group_cov + attention trained),
   its templates protected with SlerpFace, BioHashing and IronMask, verified;
4. inversion attacks (core ``compare_attacks``, one decoder config and budget for all): from the
   RGB image (the baseline sends it: the reference), from the ArcFace embedding, and from what
   each template method stores; plus the attack that outputs the mean image (no information);
5. the other families (``facelab.benchmarks.families``: synthesis, tokenizer, iris, federated
   learning) at level ``quick``, each a report section with its own table and plot, in this
   process (while the method workers run when ``jobs >= 2``); a family whose packages are not
   installed is a section saying so;
6. the privacy-preserving recognition methods through their ``run_quick`` (imported lazily: a
   package that is not built yet is a "not built" row, one that raises a "failed" row);
7. report.md (its first section says in a few lines what each family's result means),
   results.json and the plots under ``results/quick/``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from facelab.benchmarks.methods import PPFR_METHODS, MethodRunner
from facelab.benchmarks.progress import Progress
from facelab.benchmarks.report import SuiteResult
from facelab.benchmarks.rows import (
    TABLE_COLUMNS,
    empty_row,
    failed_row,
    not_built_row,
)

#: toyfaces identity ranges (global identity = offset + k): training people start at 0, the
#: verification people at core's TOY_HELDOUT_OFFSET (10^6); the attacker's and the victims'
ATTACK_OFFSET = 3_000_000
VICTIM_OFFSET = 4_000_000
#: the success rate of an attack is read at this FAR of the recognizer on the victims' images
ATTACK_FAR = 1e-2
#: the wall-clock limit ``make demo`` must meet on a 2-core CPU (every family)
BUDGET_S = 1200.0

BASELINE = "arcface (RGB baseline)"
MEAN_IMAGE = "reference: mean-image attack"
EMBEDDING = "arcface embedding (unprotected)"
RGB_OBS = "rgb image"
GRID_LABELS = {
    EMBEDDING: "arcface emb.",
    "slerpface templates (unprotected)": "groups, raw",
}


@dataclass(frozen=True)
class QuickSettings:
    """Sizes of the quick suite (``FULL`` for ``make demo``, ``SMALL`` for the tests)."""

    image_size: int = 56
    identities: int = 200
    images_per_identity: int = 12
    eval_identities: int = 100
    eval_images_per_identity: int = 8
    eval_pairs: int = 1000
    backbone: str = "r18"
    base_width: int = 8
    embedding_size: int = 128
    batch_size: int = 64
    baseline_steps: int = 400
    warmup_steps: int = 20
    group_steps: int = 300
    attack_identities: int = 100
    attack_images_per_identity: int = 6
    victim_identities: int = 50
    victim_images_per_identity: int = 4
    attack_steps: int = 150
    attack_width: int = 8
    attack_depth: int = 2
    attack_batch_size: int = 32
    attack_lr: float = 2e-3
    grid_samples: int = 8


FULL = QuickSettings()
SMALL = QuickSettings(
    identities=40,
    images_per_identity=6,
    eval_identities=30,
    eval_images_per_identity=4,
    eval_pairs=200,
    batch_size=32,
    baseline_steps=30,
    warmup_steps=5,
    group_steps=20,
    attack_identities=20,
    attack_images_per_identity=4,
    victim_identities=20,
    victim_images_per_identity=3,
    attack_steps=8,
    attack_batch_size=16,
    grid_samples=4,
)


def baseline_config(s: QuickSettings, seed: int, workdir: Path, progress: bool) -> Any:
    """``arcface_presets()["toy"]`` resized to the settings (step-counted cosine schedule)."""
    from facelab.core.recipe import arcface_presets

    toy = arcface_presets()["toy"]
    data = dataclasses.replace(
        toy.data,
        image_size=s.image_size,
        toy_identities=s.identities,
        toy_images_per_identity=s.images_per_identity,
        toy_seed=seed,
        eval_identities=s.eval_identities,
        eval_images_per_identity=s.eval_images_per_identity,
        eval_pairs=s.eval_pairs,
    )
    train = dataclasses.replace(
        toy.train,
        output_dir=str(workdir / "arcface"),
        max_steps=s.baseline_steps,
        batch_size=s.batch_size,
        scheduler="cosine",
        milestones=(),
        warmup=s.warmup_steps,
        warmup_unit="step",
        seed=1337 + seed,
        log_every=max(1, s.baseline_steps // 10),
        progress=progress,
        checkpoint_every=None,
        save_on_exit=False,
    )
    return dataclasses.replace(
        toy,
        data=data,
        backbone=s.backbone,
        base_width=s.base_width,
        embedding_size=s.embedding_size,
        train=train,
    )


def group_train_config(s: QuickSettings, seed: int, workdir: Path, progress: bool) -> Any:
    """SlerpFace's toy schedule (SGD 0.1, cosine, 20 warm-up steps) for the group branch."""
    from facelab.core.train import TrainConfig

    return TrainConfig(
        output_dir=str(workdir / "slerpface-groups"),
        max_steps=s.group_steps,
        batch_size=s.batch_size,
        lr=0.1,
        momentum=0.9,
        weight_decay=5e-4,
        scheduler="cosine",
        warmup=min(20, s.group_steps // 4),
        warmup_unit="step",
        seed=2337 + seed,
        log_every=max(1, s.group_steps // 5),
        progress=progress,
        save_on_exit=False,
    )


def backbone_options(cfg: Any) -> dict[str, Any]:
    """The options ``facelab.core.recipe.build_backbone`` gives ``get_backbone`` for ``cfg``."""
    return {
        "in_channels": 3,
        "input_size": cfg.data.image_size,
        "embedding_size": cfg.embedding_size,
        "dropout": cfg.dropout,
        "base_width": cfg.base_width,
    }


def _row(method: str, **values: Any) -> dict[str, Any]:
    row = empty_row(method, "ok")
    row.update(values)
    return row


def _attack_cells(att: dict[str, Any] | None) -> dict[str, Any]:
    nan = float("nan")
    if att is None:
        return {"attack_ssim": nan, "attack_psnr": nan, "attack_identity_leakage": nan}
    return {
        "attack_ssim": float(att["ssim"]),
        "attack_psnr": float(att["psnr"]) if math.isfinite(att["psnr"]) else nan,
        "attack_identity_leakage": float(att["identity_leakage"]),
    }


def _attack_note(att: dict[str, Any] | None) -> str:
    if att is None:
        return ""
    sr = att.get("success_rate", float("nan"))
    return f"attack success {sr:.2f} at FAR {ATTACK_FAR:g}" if math.isfinite(sr) else ""


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def run(
    small: bool = False,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = True,
    methods: Sequence[str] = PPFR_METHODS,
    settings: QuickSettings | None = None,
    jobs: int = 1,
    families: Sequence[str] | None = None,
    toy_weights: str | Path | None = None,
    generators: Sequence[str] | None = None,
    **_: Any,
) -> SuiteResult:
    """Run the quick suite; plots go to ``out`` (the caller writes report.md/results.json).

    ``jobs``: processes to use; with ``jobs >= 2`` the method packages' ``run_quick`` run in
    ``jobs - 1`` worker processes (a fresh one per method) while this process trains the
    baseline, the templates and the attacks (see ``MethodRunner``).
    ``families``: family sections to add (default: every key of ``families.FAMILIES``);
    ``toy_weights`` / ``generators``: the synthesis section's options.
    """
    from facelab.benchmarks.baseline import toy_training_data, train_baseline, verification
    from facelab.benchmarks.families import FAMILIES, run_family
    from facelab.benchmarks.plots import (
        collect_grids,
        plot_accuracy_vs_leakage,
        plot_rocs,
        roc_from_rates,
    )
    from facelab.core.data.toyfaces import ToyFaces
    from facelab.core.recipe import build_eval_sets

    s = settings or (SMALL if small else FULL)
    family_keys = tuple(FAMILIES) if families is None else tuple(families)
    unknown = [k for k in family_keys if k not in FAMILIES]
    if unknown:
        from facelab.core.errors import UnknownNameError

        raise UnknownNameError(f"families: unknown {unknown}; valid: {list(FAMILIES)}")
    sections: list[Any] = []
    out = Path(out or "results/quick")
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    prog = Progress("quick", progress)
    torch.manual_seed(seed)
    failed: list[str] = []
    curves: dict[str, Any] = {}
    cfg = baseline_config(s, seed, work, progress)
    size = s.image_size
    runner = MethodRunner(
        methods,
        jobs=jobs,
        reporter=prog,
        workdir_root=work,
        small=small,
        seed=seed,
        progress=progress,
    )
    try:
        with prog.stage(
            f"render toyfaces ({s.identities} x {s.images_per_identity} training images)"
        ):
            train_set, _ = toy_training_data(cfg.data)
            (eval_set,) = build_eval_sets(cfg.data)
            people = {
                offset: ToyFaces(ids, per, size=size, seed=seed, identity_offset=offset)
                for ids, per, offset in (
                    (s.attack_identities, s.attack_images_per_identity, ATTACK_OFFSET),
                    (s.victim_identities, s.victim_images_per_identity, VICTIM_OFFSET),
                )
            }
            victims = people[VICTIM_OFFSET]
            attack_images, victim_images = (
                ds.render(torch.arange(len(ds))) for ds in people.values()
            )

        # ---- the ArcFace baseline
        base = bv = None
        try:
            with prog.stage(f"arcface baseline: train {s.baseline_steps} steps"):
                base = train_baseline(cfg, train_set)
            with prog.stage("arcface baseline: verify"):
                bv = verification(base.model, eval_set)
            prog.log(
                f"arcface: accuracy {bv['accuracy']:.4f}, TAR@FAR=1e-3 {bv['tar_at_far_1e-3']:.4f}"
            )
            curves[BASELINE] = bv["roc"]
        except Exception as err:
            failed.append("arcface baseline")
            prog.log(f"arcface baseline FAILED: {type(err).__name__}: {err}")
            base_error: BaseException | None = err
        else:
            base_error = None

        # ---- template protection on the baseline's body
        tpl: dict[str, Any] = {}
        tpl_status: str | BaseException = "ok"
        ext = None
        group_time = float("nan")
        if base is None:
            tpl_status = RuntimeError("the arcface baseline failed")
        else:
            try:
                import facelab.slerpface  # noqa: F401
            except ImportError as err:
                tpl_status = f"not built: {err}"
        if tpl_status == "ok":
            from facelab.benchmarks import templates as T

            try:
                with prog.stage(
                    f"slerpface extractor: train group_cov + attention, {s.group_steps} steps"
                ):
                    ext = T.build_extractor(base.model, cfg.backbone, backbone_options(cfg))
                    group_time, _ = T.train_group_branch(
                        ext,
                        train_set.tensors[0],
                        train_set.tensors[1],
                        group_train_config(s, seed, work, progress),
                    )
                with prog.stage("templates: extract, protect, verify"):
                    eval_tpl = T.extract(ext, eval_set.images)
                    n = eval_set.num_pairs
                    pairs = (torch.arange(0, 2 * n, 2), torch.arange(1, 2 * n, 2), eval_set.issame)
                    tpl = T.evaluate_protectors(eval_tpl, pairs, seed=seed, log=prog.log)
                    for name, res in tpl.items():
                        curves[T.ROW_NAMES[name]] = res["roc"]
            except Exception as err:
                failed.append("templates")
                prog.log(f"templates FAILED: {type(err).__name__}: {err}")
                tpl_status, tpl = err, {}

        # ---- inversion attacks, one budget for all observations
        attacks: dict[str, dict[str, Any]] = {}
        attack_grid = out / "grid_inversion.png"
        if base is not None:
            try:
                with prog.stage(f"inversion attacks ({s.attack_steps} steps each)"):
                    attacks = _run_attacks(
                        s,
                        seed,
                        base.model,
                        ext if tpl else None,
                        attack_images,
                        victim_images,
                        victims.labels,
                        attack_grid,
                        prog,
                    )
            except Exception as err:
                failed.append("attacks")
                prog.log(f"attacks FAILED: {type(err).__name__}: {err}")

        # ---- the other families (overlapping the method workers when jobs >= 2)
        level = "small" if small else "quick"
        for key in family_keys:
            options: dict[str, Any] = {}
            if key == "synth":
                options = {"toy_weights": toy_weights, "generators": generators}
            with prog.stage(f"family {key}: {FAMILIES[key][0]} (level {level})") as record:
                section = run_family(
                    key,
                    level=level,
                    seed=seed,
                    workdir=work / f"family-{key}",
                    out=out,
                    progress=progress,
                    **options,
                )
                record.status = section.status.split(" (")[0]
            prog.log(f"{key}: {section.summary}")
            failed += [p if p == key else f"{key}: {p}" for p in section.failed]
            sections.append(section)

        # ---- the methods (already running in worker processes when jobs >= 2)
        method_rows: list[dict[str, Any]] = []
        method_status: dict[str, str] = {}
        grids: list[Path] = []
        for outcome, _ in runner.results():
            m = outcome.method
            method_status[m] = outcome.status if not outcome.error else f"failed: {outcome.error}"
            if outcome.failed:
                failed.append(m)
            for r in outcome.rows:
                roc = r.pop("roc", None)
                if roc is not None:
                    curves[r["method"]] = roc_from_rates(roc["fpr"], roc["tpr"])
            if outcome.status == "ok":
                grids += collect_grids(m, outcome.rows, work / m, out)
            for r in outcome.rows:
                r.pop("grid", None)
            method_rows += outcome.rows
    finally:
        runner.close()

    # ---- rows
    rows: list[dict[str, Any]] = []
    nan = float("nan")
    if base is not None and bv is not None:
        rgb = attacks.get(RGB_OBS)
        rows.append(
            _row(
                BASELINE,
                accuracy=bv["accuracy"],
                accuracy_std=bv["accuracy_std"],
                **{"tar_at_far_1e-3": bv["tar_at_far_1e-3"]},
                **_attack_cells(rgb),
                bytes_per_image=3 * size * size,
                train_time_s=base.train_time_s,
                infer_images_per_s=bv["infer_images_per_s"],
                notes=_join(
                    f"{cfg.backbone} width {s.base_width}, {size}px toyfaces, "
                    f"{base.steps} steps; sends the uint8 RGB image; the attack observes it "
                    "(reference: what the decoder recovers from everything)",
                    _attack_note(rgb),
                ),
            )
        )
    else:
        rows.append(failed_row(BASELINE, base_error or "baseline did not run"))
    if "mean image" in attacks:
        rows.append(
            _row(
                MEAN_IMAGE,
                **_attack_cells(attacks["mean image"]),
                bytes_per_image=nan,
                notes=_join(
                    "outputs the attacker's mean training image whatever it observes: the "
                    "no-information floor of SSIM/PSNR/leakage",
                    _attack_note(attacks["mean image"]),
                ),
            )
        )
    rows += method_rows
    if base is not None and bv is not None:
        emb = attacks.get(EMBEDDING)
        rows.append(
            _row(
                EMBEDDING,
                accuracy=bv["accuracy"],
                accuracy_std=bv["accuracy_std"],
                **{"tar_at_far_1e-3": bv["tar_at_far_1e-3"]},
                **_attack_cells(emb),
                bytes_per_image=4 * s.embedding_size,
                train_time_s=base.train_time_s,
                infer_images_per_s=bv["infer_images_per_s"],
                notes=_join(
                    f"the baseline's {s.embedding_size}-d float32 template stored as is; "
                    "attack inverts the embedding (scored by the same network: white-box leakage)",
                    _attack_note(emb),
                ),
            )
        )
    from facelab.benchmarks.templates import PROTECTORS, ROW_NAMES

    for name in PROTECTORS:
        label = ROW_NAMES[name]
        if isinstance(tpl_status, str) and tpl_status.startswith("not built"):
            rows.append(not_built_row(label, tpl_status[len("not built: ") :]))
        elif name not in tpl:
            rows.append(failed_row(label, tpl_status if tpl_status != "ok" else "not evaluated"))
        else:
            res, att = tpl[name], attacks.get(label)
            rows.append(
                _row(
                    label,
                    accuracy=res["accuracy"],
                    accuracy_std=res["accuracy_std"],
                    **{"tar_at_far_1e-3": res["tar_at_far_1e-3"]},
                    **_attack_cells(att),
                    bytes_per_image=res["bytes_per_image"],
                    train_time_s=base.train_time_s + group_time if base else nan,
                    infer_images_per_s=res["infer_images_per_s"],
                    notes=_join(_template_note(name, res, ext), _attack_note(att)),
                )
            )

    # ---- plots
    plots: list[str] = []
    with prog.stage("plots"):
        p = plot_rocs(curves, out / "roc.png", "ROC on held-out toyfaces pairs")
        if p is not None:
            plots.append(p.name)
        ref = (
            {"mean-image attack": attacks["mean image"]["identity_leakage"]}
            if "mean image" in attacks
            else {}
        )
        p = plot_accuracy_vs_leakage(
            rows,
            out / "accuracy_vs_leakage.png",
            title="quick: accuracy vs identity leakage",
            reference_leakage=ref,
        )
        if p is not None:
            plots.append(p.name)
        if attack_grid.is_file():
            plots.append(attack_grid.name)
        plots += [g.name for g in grids]

    timings = prog.summary()
    timings["budget_s"] = BUDGET_S
    timings["within_budget_here"] = timings["wall_s"] <= BUDGET_S
    settings_dict = {
        "small": small,
        "seed": seed,
        "seeds": {
            "toyfaces": seed,
            "arcface_train": 1337 + seed,
            "slerpface_groups_train": 2337 + seed,
            "attacks": seed,
            "template_keys": f"{seed} * 1000 + 20 + k (k = protector index)",
            "attack_observation_keys": f"{seed} * 1000 + 11 / 12",
            "methods": f"run_quick(seed={seed})",
        },
        "methods": list(methods),
        "method_status": method_status,
        "quick": dataclasses.asdict(s),
        "identity_offsets": {
            "train": 0,
            "verification": "facelab.core.recipe.TOY_HELDOUT_OFFSET",
            "attacker": ATTACK_OFFSET,
            "victims": VICTIM_OFFSET,
        },
        "torch_threads": torch.get_num_threads(),
        "jobs": jobs,
        "families": {sec.key: {"status": sec.status, **sec.settings} for sec in sections},
    }
    return SuiteResult(
        suite="quick",
        columns=[k for k, _ in TABLE_COLUMNS],
        headers=dict(TABLE_COLUMNS),
        rows=rows,
        settings=settings_dict,
        notes=_notes(s, jobs if methods else 1),
        plots=plots,
        failed=failed,
        timings=timings,
        extra={
            "roc": _roc_json(curves),
            "attacks": attacks,
            "families": [sec.as_dict() for sec in sections],
        },
        summary=summary_text(rows, sections, methods),
        sections=[(f"{sec.title} (family)", sec.markdown()) for sec in sections],
    )


def _first_ok(rows: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["method"] == name and r.get("status") == "ok"), None)


def _fmt(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, int | float) and math.isfinite(v) else "n/a"


def summary_text(rows: list[dict[str, Any]], sections: list[Any], methods: Sequence[str]) -> str:
    """The report's first section: one bullet per family saying what its numbers mean."""
    base = _first_ok(rows, BASELINE)
    floor = _first_ok(rows, MEAN_IMAGE)
    floor_txt = (
        f", mean-image floor {_fmt(floor['attack_identity_leakage'])}" if floor is not None else ""
    )
    lines = []
    if base is None:
        lines.append("- **Privacy-preserving recognition**: the ArcFace baseline failed.")
    else:
        parts = []
        for m in methods:
            mine = [r for r in rows if r["method"].startswith(m)]
            ok = next((r for r in mine if r.get("status") == "ok"), None)
            if ok is None:
                status = mine[0]["status"] if mine else "not run"
                parts.append(f"{m} {status}")
            else:
                parts.append(
                    f"{ok['method']} accuracy {_fmt(ok['accuracy'])}, leakage "
                    f"{_fmt(ok['attack_identity_leakage'])}"
                )
        lines.append(
            f"- **Privacy-preserving recognition** (toyfaces; identity leakage of an inversion "
            f"attack, lower = more private): the RGB baseline verifies at accuracy "
            f"{_fmt(base['accuracy'])} and its image leaks {_fmt(base['attack_identity_leakage'])}"
            f"{floor_txt}; " + ("; ".join(parts) if parts else "no method package run") + ". "
            "A method does what its paper claims here when its accuracy stays near the "
            "baseline's while its leakage falls toward the floor."
        )
    raw = _first_ok(rows, "slerpface templates (unprotected)")
    prot = [
        r
        for r in rows
        if r["method"] in ("slerpface", "biohashing", "ironmask") and r.get("status") == "ok"
    ]
    if raw is None or not prot:
        lines.append("- **Template protection**: not run (facelab-slerpface missing or failed).")
    else:
        cells = "; ".join(
            f"{r['method']} accuracy {_fmt(r['accuracy'])}, leakage "
            f"{_fmt(r['attack_identity_leakage'])}"
            for r in prot
        )
        lines.append(
            f"- **Template protection** (SlerpFace templates on the baseline's body): unprotected "
            f"templates verify at {_fmt(raw['accuracy'])} and leak "
            f"{_fmt(raw['attack_identity_leakage'])}; {cells}. SlerpFace's claim is accuracy "
            "close to the unprotected templates with leakage near the floor."
        )
    for sec in sections:
        lines.append(f"- **{sec.title}** ({sec.status}): {sec.summary}")
    return "\n".join(lines)


def _run_attacks(
    s: QuickSettings,
    seed: int,
    recognizer: torch.nn.Module,
    extractor: Any,
    attack_images: torch.Tensor,
    victim_images: torch.Tensor,
    victim_labels: torch.Tensor,
    grid: Path,
    prog: Progress,
) -> dict[str, dict[str, Any]]:
    from facelab.core.eval import embed
    from facelab.core.privacy import AttackConfig, compare_attacks

    # attacks are named by their row; the grid labels are short (96 px label column)
    obs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {
        RGB_OBS: (attack_images, victim_images),
        EMBEDDING: (
            embed(recognizer, attack_images, batch_size=256),
            embed(recognizer, victim_images, batch_size=256),
        ),
    }
    if extractor is not None:
        from facelab.benchmarks import templates as T

        att_tpl, vic_tpl = T.extract(extractor, attack_images), T.extract(extractor, victim_images)
        for name in T.PROTECTORS:
            obs[T.ROW_NAMES[name]] = (
                T.observations(name, att_tpl, seed * 1000 + 11),
                T.observations(name, vic_tpl, seed * 1000 + 12),
            )
    prog.log(f"attacks on: {'; '.join(obs)} (+ mean image)")
    short = {GRID_LABELS.get(k, k): k for k in obs}
    rows = compare_attacks(
        {GRID_LABELS.get(k, k): v for k, v in obs.items()},
        attack_images,
        victim_images,
        config=AttackConfig(width=s.attack_width, depth=s.attack_depth),
        steps=s.attack_steps,
        batch_size=s.attack_batch_size,
        lr=s.attack_lr,
        seed=seed,
        device="cpu",
        recognizer=recognizer,
        far=ATTACK_FAR,
        test_labels=victim_labels,
        baseline=True,
        grid_path=grid,
        grid_samples=s.grid_samples,
    )
    for r in rows:
        r["attack"] = short.get(r["attack"], r["attack"])
        prog.log(
            f"attack {r['attack']}: SSIM {r['ssim']:.3f}, PSNR {r['psnr']:.2f}, "
            f"leakage {r['identity_leakage']:.3f}"
        )
    return {r["attack"]: r for r in rows}


def _template_note(name: str, res: dict[str, Any], ext: Any) -> str:
    shape = f"{ext.num_groups} groups x {ext.group_size}" if ext is not None else ""
    params = ", ".join(f"{k}={v}" for k, v in res["params"].items())
    what = {
        "unprotected": "weighted unit groups stored as they are",
        "slerpface": f"slerp toward a per-user key + group dropout ({params})",
        "biohashing": f"per-user orthonormal projection + sign ({params}); stored 1 byte per bit",
        "ironmask": f"per-user rotation onto a hashed sparse codeword ({params}); binary scores",
    }[name]
    return f"{shape} templates from the baseline body + trained group_cov/attention; {what}"


def _roc_json(curves: dict[str, Any], max_points: int = 200) -> dict[str, Any]:
    from facelab.core.eval.plots import thin

    out = {}
    for name, c in curves.items():
        i = thin(c.fpr, c.tpr, max_points)
        out[name] = {"auc": c.auc, "fpr": c.fpr[i].tolist(), "tpr": c.tpr[i].tolist()}
    return out


def _notes(s: QuickSettings, jobs: int = 1) -> list[str]:
    return [
        "accuracy: insightface 10-fold verification on held-out toyfaces people (mean over folds); "
        "TAR@FAR=1e-3: the ROC point nearest to FAR 1e-3 (coarse with few impostor pairs)",
        f"inversion attacks here (baseline, embedding, templates, mean image) share one decoder "
        f"config (width {s.attack_width}, depth {s.attack_depth}), {s.attack_steps} steps, "
        f"batch {s.attack_batch_size}, trained on the attacker's {s.attack_identities} people and "
        f"scored on {s.victim_identities} other people; identity leakage = cosine between the "
        "embeddings of original and reconstruction under the arcface baseline",
        "method rows come from each package's run_quick: its own toy sizes, its own attack budget "
        "and its own independent RGB recognizer for leakage (compare within a method's rows; "
        "across methods only roughly)",
        "bytes/image: what crosses the client -> server boundary (RGB baseline: the uint8 image; "
        "template rows: the stored protected template)",
        "train s / infer img/s: wall time on this machine, which may be shared: see Timings and "
        "Machine (load average) before comparing",
        *(
            [
                f"jobs {jobs}: the method packages ran in worker processes while this process "
                "ran the baseline, templates and attacks, so both sides' wall times (train s, "
                "infer img/s) include sharing the CPU with the other"
            ]
            if jobs > 1
            else []
        ),
    ]
