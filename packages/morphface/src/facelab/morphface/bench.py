"""Quality measurements of a trained toy generator (for the README tables and a later family
suite): does it follow the requested 3DMM style?

:func:`style_control` trains the style regressor (:func:`~facelab.morphface.toy.
train_style_regressor`) on real styled toyfaces, samples one image per requested style (the
exact 3DMM parameters of real toyfaces images, each with its own identity's ID vector) and
reports, per attribute, the correlation between the requested value and the value the regressor
reads from the generated image; the same for the same network sampled without style (null
style tokens: the correlation a generator that ignores style gets) and for the real images
(the regressor's own ceiling).

:func:`train_toy_generator` and :func:`write_toy_dataset` are the two entry points the
benchmarks' synthesis suite calls (``facelab.benchmarks.generators``): the toy preset's training
into a generator folder (the base's layout plus MorphFace's files, and ``toy_weights.json``
describing its identities and toy styles), and a dataset written from those weights with each
new subject's styles sampled from the style prior fitted on the training set's styles (the
prior's and the sampler's defaults).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from facelab.morphface.toy import (
    REGRESSED,
    StyledToyFaces,
    ToyStyleConfig,
    style_agreement,
    train_style_regressor,
)

#: the toy generator this package ships (the toy preset, training seed 0, float16; remade by
#: ``uv run python scripts/make_toy_weights.py --generators morphface --force``): the claim
#: test's generator, and the synthesis suite's MorphFace weights
TOY_WEIGHTS = Path(__file__).resolve().parent / "weights" / "toy"


#: the toy generator of the ``toy-expression`` preset (training seed 0, float16; remade by
#: ``uv run python packages/morphface/scripts/make_expression_weights.py``): the expression
#: part of the claim test
TOY_EXPRESSION_WEIGHTS = TOY_WEIGHTS.parent / "toy-expression"


def shipped_toy_weights() -> Path:
    """The folder of the toy generator this package ships (:data:`TOY_WEIGHTS`)."""
    return TOY_WEIGHTS


@dataclass
class _Requests:
    """Held-out real styled toyfaces images as generation requests (shared by
    :func:`style_control` and :func:`style_response`): the regressor trained on the other real
    images, each request's ID vector and noise seed."""

    sampler: Any
    toy: StyledToyFaces
    style: ToyStyleConfig
    real: torch.Tensor
    targets: torch.Tensor
    test: torch.Tensor
    train_idx: torch.Tensor
    regressor: Any
    contexts: torch.Tensor
    seeds: list[int]

    @torch.no_grad()
    def sample(self, styles, batch: int = 32, **guidance: float) -> torch.Tensor:
        """One image per request (``styles`` row i for request i; None: no style)."""
        n, out = len(self.test), []
        for i in range(0, n, batch):
            part = None if styles is None else styles.index(torch.arange(i, min(i + batch, n)))
            out.append(
                self.sampler.sample(
                    self.contexts[i : i + batch], part, seeds=self.seeds[i : i + batch], **guidance
                ).images
            )
        return torch.cat(out)

    def identity(self, sets: dict[str, torch.Tensor], steps: int, seed: int):
        """:func:`_identity` of generated ``sets`` (one image per request)."""
        tr = self.train_idx
        return _identity(
            self.real[tr], self.toy.labels[tr], sets, self.toy.labels[self.test], steps, seed
        )


