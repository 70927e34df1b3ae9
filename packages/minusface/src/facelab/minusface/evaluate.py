"""MinusFace's privacy evaluation with core's attack harness.

The adversary sees what leaves the client and owns paired data (faces of its own people and
what the client makes of them). We train core's :class:`~facelab.core.privacy.InversionAttack`
from

* ``X_p``: the protected images (random per-sample channel shuffling, the method), and
* ``X_p without shuffling``: ``d(r)``, the decoded residue as it is (the ablation),

back to the face, with the same decoder, seed and budget, and score both (and the mean-image
no-information baseline) on held-out identities: SSIM/PSNR, identity leakage under an
independent recognizer and, with labels, the attack success rate at a FAR. We also report how
close the protected images themselves are to the faces (SSIM/PSNR of ``X_p`` vs ``X``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from facelab.core.errors import FacelabTypeError, RangeError, ShapeError
from facelab.minusface.client import protect_uint8
from facelab.minusface.model import MinusFaceGenerator, check_images
from facelab.minusface.protocol import to_model_input

SHUFFLED = "X_p (shuffled)"
UNSHUFFLED = "X_p without shuffling"


@torch.no_grad()
def observations(
    generator: MinusFaceGenerator,
    images: torch.Tensor,
    *,
    n_duplicates: int = 1,
    shuffle: bool = True,
    seed: int | None = 0,
    batch_size: int = 64,
) -> torch.Tensor:
    """What the server receives for ``images``, as float ``(B, 3n, H, W)`` in [-1, 1].

    ``seed`` seeds the permutations (None: the OS CSPRNG, as a deployed client).
    """
    if not isinstance(generator, MinusFaceGenerator):
        raise FacelabTypeError(
            f"generator: expected a MinusFaceGenerator, got {type(generator).__name__}"
        )
    x = generator.check_images(images)
    device = next(generator.parameters()).device
    rng = None if seed is None else torch.Generator(device=device).manual_seed(int(seed))
    was_training = generator.training
    generator.eval()
    try:
        out = [
            to_model_input(
                protect_uint8(generator, chunk.to(device), n_duplicates, rng=rng, shuffle=shuffle)
            ).cpu()
            for chunk in x.split(batch_size)
        ]
    finally:
        generator.train(was_training)
    return torch.cat(out)


@dataclass
class PrivacyReport:
    """Rows of :func:`privacy_eval` (``compare_attacks`` rows; ``attack`` names the observation)
    plus the similarity of the protected images themselves to the faces."""

    rows: list[dict[str, Any]]
    protected_similarity: dict[str, dict[str, float]] = field(default_factory=dict)

    def row(self, attack: str) -> dict[str, Any]:
        for r in self.rows:
            if r["attack"] == attack:
                return r
        raise KeyError(f"no attack row {attack!r}; rows: {[r['attack'] for r in self.rows]}")

    def table(self) -> str:
        cols = ("attack", "ssim", "psnr", "identity_leakage", "success_rate")
        lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
        for r in self.rows:
            cells = [str(r["attack"])]
            for c in cols[1:]:
                v = r.get(c, float("nan"))
                cells.append("n/a" if v != v else f"{v:.3f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("protected image vs face (no attack):")
        for name, m in self.protected_similarity.items():
            lines.append(f"  {name}: SSIM {m['ssim']:.3f}, PSNR {m['psnr']:.2f} dB")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "protected_similarity": self.protected_similarity}


def _first_duplicate(obs: torch.Tensor) -> torch.Tensor:
    return obs[:, :3]


def privacy_eval(
    generator: MinusFaceGenerator,
    train_images: torch.Tensor,
    test_images: torch.Tensor,
    *,
    n_duplicates: int = 1,
    attack_config: Any = None,
    steps: int = 1000,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    recognizer: nn.Module | None = None,
    test_labels: torch.Tensor | Sequence[int] | None = None,
    far: float | None = None,
    include_unshuffled: bool = True,
    grid_path: str | Path | None = None,
    device: str | torch.device | None = None,
) -> PrivacyReport:
    """Inversion attacks from ``X_p`` with and without shuffling (see the module docstring).

    ``train_images`` are the adversary's own faces, ``test_images`` the victims' (held out);
    both RGB in [-1, 1] at the generator's image size. ``recognizer`` (independent of MinusFace,
    e.g. an RGB ArcFace) measures identity leakage; with ``test_labels`` and ``far`` also the
    attack success rate.
    """
    from facelab.core.privacy import AttackConfig, compare_attacks, psnr, ssim

    train = check_images(train_images, "train_images", generator.image_size)
    test = check_images(test_images, "test_images", generator.image_size)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise RangeError(f"steps: expected an int >= 1, got {steps!r}")
    if far is not None and (recognizer is None or test_labels is None):
        raise ShapeError("far: the attack success rate needs a recognizer and test_labels")
    config = attack_config if attack_config is not None else AttackConfig()
    obs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    # distinct permutation streams for the adversary's data and the victims'
    obs[SHUFFLED] = (
        observations(generator, train, n_duplicates=n_duplicates, seed=2 * seed + 1),
        observations(generator, test, n_duplicates=n_duplicates, seed=2 * seed + 2),
    )
    if include_unshuffled:
        obs[UNSHUFFLED] = (
            observations(generator, train, shuffle=False),
            observations(generator, test, shuffle=False),
        )
    similarity = {}
    for name, (_, te) in obs.items():
        view = _first_duplicate(te)
        similarity[name] = {
            "ssim": float(ssim(view, test).mean()),
            "psnr": float(psnr(view, test).mean()),
        }
    rows = compare_attacks(
        obs,
        train,
        test,
        config=config,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        recognizer=recognizer,
        test_labels=test_labels if recognizer is not None else None,
        far=far,
        grid_path=grid_path,
    )
    return PrivacyReport(rows, similarity)
