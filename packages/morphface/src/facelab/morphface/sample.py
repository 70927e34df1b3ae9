"""Sampling MorphFace: identity vectors + 3DMM styles -> images, and whole datasets.

``MorphFaceSampler`` wraps the base's ``IdentitySampler`` (DDIM, one batched forward of every
guidance branch per step) with the style path: render the requested 3DMM parameters, encode them
into style tokens (and, for a denoiser with pixel-aligned input, pass the renderings too), and
guide with separate identity and style scales and the context-blending
schedule (:class:`~facelab.morphface.guidance.MorphFaceGuidance`). ``styles=None`` samples the
same network as an ID-only generator (null style tokens in every branch).

``generate(...)`` writes C identities x K images through the base's resumable
``generate_dataset``; each identity's K styles come from a :class:`~facelab.morphface.prior.
StylePrior` (one new subject per identity: a subject mean from the population, K images around
it), drawn up front from ``seed``, so a resumed or re-batched run renders the same styles. The
style parameters of every image land in its identity's ``meta.json``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from facelab.core.diffusion.sampling import IdentitySampler, SampleOutput
from facelab.core.errors import ShapeError
from facelab.morphface.guidance import MorphFaceGuidance
from facelab.morphface.params import StyleParams


class MorphFaceSampler:
    """DDIM sampling with identity and style conditions.

    Args:
        denoiser: the trained base denoiser; encoder: ``StyleEncoder`` (None: an ID-only
            generator); renderer: ``StyleRenderer`` at the encoder's map size; autoencoder:
            first stage; ``model3dmm``: the 3DMM (kept for the layout of style vectors).
        id_scale, style_scale, blend: default guidance (see ``guidance``).
        Other keywords go to ``IdentitySampler`` (image_size, num_steps, eta, alpha_prev, ...).
    """

    def __init__(
        self,
        denoiser,
        encoder=None,
        renderer=None,
        autoencoder=None,
        *,
        model3dmm=None,
        id_scale: float = 1.0,
        style_scale: float = 1.0,
        blend: float = 0.0,
        **sampler_kwargs: Any,
    ) -> None:
        self.base = IdentitySampler(denoiser, autoencoder, guidance_scale=0.0, **sampler_kwargs)
        self.encoder = encoder
        self.renderer = renderer
        self.model3dmm = model3dmm if model3dmm is not None else getattr(renderer, "model", None)
        self.id_scale, self.style_scale, self.blend = id_scale, style_scale, blend

    @property
    def denoiser(self):
        return self.base.denoiser

    @property
    def device(self) -> torch.device:
        return self.base.device

    def to(self, device=None, dtype=None) -> MorphFaceSampler:
        self.base.denoiser.to(device=device, dtype=dtype)
        self.base.autoencoder.to(device=device)
        if self.encoder is not None:
            self.encoder.to(device=device, dtype=dtype)
        if self.renderer is not None and device is not None:
            self.renderer.to(device)
        return self

    def settings(self) -> dict[str, Any]:
        return self.base.settings() | {
            "id_scale": self.id_scale,
            "style_scale": self.style_scale,
            "blend": self.blend,
            "style": self.encoder is not None,
            "pixel_input": self.pixel_input,
        }

    @property
    def pixel_input(self) -> bool:
        """True when the denoiser also takes the renderings pixel-aligned at its input."""
        from facelab.core.diffusion.hooks import input_channels

        return input_channels(self.base.denoiser) > 0

    @torch.no_grad()
    def style_condition(
        self, styles: StyleParams | None, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(style tokens, null tokens, maps): tokens (B, N, C) on the denoiser's device and
        dtype; maps: the renderings (B, 9, s, s) for a denoiser with pixel-aligned input, else
        None (also for ``styles=None``: no style)."""
        if self.encoder is None:
            raise ShapeError("this generator has no style encoder (an ID-only generator)")
        dev, dt = self.base.device, self.base.dtype
        null = self.encoder.null(batch).to(dev, dt)
        if styles is None:
            return null, null, None
        if len(styles) != batch:
            raise ShapeError(f"styles: expected {batch} rows (one per sample), got {len(styles)}")
        maps = self.renderer.maps(styles).to(dev, dt)
        keep = torch.ones(batch, dtype=torch.bool, device=dev)
        return self.encoder(maps, keep=keep), null, (maps if self.pixel_input else None)

    @torch.no_grad()
    def sample(
        self,
        contexts: torch.Tensor | None,
        styles: StyleParams | None = None,
        *,
        seeds: Sequence[int] | None = None,
        noise: torch.Tensor | None = None,
        batch_size: int | None = None,
        id_scale: float | torch.Tensor | None = None,
        style_scale: float | torch.Tensor | None = None,
        blend: float | None = None,
        output: str = "images",
    ) -> SampleOutput:
        """One image per row of ``contexts`` (unit ID vectors; None: unconditional with
        ``batch_size``) in the style of the matching row of ``styles`` (None: no style)."""
        b = contexts.shape[0] if contexts is not None else int(batch_size or 0)
        ids = self.id_scale if id_scale is None else id_scale
        sts = self.style_scale if style_scale is None else style_scale
        bl = self.blend if blend is None else blend
        if self.encoder is None:
            if styles is not None:
                raise ShapeError("styles given to an ID-only generator (no style encoder)")
            return self.base.sample(
                contexts,
                seeds=seeds,
                noise=noise,
                batch_size=batch_size,
                guidance_scale=ids,
                output=output,  # type: ignore[arg-type]
            )
        style, null, maps = self.style_condition(styles, b)
        guide = MorphFaceGuidance(
            style,
            null,
            style_maps=maps,
            id_scale=ids,
            style_scale=sts if styles is not None else 0.0,
            blend=bl,
            num_train_timesteps=int(self.base.scheduler.config.num_train_timesteps),
        )
        return self.base.sample(
            contexts,
            seeds=seeds,
            noise=noise,
            batch_size=batch_size,
            guidance=guide,
            output=output,  # type: ignore[arg-type]
        )

    def generate(
        self,
        contexts: torch.Tensor,
        out_dir: str | os.PathLike,
        *,
        prior=None,
        images_per_identity: int = 50,
        batch_size: int = 64,
        seed: int = 0,
        image_size: int = 112,
        format: str = "folders",
        progress: bool = True,
        accelerator: Any = None,
        styles: StyleParams | None = None,
    ):
        """Write ``len(contexts)`` identities x ``images_per_identity`` images (see the module
        docstring). ``prior``: a ``StylePrior`` (required when the generator has a style
        encoder), or ``styles``: the C x K images' styles given explicitly (identity-major, e.g.
        a prior's draw with some parameters replaced)."""
        from facelab.core.diffusion.generate import generate_dataset, tensor_fingerprint
        from facelab.core.diffusion.sampling import image_seed

        c_count = contexts.shape[0]
        run_info: dict[str, Any] = {"method": "morphface", **self.settings()}
        lookup: dict[int, int] = {}
        flat_styles: StyleParams | None = None
        if self.encoder is not None:
            if styles is not None:
                if len(styles) != c_count * images_per_identity:
                    raise ShapeError(
                        f"styles: expected {c_count * images_per_identity} rows (identities x "
                        f"images per identity), got {len(styles)}"
                    )
                run_info["styles_sha256"] = tensor_fingerprint({"styles": styles.to_vector()})
            elif prior is None:
                raise ShapeError("generate: a generator with a style encoder needs a StylePrior")
            else:
                styles, _ = prior.sample(c_count, images_per_identity, seed=seed)
                run_info["prior_sha256"] = tensor_fingerprint(prior.tensors())
            flat_styles = styles
            for c in range(c_count):
                for j in range(images_per_identity):
                    lookup[image_seed(seed, c, j)] = c * images_per_identity + j

        def sample_fn(sampler, ctx, seeds):
            if flat_styles is None:
                out = self.sample(ctx, None, seeds=seeds)
                return out.images, None
            rows = torch.tensor([lookup[s] for s in seeds])
            st = flat_styles.index(rows)
            out = self.sample(ctx, st, seeds=seeds)
            vec = st.to_vector()
            meta = [
                {
                    "style": [round(float(v), 6) for v in vec[k].tolist()],
                    "pose": [round(float(v), 6) for v in st.pose[k].tolist()],
                    "expression": [round(float(v), 6) for v in st.expression[k].tolist()],
                }
                for k in range(len(seeds))
            ]
            return out.images, meta

        return generate_dataset(
            self.base,
            contexts,
            out_dir,
            images_per_identity=images_per_identity,
            batch_size=batch_size,
            seed=seed,
            image_size=image_size,
            format=format,  # type: ignore[arg-type]
            sample_fn=sample_fn,
            run_info=run_info,
            accelerator=accelerator,
            progress=progress,
        )


__all__ = ["MorphFaceSampler"]