def _requests(
    generator: str,
    *,
    style: ToyStyleConfig | None,
    identities: int,
    images_per_identity: int,
    toy_seed: int,
    context_seed: int,
    num_requests: int,
    regressor_steps: int,
    seed: int,
    num_steps: int | None,
    clip_sample: bool = True,
    image_size: int | None = None,
) -> _Requests:
    """Load the generator (``num_steps``: None = its default; ``clip_sample``: x0 clipping),
    hold out ``num_requests`` real images (permutation from ``seed``), train the style
    regressor on the others (``image_size``: resize the real images first)."""
    from facelab.core.diffusion.identities import random_identities

    sampler_kwargs: dict[str, Any] = {"clip_sample": bool(clip_sample)}
    if num_steps is not None:
        sampler_kwargs["num_steps"] = num_steps
    sampler, toy, style = _styled_generator(
        generator, style, identities, images_per_identity, toy_seed, **sampler_kwargs
    )
    real = toy.materialize(torch.float32)
    if image_size is not None and real.shape[-1] != image_size:
        real = F.interpolate(real, size=(image_size,) * 2, mode="bilinear", antialias=True)
    targets = toy.regression_targets()
    perm = torch.randperm(len(toy), generator=torch.Generator().manual_seed(seed))
    test, train_idx = perm[:num_requests], perm[num_requests:]
    reg = train_style_regressor(
        real[train_idx], targets[train_idx], steps=regressor_steps, seed=seed
    )
    contexts = random_identities(identities, 512, context_seed)[toy.labels[test]]
    seeds = [seed * 100_003 + k for k in range(num_requests)]
    return _Requests(sampler, toy, style, real, targets, test, train_idx, reg, contexts, seeds)


def style_control(
    generator: str,
    *,
    identities: int = 24,
    images_per_identity: int = 40,
    image_size: int = 32,
    toy_seed: int = 0,
    context_seed: int = 0,
    num_requests: int = 96,
    regressor_steps: int = 400,
    seed: int = 0,
    num_steps: int | None = None,
    style: ToyStyleConfig | None = None,
    swap: bool = True,
    clip_sample: bool = True,
    style_scale: float | None = None,
    blend: float | None = None,
    recognizer_steps: int = 300,
    id_scale: float | None = None,
    swap_fields: str = "all",
) -> dict[str, Any]:
    """Style agreement of a generator trained on styled toyfaces.

    ``num_requests`` real images of the toy set (``identities`` x ``images_per_identity``, toy
    seed ``toy_seed``, styles ``style``: by default the generator's own toy settings, read from
    its ``toy_weights.json`` / ``morphface.json``, else ``ToyStyleConfig()``) are held out; the
    style regressor trains on the others. Each request pairs one held-out image's identity (its
    ID vector) with a style. ``swap=True`` (default) takes the style from a held-out image of
    *another* identity, so a generator that ignores the style tokens and draws its identity's
    habitual pose cannot score; ``swap=False`` asks for the image's own style (then identity
    alone explains much of the agreement). ``swap_fields``: ``"all"`` requests the donor's
    whole 3DMM style (its shape and albedo too, which carry the donor's identity in the toy
    data), ``"pose-expression"`` only the donor's pose and expression on the requesting image's
    own shape, camera, light and albedo (what the style-control claim is about).

    Returns, per attribute, Pearson correlation and MAE (:func:`style_agreement`) of the values
    the regressor reads back against the requested ones for: ``generated`` (with the requested
    style), ``no_style`` (the same network and seeds with the null style tokens), ``real`` (the
    real images whose style was requested: the regressor's ceiling); against the requesting
    identity's own image's values for ``generated_own`` and ``no_style_own`` (how much the
    output follows the identity instead of the style); ``identity`` (``recognizer_steps`` > 0):
    identity of the ``generated`` and ``no_style`` images under a toy recognizer (core
    ``train_toy_recognizer``) trained on the regressor's real images - closed-set identification
    against those images and the consistency gap (genuine minus impostor cosine among the
    generated images); and ``settings``. ``style_scale`` / ``blend`` override the generator's
    guidance defaults (``id_scale`` for the null-style images too)."""
    r = _requests(
        generator,
        style=style,
        identities=identities,
        images_per_identity=images_per_identity,
        toy_seed=toy_seed,
        context_seed=context_seed,
        num_requests=num_requests,
        regressor_steps=regressor_steps,
        seed=seed,
        num_steps=num_steps,
        clip_sample=clip_sample,
        image_size=image_size,
    )
    sampler, toy, style, real, targets, test = r.sampler, r.toy, r.style, r.real, r.targets, r.test
    reg = r.regressor
    donor = swap_donors(toy.labels[test]) if swap else torch.arange(num_requests)
    styles = _requested_styles(toy, test, donor, swap_fields)
    scale: dict[str, float] = {}
    if style_scale is not None:
        scale["style_scale"] = float(style_scale)
    if blend is not None:
        scale["blend"] = float(blend)
    ids: dict[str, float] = {}
    if id_scale is not None:
        ids["id_scale"] = float(id_scale)
    imgs = r.sample(styles, **scale, **ids)
    plain = r.sample(None, **ids)
    req, own = targets[test[donor]], targets[test]
    identity: dict[str, dict[str, float]] = {}
    if recognizer_steps > 0:
        identity = r.identity({"generated": imgs, "no_style": plain}, recognizer_steps, seed)
    return {
        "generated": style_agreement(reg, imgs, req),
        "no_style": style_agreement(reg, plain, req),
        "real": style_agreement(reg, real[test[donor]], req),
        "generated_own": style_agreement(reg, imgs, own),
        "no_style_own": style_agreement(reg, plain, own),
        "identity": identity,
        "settings": {
            "swap": bool(swap),
            "swap_fields": swap_fields,
            "clip_sample": bool(clip_sample),
            "requests": int(num_requests),
            "num_steps": sampler.settings()["num_steps"],
            "style_scale": style_scale,
            "blend": blend,
            "toy_style": asdict(style),
        },
    }


