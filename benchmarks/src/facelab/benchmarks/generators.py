"""The toy generators of the synthesis family: making their shipped toy weights and writing a
dataset from them.

Training a diffusion generator does not fit the quick suite's budget (the base toy preset costs
about 750 CPU-seconds), so each generator's toy weights are trained once by
``scripts/make_toy_weights.py`` and shipped as float16 safetensors (a few MB each) in
``benchmarks/toy-weights/<name>/`` (or inside the generator's own package, where it ships
them: ``bench.shipped_toy_weights()``); the suites only sample from them.

Each generator is a :class:`GeneratorSpec`. A generator package may provide both steps itself
in ``facelab.<name>.bench`` (these take precedence over the adapters here)::

    def train_toy_generator(out_dir: Path, *, steps: int | None, seed: int,
                            progress: bool) -> Path:
        '''Train the package's toy preset into out_dir; return the generator folder
        (loadable by core's load_generator, plus whatever else the method needs).'''

    def write_toy_dataset(weights: Path, out_dir: Path, *, identities: int,
                          images_per_identity: int, seed: int, image_size: int,
                          num_steps: int, progress: bool) -> Path:
        '''Write identity folders + manifest.json (core's generate_dataset) from the toy
        weights folder; return out_dir.'''

Built-in adapters exist for the synthesis base (core), UIFace (its toy recipe and toy sampling
preset) and SteerFace (its toy recipe; it samples like the base). MorphFace provides the two
functions itself (``facelab.morphface.bench``: its toy recipe, and sampling with each new
subject's styles drawn from the style prior of its training set).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facelab.core.errors import FacelabError, FormatError, UnknownNameError

#: environment variable naming the toy-weights folder (overrides the repository's)
TOY_WEIGHTS_ENV = "FACELAB_TOY_WEIGHTS"
#: the file written next to each exported generator
INFO_FILE = "toy_weights.json"
INFO_FORMAT = "facelab-toy-weights"


class MissingWeightsError(FacelabError):
    """No toy weights for a generator (run scripts/make_toy_weights.py)."""


@dataclass(frozen=True)
class GeneratorSpec:
    name: str
    label: str
    module: str
    train: Callable[..., Path] | None = None
    write: Callable[..., Path] | None = None

    def hook(self, function: str) -> Callable[..., Any] | None:
        """``facelab.<name>.bench.<function>`` when the package provides it."""
        if self.name == "base":
            return None
        try:
            mod = importlib.import_module(f"{self.module}.bench")
        except ImportError:
            return None
        fn = getattr(mod, function, None)
        return fn if callable(fn) else None

    def is_installed(self) -> bool:
        if self.name == "base":
            try:
                from facelab.core import diffusion

                return bool(diffusion.available())
            except ImportError:
                return False
        from facelab.benchmarks.families import installed

        return installed(self.module)

    def trainer(self) -> Callable[..., Path] | None:
        return self.hook("train_toy_generator") or self.train

    def writer(self) -> Callable[..., Path] | None:
        return self.hook("write_toy_dataset") or self.write


# --------------------------------------------------------------------------------------------
# the synthesis base (core)


def _train_config(cfg: Any, out_dir: Path, steps: int | None, seed: int, progress: bool) -> Any:
    import dataclasses

    override: dict[str, Any] = {}
    if steps is not None:  # shorter runs (tests): the warm-up must fit in the run
        override = {"max_steps": steps, "warmup": min(cfg.train.warmup, steps // 4)}
        if cfg.train.checkpoint_every:
            override["checkpoint_every"] = max(1, min(cfg.train.checkpoint_every, steps))
    train = dataclasses.replace(
        cfg.train,
        output_dir=str(out_dir),
        seed=cfg.train.seed + seed,
        progress=progress,
        **override,
    )
    return dataclasses.replace(cfg, train=train, resume="latest")


def _contexts_info(cfg: Any) -> dict[str, Any]:
    d = cfg.data
    return {
        "kind": d.contexts,
        "count": d.toy_identities,
        "dim": d.context_dim,
        "seed": d.context_seed,
        "toy_seed": d.toy_seed,
        "toy_difficulty": d.toy_difficulty,
        "image_size": d.image_size,
    }


def base_train(out_dir: Path, *, steps: int | None, seed: int, progress: bool) -> Path:
    """``facelab synth train --preset toy`` (core's toy preset) into ``out_dir``."""
    from facelab.core.diffusion.train import synth_presets, train_diffusion

    cfg = _train_config(synth_presets()["toy"], out_dir, steps, seed, progress)
    res = train_diffusion(cfg)
    _write_train_info(res.output_dir, cfg, "facelab synth train --preset toy")
    return res.output_dir / "generator"


def _write_train_info(run_dir: Path, cfg: Any, command: str) -> None:
    info = {"preset": command, "contexts": _contexts_info(cfg), "steps": cfg.train.max_steps}
    (Path(run_dir) / "generator" / INFO_FILE).write_text(json.dumps(info, indent=2))


def toy_contexts(weights: Path, identities: int) -> Any:
    """The first ``identities`` ID vectors the toy generator was trained on (toy presets
    condition on one random unit vector per toyfaces identity)."""
    from facelab.core.diffusion.identities import random_identities

    info = read_info(weights)
    c = info.get("contexts") or {}
    if c.get("kind") != "identity":
        raise FormatError(
            f"{weights}: expected toy weights trained on 'identity' contexts, got {c.get('kind')!r}"
        )
    if identities > int(c["count"]):
        raise FormatError(
            f"identities: the toy generator knows {c['count']} identities, {identities} asked"
        )
    return random_identities(int(c["count"]), int(c["dim"]), int(c["seed"]))[:identities]


def load_toy_sampler(weights: Path, num_steps: int) -> Any:
    """Core's ``IdentitySampler`` of an exported toy generator, in float32. The toy generators
    work in pixel space, so each step's predicted x0 is clipped to [-1, 1] (``clip_sample``;
    the base's toy generator: 26.6 % identification with it, 7.3 % without, chance 4.2 %)."""
    from facelab.core.diffusion.train import load_generator

    sampler = load_generator(weights, num_steps=num_steps, clip_sample=True)
    sampler.denoiser.float()
    return sampler


def _write(
    generate: Any,
    sampler: Any,
    weights: Path,
    out_dir: Path,
    label: str,
    *,
    identities: int,
    images_per_identity: int,
    seed: int,
    image_size: int,
    progress: bool,
) -> Path:
    """One dataset from ``sampler`` on the toy generator's own contexts through ``generate``
    (core's ``generate_dataset`` or a method's wrapper of it, same arguments)."""
    generate(
        sampler,
        toy_contexts(weights, identities),
        out_dir,
        images_per_identity=images_per_identity,
        batch_size=64,
        seed=seed,
        image_size=image_size,
        progress=progress,
        run_info={"generator": label, "weights": read_info(weights)},
    )
    return Path(out_dir)


def base_write(
    weights: Path,
    out_dir: Path,
    *,
    num_steps: int,
    label: str = "synthesis base (core)",
    **kwargs: Any,
) -> Path:
    """Core's ``generate_dataset`` with the toy generator's own contexts."""
    from facelab.core.diffusion.generate import generate_dataset

    sampler = load_toy_sampler(weights, num_steps)
    return _write(generate_dataset, sampler, weights, out_dir, label, **kwargs)


# --------------------------------------------------------------------------------------------
# UIFace


def uiface_train(out_dir: Path, *, steps: int | None, seed: int, progress: bool) -> Path:
    """``facelab uiface train --preset toy`` into ``out_dir``."""
    from facelab.uiface import train, uiface_presets

    cfg = _train_config(uiface_presets()["toy"], out_dir, steps, seed, progress)
    res = train(cfg)
    _write_train_info(res.output_dir, cfg, "facelab uiface train --preset toy")
    return res.output_dir / "generator"


def uiface_write(weights: Path, out_dir: Path, *, num_steps: int, **kwargs: Any) -> Path:
    """UIFace's two-stage sampling (its ``toy`` sampling preset) through ``uiface.generate``."""
    from facelab.uiface import UIFaceSampler, generate, sampling_presets

    sampler = UIFaceSampler(load_toy_sampler(weights, num_steps), sampling_presets()["toy"])
    return _write(generate, sampler, weights, out_dir, "UIFace", **kwargs)


# --------------------------------------------------------------------------------------------
# SteerFace (a training-time regularizer: its generator samples like the base's)


def steerface_train(out_dir: Path, *, steps: int | None, seed: int, progress: bool) -> Path:
    """``facelab steerface train --preset toy`` (the base's toy recipe + SteerFace's
    regularizer) into ``out_dir``."""
    import dataclasses

    from facelab.steerface.train import steer_presets, train

    cfg = steer_presets()["toy"]
    synth = _train_config(cfg.synth, out_dir, steps, seed, progress)
    res = train(dataclasses.replace(cfg, synth=synth))
    _write_train_info(res.output_dir, synth, "facelab steerface train --preset toy")
    return res.output_dir / "generator"


def steerface_write(weights: Path, out_dir: Path, **kwargs: Any) -> Path:
    """SteerFace steers ID vectors during training only: sampling is the base's."""
    return base_write(weights, out_dir, label="SteerFace", **kwargs)


GENERATORS: dict[str, GeneratorSpec] = {
    "base": GeneratorSpec(
        "base", "synthesis base (core)", "facelab.core.diffusion", base_train, base_write
    ),
    "uiface": GeneratorSpec("uiface", "UIFace", "facelab.uiface", uiface_train, uiface_write),
    "steerface": GeneratorSpec(
        "steerface", "SteerFace", "facelab.steerface", steerface_train, steerface_write
    ),
    "morphface": GeneratorSpec("morphface", "MorphFace", "facelab.morphface"),
}


def get_generator(name: str) -> GeneratorSpec:
    try:
        return GENERATORS[name]
    except KeyError:
        raise UnknownNameError(f"unknown generator {name!r}; valid: {sorted(GENERATORS)}") from None


# --------------------------------------------------------------------------------------------
# the shipped weights


def repository_weights() -> Path | None:
    """``benchmarks/toy-weights`` of the source checkout this package runs from (editable
    installs: ``make demo`` from a clone), or None for an installed wheel."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if parent.name == "benchmarks" and (parent / "pyproject.toml").is_file():
            return parent / "toy-weights"
    return None


def weights_root(explicit: str | Path | None = None) -> Path | None:
    """Where the toy weights are: ``explicit``, else ``$FACELAB_TOY_WEIGHTS``, else the
    repository's ``benchmarks/toy-weights``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(TOY_WEIGHTS_ENV)
    if env:
        return Path(env)
    return repository_weights()


def shipped_weights(name: str) -> Path | None:
    """The toy weights a generator package ships itself (``facelab.<name>.bench.
    shipped_toy_weights()``, e.g. MorphFace's, which its own claim test uses), or None."""
    try:
        spec = get_generator(name)
    except UnknownNameError:
        return None
    fn = spec.hook("shipped_toy_weights")
    if fn is None:
        return None
    folder = Path(fn())
    return folder if (folder / INFO_FILE).is_file() else None


def weights_dir(name: str, root: Path | None) -> Path:
    """The exported weights folder of generator ``name`` (checked): ``root/name``, else the
    weights its package ships (:func:`shipped_weights`), else MissingWeightsError."""
    if root is None or not (Path(root) / name / INFO_FILE).is_file():
        shipped = shipped_weights(name)
        if shipped is not None:
            read_info(shipped)
            return shipped
    if root is None:
        raise MissingWeightsError(
            f"{name}: no toy-weights folder (pass --toy-weights DIR or set {TOY_WEIGHTS_ENV})"
        )
    folder = Path(root) / name
    if not (folder / INFO_FILE).is_file():
        raise MissingWeightsError(
            f"{name}: no toy weights in {folder} (make them with: uv run python "
            f"scripts/make_toy_weights.py --generators {name})"
        )
    read_info(folder)
    return folder


def read_info(folder: Path) -> dict[str, Any]:
    path = Path(folder) / INFO_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not a readable toy-weights description ({exc})") from None
    if not isinstance(info, dict):
        raise FormatError(f"{path}: expected a JSON object, got {type(info).__name__}")
    return info


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_fp16(generator_dir: Path, dest: Path, info: dict[str, Any]) -> Path:
    """Copy a trained generator folder to ``dest`` with every floating-point tensor of its
        ``*.safetensors`` files stored as float16 (half the size; loaders cast back to float32; the
    files' metadata kept),
        and write ``toy_weights.json`` (``info`` + file hashes). Atomic: a partial export is never
        left under ``dest``."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    generator_dir, dest = Path(generator_dir), Path(dest)
    if not (generator_dir / "generator.json").is_file():
        raise FormatError(f"{generator_dir}: not a generator folder (no generator.json)")
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(generator_dir, tmp, ignore=shutil.ignore_patterns(INFO_FILE))
    files = {}
    for path in sorted(tmp.rglob("*.safetensors")):
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata()  # kept (file formats are recorded there)
        half = {
            k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous()
            for k, v in tensors.items()
        }
        save_file(half, str(path), metadata=metadata)
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        files[str(path.relative_to(tmp))] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    trained = {}
    src_info = generator_dir / INFO_FILE
    if src_info.is_file():
        trained = json.loads(src_info.read_text())
    doc = {
        "format": INFO_FORMAT,
        "version": 1,
        "dtype": "float16",
        **trained,
        **info,
        "files": files,
    }
    (tmp / INFO_FILE).write_text(json.dumps(doc, indent=2))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.replace(dest)
    return dest


def make_toy_weights(
    name: str,
    root: Path,
    workdir: Path,
    *,
    steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
    command: str = "",
    dest: Path | None = None,
    label: str | None = None,
    train_options: dict[str, Any] | None = None,
) -> Path:
    """Train generator ``name``'s toy preset in ``workdir`` (resumable) and export its float16
    weights to ``dest`` (default ``root/name``). ``train_options`` go to the generator's
    trainer as keywords (MorphFace: ``preset``); ``label`` replaces the generator's label in
    the exported description."""
    spec = get_generator(name)
    if not spec.is_installed():
        raise MissingWeightsError(f"{name}: package {spec.module} is not installed")
    train = spec.trainer()
    if train is None:
        raise MissingWeightsError(
            f"{name}: {spec.module}.bench has no train_toy_generator() and benchmarks has no "
            "adapter for it"
        )
    t0, c0 = time.perf_counter(), time.process_time()
    generator = train(
        Path(workdir) / name, steps=steps, seed=seed, progress=progress, **(train_options or {})
    )
    info = {
        "generator": name,
        "label": label or spec.label,
        "seed": seed,
        "train_wall_s": round(time.perf_counter() - t0, 1),
        "train_cpu_s_this_process": round(time.process_time() - c0, 1),
        "command": command,
    }
    return export_fp16(Path(generator), Path(dest) if dest else Path(root) / name, info)
