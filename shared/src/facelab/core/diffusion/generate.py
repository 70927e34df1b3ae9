"""Write whole synthetic datasets: C identities x K images, resumable, on any number of GPUs.

Layout of ``out_dir`` (``format="folders"``, ready for ``facelab train --data.source out_dir``)::

    manifest.json          the run: model hash, contexts hash, seed, C, K, sampler settings ...
    contexts.safetensors   the C ID vectors and the identity names
    000000/0000.png ...    one folder per identity (PNG, ``image_size`` px), plus meta.json
                           (context index, per-image seeds, whatever the sampler reports)

``format="recordio"`` writes the identity folders into ``out_dir/.staging`` and packs them into
``train.rec`` / ``train.idx`` / ``property`` (insightface layout) at the end.

Resume: a rerun with the same run settings skips every finished identity folder (never rewritten);
an identity whose images were being written when the run stopped lives in a hidden
``.partial-<name>`` folder, which is deleted and redone whole. A finished folder appears by one
atomic rename after its images and meta.json are on disk. An output folder holding another run's
manifest is refused. Image ``j`` of identity ``c`` starts from noise seeded by ``(seed, c, j)``, so
a resumed, re-batched or multi-process run writes the same images as an uninterrupted one, up to
8-bit rounding: an image sampled in a batch of another size can differ in the last float bits
(CPU and GPU kernels are chosen by batch size), which moves an occasional value by one level.

Several processes (``accelerate launch``) split the identities with Accelerate's
``split_between_processes``; the main process writes the manifest and shows a progress bar with
images/s and the ETA.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from facelab.core.diffusion.sampling import IdentitySampler, check_contexts, image_seed
from facelab.core.errors import FormatError, KeyMismatchError, RangeError, UnknownNameError

MANIFEST = "manifest.json"
CONTEXTS = "contexts.safetensors"
META = "meta.json"
PARTIAL = ".partial-"
STAGING = ".staging"
FORMAT_VERSION = 1

#: ``sample_fn(sampler, contexts (B, D), seeds [B]) -> (images (B, 3, H, W) in [-1, 1],
#: per-image metadata list of B dicts or None)``: how a method samples (default: ``sampler.sample``)
SampleFn = Callable[
    [IdentitySampler, torch.Tensor, list[int]], tuple[torch.Tensor, list[dict] | None]
]


@dataclass
class GenerationResult:
    out_dir: Path
    identities_written: int
    identities_skipped: int
    images_written: int
    seconds: float
    manifest: dict[str, Any]

    @property
    def images_per_second(self) -> float:
        return self.images_written / self.seconds if self.seconds > 0 else 0.0


def tensor_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over sorted names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state dict (what the manifest records as the model hash)."""
    return tensor_fingerprint(model.state_dict())


def _default_sample_fn(sample_kwargs: Mapping[str, Any]) -> SampleFn:
    def fn(sampler: IdentitySampler, contexts: torch.Tensor, seeds: list[int]):
        out = sampler.sample(contexts, seeds=seeds, check=False, **sample_kwargs)
        return out.images, None

    return fn


def _to_uint8(images: torch.Tensor, size: int) -> np.ndarray:
    x = images.float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return u8.permute(0, 2, 3, 1).cpu().numpy()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _run_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [
        k
        for k in keys
        if json.dumps(old.get(k), sort_keys=True, default=str)
        != json.dumps(new.get(k), sort_keys=True, default=str)
    ]