def _styled_generator(generator, style, identities, images_per_identity, toy_seed, **kwargs):
    """(sampler, the styled toyfaces of the generator's toy settings, those settings); an
    ID-only generator (no style encoder) is an error."""
    from facelab.core.errors import RangeError
    from facelab.morphface.train import load_morphface

    sampler = load_morphface(generator, **kwargs)
    if sampler.encoder is None:
        raise RangeError(f"{generator}: an ID-only generator (use_style=False) has no style")
    style = style if style is not None else generator_toy_style(Path(generator))
    toy = StyledToyFaces(
        identities, images_per_identity, size=32, seed=toy_seed, difficulty="easy", style=style
    )
    return sampler, toy, style


@torch.no_grad()
def condition_sensitivity(
    generator: str,
    *,
    identities: int = 24,
    images_per_identity: int = 40,
    toy_seed: int = 0,
    context_seed: int = 0,
    num_images: int = 128,
    timesteps: tuple[int, ...] = (50, 200, 400, 600, 800),
    seed: int = 0,
    style: ToyStyleConfig | None = None,
) -> dict[int, dict[str, float]]:
    """How much the trained denoiser uses each condition: its noise-prediction MSE on
    ``num_images`` real styled toyfaces (the generator's toy settings) noised to each of
    ``timesteps`` (one noise draw per timestep, shared by every variant), with the ID vector and
    the image's own style (``style``), the null style tokens (``null_style``; zero maps for a
    denoiser with pixel-aligned renderings, which otherwise go with the tokens), another
    identity's image's style (``swapped_style``, :func:`swap_donors`), and without the ID vector
    (``no_id``, own style). A condition the denoiser ignores leaves the loss unchanged when it
    is removed or swapped."""
    from facelab.core.diffusion.identities import random_identities

    sampler, toy, _ = _styled_generator(generator, style, identities, images_per_identity, toy_seed)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(toy), generator=g)[:num_images]
    den = sampler.denoiser
    size = int(sampler.settings()["image_size"])
    x0 = toy.materialize(torch.float32)[idx]
    if x0.shape[-1] != size:
        x0 = F.interpolate(x0, size=(size, size), mode="bilinear", antialias=True)
    x0 = sampler.base.autoencoder.encode(x0)
    labels = toy.labels[idx]
    ctx = random_identities(identities, 512, context_seed)[labels]
    tokens, null, maps = sampler.style_condition(toy.style_params(idx), len(idx))
    donors = swap_donors(labels)
    swapped = tokens[donors]
    swapped_maps = maps[donors] if maps is not None else None
    alphas = sampler.base.scheduler.alphas_cumprod  # the training schedule
    on = torch.ones(len(idx), dtype=torch.bool)
    out: dict[int, dict[str, float]] = {}
    for t in timesteps:
        eps = torch.randn(x0.shape, generator=g)
        a = float(alphas[int(t)])
        x_t = a**0.5 * x0 + (1.0 - a) ** 0.5 * eps
        tt = torch.full((len(idx),), int(t))
        row = {}
        for name, flag, tok, m in (
            ("style", on, tokens, maps),
            ("null_style", on, null, None),
            ("swapped_style", on, swapped, swapped_maps),
            ("no_id", ~on, tokens, maps),
        ):
            kw = {} if m is None else {"extra_input": m}
            pred = den(x_t, tt, ctx, flag, extra_context=tok, **kw)
            row[name] = float((pred.float() - eps).pow(2).mean())
        out[int(t)] = row
    return out


