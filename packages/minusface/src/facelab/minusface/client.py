"""The two sides of a MinusFace deployment.

* :class:`MinusFaceClient` holds the frozen generator and turns faces into protected images:
  ``X_p = d(shuffle(e(X) - g(e(X))))``, one fresh random channel permutation per face and
  duplicate (the OS CSPRNG unless a seed is asked for), decoded to 8-bit images.
* :class:`MinusFaceServer` holds the stage-2 recognizer and embeds protected images.
* :class:`MinusFacePipeline` chains both as one ``nn.Module`` (faces in [-1, 1] -> embeddings)
  for evaluation with core's verification protocol and for throughput measurements.

The server never sees the face, the residue or the permutations; everything it gets is a
``uint8`` image a PNG file can hold, and the recognizer is trained on exactly that (the
stage-2 recipe quantizes the same way).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from facelab.core.errors import FacelabTypeError, RangeError, ShapeError, describe
from facelab.minusface.model import MinusFaceGenerator
from facelab.minusface.protocol import ProtectedImages, quantize, to_model_input
from facelab.minusface.shuffle import shuffle_channels


def _check_generator(generator: object) -> MinusFaceGenerator:
    if not isinstance(generator, MinusFaceGenerator):
        raise FacelabTypeError(
            f"generator: expected a MinusFaceGenerator, got {describe(generator)}"
        )
    return generator


def protect_uint8(
    generator: MinusFaceGenerator,
    images: torch.Tensor,
    n_duplicates: int = 1,
    *,
    rng: torch.Generator | None = None,
    shuffle: bool = True,
) -> torch.Tensor:
    """``X_p`` as ``uint8 (B, 3n, H, W)``: an inner building block without input checks.

    ``shuffle=False`` decodes the residue as it is (the no-shuffle ablation; every duplicate is
    then the same image). The training recipe, the pipeline and the client all go through
    here, so the recognizer trains on exactly what a stored PNG holds.
    """
    r = generator.residue(images)
    b, c, h, w = r.shape
    if shuffle:
        shuffled, _ = shuffle_channels(r, n_duplicates, generator=rng)
    else:
        shuffled = r.unsqueeze(1).expand(b, n_duplicates, c, h, w)
    xp = generator.decode(shuffled.reshape(b * n_duplicates, c, h, w))
    return quantize(xp).reshape(b, n_duplicates * 3, h, w)


def _device_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FacelabTypeError(f"seed: expected None or a non-negative int, got {seed!r}")
    return torch.Generator(device=device).manual_seed(seed)


def _model_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


class MinusFaceClient:
    """Protects faces with a trained (frozen) generator.

    Args:
        generator: the stage-1 :class:`MinusFaceGenerator`.
        n_duplicates: independently shuffled copies per face (the protected image has 3n
            channels); must match the server's recognizer.
        seed: None (default) draws permutations from the OS CSPRNG; an int makes them
            reproducible (for experiments only: a deployment must not fix it).
        shuffle: False skips the channel shuffling (the insecure ablation, for attacks).
        batch_size: faces per forward pass.
    """

    def __init__(
        self,
        generator: MinusFaceGenerator,
        n_duplicates: int = 1,
        *,
        seed: int | None = None,
        shuffle: bool = True,
        batch_size: int = 64,
    ) -> None:
        self.generator = _check_generator(generator).eval()
        if isinstance(n_duplicates, bool) or not isinstance(n_duplicates, int) or n_duplicates < 1:
            raise RangeError(f"n_duplicates: expected an int >= 1, got {n_duplicates!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise RangeError(f"batch_size: expected an int >= 1, got {batch_size!r}")
        self.n_duplicates = n_duplicates
        self.shuffle = bool(shuffle)
        self.batch_size = batch_size
        self._rng = _device_generator(seed, _model_device(self.generator))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **kwargs: Any) -> MinusFaceClient:
        return cls(MinusFaceGenerator.from_pretrained(directory), **kwargs)

    def __repr__(self) -> str:
        return (
            f"MinusFaceClient(generator={self.generator.config}, n_duplicates="
            f"{self.n_duplicates}, shuffle={self.shuffle}, seeded={self._rng is not None})"
        )

    @torch.no_grad()
    def protect(self, images: torch.Tensor) -> torch.Tensor:
        """Faces ``(B, 3, H, W)`` in [-1, 1] -> protected images, ``uint8 (B, 3n, H, W)``."""
        x = self.generator.check_images(images)
        device = _model_device(self.generator)
        out = []
        for chunk in x.split(self.batch_size):
            xp = protect_uint8(
                self.generator,
                chunk.to(device, torch.float32),
                self.n_duplicates,
                rng=self._rng,
                shuffle=self.shuffle,
            )
            out.append(xp.cpu())
        return torch.cat(out)

    def protect_payload(self, images: torch.Tensor) -> ProtectedImages:
        """:meth:`protect` wrapped in the transferable :class:`ProtectedImages`."""
        return ProtectedImages(self.protect(images), self.n_duplicates)


class MinusFaceServer:
    """Embeds protected images with the stage-2 recognizer (an IResNet with a 3n-channel stem)."""

    def __init__(self, recognizer: nn.Module) -> None:
        if not isinstance(recognizer, nn.Module):
            raise FacelabTypeError(f"recognizer: expected an nn.Module, got {describe(recognizer)}")
        channels = getattr(recognizer, "in_channels", None)
        if not isinstance(channels, int) or channels % 3:
            raise ShapeError(
                f"recognizer: expected a backbone with a 3n-channel stem (in_channels), got "
                f"in_channels={channels!r}"
            )
        self.recognizer = recognizer.eval()
        self.n_duplicates = channels // 3

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> MinusFaceServer:
        from facelab.core.hub import from_pretrained

        return cls(from_pretrained(directory))

    def __repr__(self) -> str:
        return f"MinusFaceServer(n_duplicates={self.n_duplicates}, recognizer={type(self.recognizer).__name__})"

    def _check(self, protected: object) -> ProtectedImages:
        if isinstance(protected, torch.Tensor):
            if protected.is_floating_point():
                raise FacelabTypeError(
                    "protected: expected uint8 protected images (what the client sends), got a "
                    f"float tensor of shape {tuple(protected.shape)}; wrap [0, 1] floats with "
                    "ProtectedImages.from_float"
                )
            protected = ProtectedImages(protected, self.n_duplicates)
        if not isinstance(protected, ProtectedImages):
            raise FacelabTypeError(
                f"protected: expected ProtectedImages or a uint8 tensor, got {describe(protected)}"
            )
        if protected.n_duplicates != self.n_duplicates:
            raise ShapeError(
                f"protected: the recognizer expects n_duplicates={self.n_duplicates} "
                f"({3 * self.n_duplicates} channels), got n_duplicates={protected.n_duplicates}"
            )
        size = getattr(self.recognizer, "input_size", None)
        if size is not None and tuple(protected.image_size) != tuple(size):
            raise ShapeError(
                f"protected: the recognizer expects {tuple(size)} images, got "
                f"{protected.image_size}"
            )
        return protected

    @torch.no_grad()
    def embed(
        self,
        protected: ProtectedImages | torch.Tensor,
        *,
        batch_size: int = 256,
        normalize: bool = True,
    ) -> torch.Tensor:
        """Protected images -> embeddings ``(B, D)`` float32 on CPU (L2-normalized by default)."""
        p = self._check(protected)
        device = _model_device(self.recognizer)
        out = [
            self.recognizer(to_model_input(chunk.to(device))).float().cpu()
            for chunk in p.images.split(batch_size)
        ]
        emb = torch.cat(out)
        if normalize:
            emb = nn.functional.normalize(emb, dim=1)
        return emb


class MinusFacePipeline(nn.Module):
    """Client and server in one module: faces ``(B, 3, H, W)`` in [-1, 1] -> embeddings.

    Each call protects with fresh permutations (from ``seed`` when given, so a whole evaluation
    is reproducible; else from the OS CSPRNG) and quantizes to 8 bits, exactly as the client
    does, then runs the recognizer. Used by the evaluation (with core's flip test: the mirrored
    face is protected on its own) and the throughput benchmark.
    """

    def __init__(
        self,
        generator: MinusFaceGenerator,
        recognizer: nn.Module,
        *,
        seed: int | None = None,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        self.generator = _check_generator(generator)
        self.recognizer = recognizer
        channels = getattr(recognizer, "in_channels", None)
        if not isinstance(channels, int) or channels % 3:
            raise ShapeError(
                f"recognizer: expected a 3n-channel stem, got in_channels={channels!r}"
            )
        self.n_duplicates = channels // 3
        self.shuffle = bool(shuffle)
        self.seed = seed
        self._rng: torch.Generator | None = None
        _device_generator(seed, torch.device("cpu"))  # validates the seed

    def reseed(self) -> None:
        """Restart the permutation stream from ``seed``."""
        self._rng = None

    def _generator_rng(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        if self._rng is None or self._rng.device != device:
            self._rng = _device_generator(self.seed, device)
        return self._rng

    def protect(self, images: torch.Tensor) -> torch.Tensor:
        """``uint8 (B, 3n, H, W)`` protected images (no input checks)."""
        with torch.no_grad():
            return protect_uint8(
                self.generator,
                images,
                self.n_duplicates,
                rng=self._generator_rng(images.device),
                shuffle=self.shuffle,
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.recognizer(to_model_input(self.protect(images)))