def generate_dataset(
    sampler: IdentitySampler,
    contexts: torch.Tensor,
    out_dir: str | os.PathLike,
    *,
    images_per_identity: int = 50,
    batch_size: int = 64,
    seed: int = 0,
    image_size: int = 112,
    format: Literal["folders", "recordio"] = "folders",
    names: Sequence[str] | None = None,
    sample_kwargs: Mapping[str, Any] | None = None,
    sample_fn: SampleFn | None = None,
    run_info: Mapping[str, Any] | None = None,
    accelerator: Any = None,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> GenerationResult:
    """Generate ``len(contexts)`` identities x ``images_per_identity`` images into ``out_dir``.

    ``contexts``: (C, D) unit ID vectors; ``names``: identity folder names (default ``000000``
    ...); ``sample_kwargs``: passed to ``sampler.sample`` (guidance scale, callbacks,
    controller ...) unless a method gives its own ``sample_fn``; ``run_info``: extra settings of
    the method that must match on resume (they go into the manifest); ``accelerator``: an
    ``accelerate.Accelerator`` or ``PartialState`` to split identities across processes;
    ``on_batch(k)`` is called after batch ``k`` is written (progress hooks, tests).
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    width = getattr(sampler.denoiser, "context_width", None)
    if width is None:
        width = contexts.shape[1] if contexts.dim() == 2 else -1
    ctx = check_contexts(contexts, width).cpu()
    c_count = ctx.shape[0]
    for name, v, lo in (
        ("images_per_identity", images_per_identity, 1),
        ("batch_size", batch_size, 1),
        ("image_size", image_size, 8),
    ):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise RangeError(f"{name}: expected an int >= {lo}, got {v!r}")
    if format not in ("folders", "recordio"):
        raise UnknownNameError(f"format: expected 'folders' or 'recordio', got {format!r}")
    ids = [f"{c:06d}" for c in range(c_count)] if names is None else [str(n) for n in names]
    if (
        len(ids) != c_count
        or len(set(ids)) != c_count
        or any(not n or n.startswith(".") or "/" in n or "\\" in n for n in ids)
    ):
        raise FormatError(
            f"names: expected {c_count} distinct folder names without '/' or a leading '.'"
        )
    run = {
        "format_version": FORMAT_VERSION,
        "model_sha256": model_fingerprint(sampler.denoiser),
        "contexts_sha256": tensor_fingerprint({"contexts": ctx}),
        "num_identities": c_count,
        "images_per_identity": images_per_identity,
        "seed": int(seed),
        "image_size": image_size,
        "format": format,
        "sampler": sampler.settings(),
        "method": json.loads(json.dumps(dict(run_info or {}), default=str)),
        "noise_seed_rule": "image j of identity c: facelab.core.diffusion.sampling.image_seed(seed, c, j)",
    }
    state = _process_state(accelerator)
    root = out / STAGING if format == "recordio" else out
    if state.is_main_process:
        _prepare_out(out, run, ctx, ids)
    state.wait_for_everyone()

    if format == "recordio" and (out / "train.rec").is_file() and not root.exists():
        done = set(ids)  # packed by an earlier run
    else:
        done = {n for n in ids if (root / n).is_dir()}
    todo = [c for c in range(c_count) if ids[c] not in done]
    skipped = c_count - len(todo)
    with state.split_between_processes(todo) as mine:
        mine = list(mine)
    for c in mine:  # an identity interrupted mid-way is redone whole
        partial = root / f"{PARTIAL}{ids[c]}"
        if partial.exists():
            shutil.rmtree(partial)
    fn = sample_fn or _default_sample_fn(dict(sample_kwargs or {}))
    jobs = [(c, j) for c in mine for j in range(images_per_identity)]
    total = len(jobs)
    pbar = _progress(total, progress and state.is_main_process, state.num_processes)
    meta: dict[int, list[dict]] = {}
    written = 0
    finished = 0
    try:
        for k, start in enumerate(range(0, total, batch_size)):
            batch = jobs[start : start + batch_size]
            cidx = torch.tensor([c for c, _ in batch])
            seeds = [image_seed(seed, c, j) for c, j in batch]
            images, extra = fn(sampler, ctx[cidx], seeds)
            if images.shape[0] != len(batch):
                raise RangeError(f"sample_fn: expected {len(batch)} images, got {images.shape[0]}")
            u8 = _to_uint8(images, image_size)
            from PIL import Image

            for pos, (c, j) in enumerate(batch):
                partial = root / f"{PARTIAL}{ids[c]}"
                partial.mkdir(parents=True, exist_ok=True)
                Image.fromarray(u8[pos]).save(partial / f"{j:04d}.png")
                record = {"image": j, "seed": seeds[pos]}
                if extra is not None:
                    record.update(extra[pos])
                meta.setdefault(c, []).append(record)
                if j == images_per_identity - 1:
                    _finish_identity(root, ids[c], c, meta.pop(c))
                    finished += 1
            written += len(batch)
            if pbar is not None:
                pbar.update(len(batch) * state.num_processes)
                el = time.perf_counter() - t0
                pbar.set_postfix(
                    {"img/s": f"{written * state.num_processes / max(el, 1e-9):.1f}"}, refresh=False
                )
            if on_batch is not None:
                on_batch(k)
    finally:
        if pbar is not None:
            pbar.close()
    state.wait_for_everyone()
    if format == "recordio" and state.is_main_process:
        _pack(out, root, ids)
    state.wait_for_everyone()
    manifest = json.loads((out / MANIFEST).read_text())
    return GenerationResult(out, finished, skipped, written, time.perf_counter() - t0, manifest)


def _finish_identity(root: Path, name: str, c: int, records: list[dict]) -> None:
    partial = root / f"{PARTIAL}{name}"
    records = sorted(records, key=lambda r: r["image"])
    payload = {"identity": name, "context_index": c, "images": records}
    with open(partial / META, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    for p in partial.iterdir():
        if p.suffix == ".png":
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(partial)
    os.replace(partial, root / name)
    _fsync_dir(root)


def _prepare_out(out: Path, run: dict[str, Any], ctx: torch.Tensor, ids: list[str]) -> None:
    from safetensors.torch import save_file

    man = out / MANIFEST
    if man.is_file():
        try:
            old = json.loads(man.read_text())
        except json.JSONDecodeError as exc:
            raise FormatError(f"{man}: not valid JSON ({exc}); not overwriting it") from None
        diff = _run_diff(old.get("run", {}), run)
        if diff:
            raise KeyMismatchError(
                f"{out}: holds the manifest of a different run (differs in {diff}); use another "
                "output folder (nothing was changed)"
            )
        return
    if out.exists() and any(p for p in out.iterdir() if not p.name.startswith(".")):
        raise KeyMismatchError(
            f"{out}: exists, is not empty and has no {MANIFEST}; refusing to write a dataset into it"
        )
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{CONTEXTS}.tmp"
    save_file({"contexts": ctx.contiguous()}, str(tmp), metadata={"names": json.dumps(ids)})
    os.replace(tmp, out / CONTEXTS)
    _write_json_atomic(
        man,
        {
            "run": run,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "contexts_file": CONTEXTS,
            "source": "synthetic",  # every image is generated (read by FRCSyn's checker)
        },
    )


def _pack(out: Path, staging: Path, ids: list[str]) -> None:
    from facelab.core.data.recordio import pack_identity_folders

    if not staging.exists():
        return  # packed by an earlier run
    pack_identity_folders(staging, out, overwrite=True)
    shutil.rmtree(staging, ignore_errors=True)


class _Single:
    is_main_process = True
    num_processes = 1
    process_index = 0

    def wait_for_everyone(self) -> None:
        pass

    def split_between_processes(self, items):
        from contextlib import nullcontext

        return nullcontext(items)


def _process_state(accelerator: Any):
    if accelerator is not None:
        return accelerator
    try:
        from accelerate import PartialState

        st = PartialState()
        return st if st.num_processes > 1 else _Single()
    except Exception:  # pragma: no cover - accelerate always importable with core
        return _Single()


def _progress(total: int, on: bool, world: int):
    if not on:
        return None
    from facelab.core.progress import progress_bar

    return progress_bar(total=total * world, desc="generate", unit="img", dynamic_ncols=True)