#: where each regressed attribute lives in the 3DMM style (field, column, scale from the
#: regressor's units: degrees -> radians for the pose; toyfaces units = expression units)
_ATTRIBUTE_FIELD = {
    "yaw": ("pose", 0, math.pi / 180.0),
    "pitch": ("pose", 1, math.pi / 180.0),
    "smile": ("expression", 0, 1.0),
    "mouth_open": ("expression", 1, 1.0),
    "brow_raise": ("expression", 3, 1.0),
}


def _shifted(styles, attribute: str, amount: float):
    """``styles`` with one attribute moved by ``amount`` (the regressor's units)."""
    from dataclasses import replace as dc_replace

    field_name, col, unit = _ATTRIBUTE_FIELD[attribute]
    values = getattr(styles, field_name).clone()
    values[:, col] = values[:, col] + amount * unit
    return dc_replace(styles, **{field_name: values})


def style_response(
    generator: str,
    *,
    attributes: tuple[str, ...] = ("yaw", "pitch", "smile"),
    identities: int = 24,
    images_per_identity: int = 40,
    toy_seed: int = 0,
    context_seed: int = 0,
    num_requests: int = 48,
    regressor_steps: int = 400,
    recognizer_steps: int = 300,
    seed: int = 0,
    num_steps: int | None = None,
    style: ToyStyleConfig | None = None,
) -> dict[str, Any]:
    """Does one requested attribute move the generated image, all else fixed? A paired
    measurement, free of the identities' habitual styles.

    ``num_requests`` held-out real styled toyfaces images each give an identity (its ID vector),
    a style (the image's own 3DMM parameters) and a noise seed. For each attribute, the style is
    shifted by -d/2 and +d/2 (d = the attribute's standard deviation over the real images, in
    the regressor's units: degrees for yaw / pitch, toyfaces units for expressions) and both are
    sampled from the same noise; a regressor trained on the other real images reads every
    attribute back. Per shifted attribute ``a``: ``gain`` = mean over requests of (read(+) -
    read(-)) / d for ``a`` itself (1: the images follow the request exactly; the same network
    without style gives identical images, so 0), ``positive`` = the share of requests whose read
    value moved the requested way, and ``crosstalk`` = the largest mean |read difference| / d of
    another attribute. ``identity`` (``recognizer_steps`` > 0): identification of the images of
    the own style and of the same network and noise without style (``no_style``) by a toy
    recognizer trained on the real images."""
    from facelab.core.errors import UnknownNameError

    unknown = [a for a in attributes if a not in _ATTRIBUTE_FIELD]
    if unknown:
        raise UnknownNameError(
            f"attributes: expected names from {list(_ATTRIBUTE_FIELD)}, got {unknown}"
        )
    r = _requests(
        generator,
        style=style,
        identities=identities,
        images_per_identity=images_per_identity,
        toy_seed=toy_seed,
        context_seed=context_seed,
        num_requests=num_requests,
        regressor_steps=regressor_steps,
        seed=seed,
        num_steps=num_steps,
    )
    size = int(r.sampler.settings()["image_size"])
    own = r.toy.style_params(r.test)
    spread = r.targets[r.train_idx].std(0)

    @torch.no_grad()
    def read(styles) -> tuple[torch.Tensor, torch.Tensor]:
        imgs = r.sample(styles)
        if imgs.shape[-1] != r.real.shape[-1]:
            imgs = F.interpolate(imgs, size=r.real.shape[-2:], mode="bilinear", antialias=True)
        return imgs, r.regressor(imgs)

    out: dict[str, Any] = {}
    for a in attributes:
        k = REGRESSED.index(a)
        d = float(spread[k])
        _, lo = read(_shifted(own, a, -d / 2))
        _, hi = read(_shifted(own, a, d / 2))
        diff = (hi - lo) / spread
        others = [j for j in range(len(REGRESSED)) if j != k]
        out[a] = {
            "delta": d,
            "gain": float(diff[:, k].mean()),
            "positive": float((diff[:, k] > 0).double().mean()),
            "crosstalk": float(diff[:, others].mean(0).abs().max()),
        }
    if recognizer_steps > 0:
        styled, _ = read(own)
        plain, _ = read(None)
        out["identity"] = r.identity(
            {"generated": styled, "no_style": plain}, recognizer_steps, seed
        )
    out["settings"] = {
        "requests": int(num_requests),
        "seed": int(seed),
        "image_size": size,
        **{k: v for k, v in r.sampler.settings().items() if k in ("num_steps", "blend")},
        "style": asdict(r.style),
    }
    return out


SWAP_FIELDS = ("all", "pose-expression")


def _requested_styles(toy, test: torch.Tensor, donor: torch.Tensor, swap_fields: str):
    """The requested 3DMM styles: the donors' whole style (``"all"``), or their pose and
    expression on the requesting image's own shape, camera, light and albedo
    (``"pose-expression"``)."""
    from facelab.core.errors import UnknownNameError
    from facelab.morphface.params import StyleParams

    if swap_fields not in SWAP_FIELDS:
        raise UnknownNameError(f"swap_fields: expected one of {SWAP_FIELDS}, got {swap_fields!r}")
    donors = toy.style_params(test[donor])
    if swap_fields == "all":
        return donors
    own = toy.style_params(test)
    return StyleParams(
        shape=own.shape,
        expression=donors.expression,
        pose=donors.pose,
        camera=own.camera,
        light=own.light,
        albedo=own.albedo,
    )


def _identity(
    real: torch.Tensor,
    real_labels: torch.Tensor,
    sets: dict[str, torch.Tensor],
    labels: torch.Tensor,
    steps: int,
    seed: int,
) -> dict[str, dict[str, float]]:
    """Identification against ``real`` and the consistency gap of each set of generated images
    under a toy recognizer trained on ``real``."""
    from facelab.core.diffusion.metrics import identity_consistency
    from facelab.core.diffusion.toy import train_toy_recognizer

    batch = min(32, real.shape[0])
    net = train_toy_recognizer(real, real_labels, steps=steps, batch_size=batch, seed=seed).eval()
    with torch.no_grad():
        ref = F.normalize(net(real), dim=1)
        out = {}
        for name, x in sets.items():
            if x.shape[-1] != real.shape[-1]:
                x = F.interpolate(x, size=real.shape[-2:], mode="bilinear", antialias=True)
            c = identity_consistency(
                F.normalize(net(x), dim=1), labels, references=ref, reference_labels=real_labels
            )
            out[name] = {k: float(c[k]) for k in ("identification_accuracy", "consistency_gap")}
    return out


def swap_donors(labels: torch.Tensor) -> torch.Tensor:
    """For each position ``i`` of ``labels`` (N,), the position of another item with a
    different label (a permutation: items sorted by label, each paired with the item half the
    list away). Raises when one label holds more than half of the items (no such pairing)."""
    from facelab.core.errors import RangeError

    n = labels.numel()
    order = torch.argsort(labels, stable=True)
    donor = torch.empty(n, dtype=torch.long)
    donor[order] = torch.roll(order, n // 2)
    if n < 2 or bool((labels[donor] == labels).any()):
        counts = torch.bincount(labels).max() if n else 0
        raise RangeError(
            f"style swap: expected no identity to hold more than half of the {n} requests, "
            f"got one with {int(counts)}"
        )
    return donor


def generator_toy_style(generator: Path) -> ToyStyleConfig:
    """The toy style settings a generator was trained on: ``toy_weights.json`` (the benchmarks'
    toy weights) or ``morphface.json``'s ``toy_style`` (``facelab morphface train`` on
    toyfaces), else the default ``ToyStyleConfig()``. A file that is there but unreadable is an
    error, not a silent fall back to the defaults."""
    from facelab.core.errors import FormatError

    for name, keys in ((TOY_INFO_FILE, ("styles", "toy")), ("morphface.json", ("toy_style",))):
        path = Path(generator) / name
        if not path.is_file():
            continue
        try:
            doc: Any = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(f"{path}: not a readable JSON file ({exc})") from None
        for k in keys:
            doc = doc.get(k) if isinstance(doc, dict) else None
        if isinstance(doc, dict):
            return ToyStyleConfig(**{k: tuple(v) for k, v in doc.items()})
    return ToyStyleConfig()


#: written next to the trained generator; the benchmarks' toy-weights export keeps it
TOY_INFO_FILE = "toy_weights.json"
TOY_COMMAND = "facelab morphface train --preset {preset}"


def toy_train_config(
    out_dir: Path,
    *,
    steps: int | None = None,
    seed: int = 0,
    progress=True,
    preset: str = "toy",
):
    """The ``toy`` (or another toy-data) preset into ``out_dir`` (resumable), seed offset by
    ``seed``; ``steps`` shortens the run (the warm-up then fits in it)."""
    from facelab.core.errors import UnknownNameError
    from facelab.morphface.train import morphface_presets

    presets = morphface_presets()
    if preset not in presets or presets[preset].data.source != "toyfaces":
        toy = [k for k, v in presets.items() if v.data.source == "toyfaces"]
        raise UnknownNameError(
            f"preset: expected one of the toy-data presets {toy}, got {preset!r}"
        )
    cfg = presets[preset]
    override: dict[str, Any] = {}
    if steps is not None:
        override = {"max_steps": steps, "warmup": min(cfg.train.warmup, steps // 4)}
        if cfg.train.checkpoint_every:
            override["checkpoint_every"] = max(1, min(cfg.train.checkpoint_every, steps))
    train = replace(
        cfg.train,
        output_dir=str(out_dir),
        seed=cfg.train.seed + seed,
        progress=progress,
        **override,
    )
    return replace(cfg, train=train, resume="latest")


def train_toy_generator(
    out_dir: Path,
    *,
    steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
    preset: str = "toy",
) -> Path:
    """Train the toy preset (or ``preset``, another toy-data one) into ``out_dir``; return its
    generator folder (the base's ``load_generator`` reads the denoiser; ``load_morphface`` the
    whole generator) with ``toy_weights.json``: the ID vectors (one random unit vector per toy
    identity) and the toy data's style settings, from which :func:`write_toy_dataset` refits
    the style prior."""
    from facelab.morphface.train import train

    cfg = toy_train_config(Path(out_dir), steps=steps, seed=seed, progress=progress, preset=preset)
    res = train(cfg)
    d = cfg.data
    info = {
        "preset": TOY_COMMAND.format(preset=preset),
        "contexts": {
            "kind": d.contexts,
            "count": d.toy_identities,
            "dim": d.context_dim,
            "seed": d.context_seed,
            "toy_seed": d.toy_seed,
            "toy_difficulty": d.toy_difficulty,
            "image_size": d.image_size,
        },
        "styles": {
            "toy": asdict(cfg.style.toy),
            "images_per_identity": d.toy_images_per_identity,
            "prior": "StylePrior.fit on the training images' styles (defaults)",
        },
        "steps": cfg.train.max_steps,
    }
    generator = res.output_dir / "generator"
    (generator / TOY_INFO_FILE).write_text(json.dumps(info, indent=2))
    return generator


def _read_toy_info(weights: Path) -> dict[str, Any]:
    from facelab.core.errors import FormatError

    path = Path(weights) / TOY_INFO_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not a readable toy-weights description ({exc})") from None
    c, st = info.get("contexts"), info.get("styles")
    if not isinstance(c, dict) or c.get("kind") != "identity" or not isinstance(st, dict):
        raise FormatError(
            f"{path}: expected MorphFace toy weights ('identity' contexts and the toy styles), "
            f"got contexts {c!r}"
        )
    return info


def _toy_training_set(weights: Path) -> StyledToyFaces:
    """The styled toyfaces a toy generator was trained on (from its ``toy_weights.json``)."""
    info = _read_toy_info(weights)
    c, st = info["contexts"], info["styles"]
    style = ToyStyleConfig(**{k: tuple(v) for k, v in st["toy"].items()})
    return StyledToyFaces(
        int(c["count"]),
        int(st["images_per_identity"]),
        size=32,
        seed=int(c["toy_seed"]),
        difficulty=c["toy_difficulty"],
        style=style,
    )


def toy_style_prior(weights: Path):
    """The style prior of the toy generator's training set (refitted from ``toy_weights.json``:
    the styled toyfaces' exact 3DMM parameters, the prior's default fit)."""
    from facelab.morphface.prior import StylePrior

    toy = _toy_training_set(weights)
    return StylePrior.fit(toy.style_params(), toy.labels)


#: the 3DMM parameters that carry a subject's identity (not its style)
IDENTITY_FIELDS = ("shape", "albedo")


def toy_dataset_styles(weights: Path, identities: int, images_per_identity: int, seed: int):
    """The styles of a toy dataset of the generator's first ``identities`` training identities:
    each a new subject drawn from :func:`toy_style_prior` (``seed``), with the identity-bound
    parameters (:data:`IDENTITY_FIELDS`: 3DMM shape and albedo) replaced by the identity's own
    (its mean over its real training images), so the rendering does not describe another
    person's face than the ID vector does."""
    from dataclasses import replace as dc_replace

    from facelab.morphface.prior import StylePrior

    toy = _toy_training_set(weights)
    real = toy.style_params()
    prior = StylePrior.fit(real, toy.labels)  # = toy_style_prior(weights)
    styles, labels = prior.sample(identities, images_per_identity, seed=seed)
    own = {}
    for name in IDENTITY_FIELDS:
        values = getattr(real, name)
        means = torch.stack([values[toy.labels == c].mean(0) for c in range(identities)])
        own[name] = means[labels].to(getattr(styles, name).dtype)
    return dc_replace(styles, **own)


def write_toy_dataset(
    weights: Path,
    out_dir: Path,
    *,
    identities: int,
    images_per_identity: int,
    seed: int,
    image_size: int,
    num_steps: int,
    progress: bool = True,
    own_identity_fields: bool = True,
) -> Path:
    """Identity folders + ``manifest.json`` (the base's ``generate_dataset`` through
    ``MorphFaceSampler.generate``) from the toy weights: the first ``identities`` ID vectors the
    generator was trained on, each a new subject whose ``images_per_identity`` styles come from
    :func:`toy_style_prior` (``seed``) with its own shape and albedo (:func:`toy_dataset_styles`;
    ``own_identity_fields=False``: the prior's draw as is), sampled with the generator's
    guidance defaults in float32
    with each step's predicted x0 clipped to [-1, 1] (pixel space, as the base's toy
    generators); every image's style in its identity's ``meta.json``."""
    from facelab.core.diffusion.identities import random_identities
    from facelab.core.errors import FormatError
    from facelab.morphface.train import load_morphface

    info = _read_toy_info(weights)
    c = info["contexts"]
    if identities > int(c["count"]):
        raise FormatError(
            f"identities: the toy generator knows {c['count']} identities, {identities} asked"
        )
    contexts = random_identities(int(c["count"]), int(c["dim"]), int(c["seed"]))[:identities]
    sampler = load_morphface(weights, num_steps=num_steps, clip_sample=True)
    sampler.to(dtype=torch.float32)
    prior = styles = None
    if sampler.encoder is not None and own_identity_fields:
        styles = toy_dataset_styles(weights, identities, images_per_identity, seed)
    elif sampler.encoder is not None:
        prior = toy_style_prior(weights)
    sampler.generate(
        contexts,
        out_dir,
        prior=prior,
        styles=styles,
        images_per_identity=images_per_identity,
        batch_size=64,
        seed=seed,
        image_size=image_size,
        progress=progress,
    )
    return Path(out_dir)


__all__ = [
    "TOY_EXPRESSION_WEIGHTS",
    "TOY_WEIGHTS",
    "condition_sensitivity",
    "generator_toy_style",
    "shipped_toy_weights",
    "style_control",
    "style_response",
    "swap_donors",
    "toy_dataset_styles",
    "toy_style_prior",
    "toy_train_config",
    "train_toy_generator",
    "write_toy_dataset",
]
