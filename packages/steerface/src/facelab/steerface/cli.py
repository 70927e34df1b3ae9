"""``facelab steerface train|sample|eval``: train an ID-conditioned generator with SteerFace,
write a synthetic dataset from it, measure the dataset.

``sample`` and ``eval`` are the base's (``facelab synth sample|eval``): SteerFace changes only
training (sampling sees the unperturbed ID vectors)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: facelab steerface {train,sample,eval} [flags]

  train   train the generator with SteerFace (--preset toy|paper; every field is a flag:
          --steer.mode adaptive|fixed|uniform|off, --steer.theta-mean 30, --synth.train.max-steps ...)
  sample  write C identities x K images from a trained generator (as `facelab synth sample`)
  eval    identity consistency, diversity and FR accuracy of a generated dataset (as `facelab
          synth eval`)

run `facelab steerface <command> --help` for the flags of one command."""


def train_command(argv: Sequence[str]):
    from facelab.core.recipe import parse_with_presets
    from facelab.steerface.strength import deferred_checks
    from facelab.steerface.train import SteerTrainConfig, steer_presets, train

    with deferred_checks():  # checked below: a bad value ends with one error line
        cfg = parse_with_presets(
            SteerTrainConfig,
            steer_presets(),
            argv,
            "facelab steerface train",
            "Train the ID-conditioned generator with SteerFace's steering regularizer.",
        )
    cfg.steer.validate()
    res = train(cfg)
    print(
        f"generator saved to {res.output_dir / 'generator'} ({res.wall_time:.0f} s, "
        f"{res.train.step} steps)"
    )
    return res


def main(argv: Sequence[str] = ()) -> int:
    """SteerFace: train a generator with steered ID embeddings, sample, evaluate."""
    import tyro

    from facelab.core.diffusion import INSTALL_HINT, available

    args = list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if not available():
        print(f"facelab steerface: error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    from facelab.core.diffusion.cli import EvalArgs, SampleArgs, eval_command, sample_command

    sub, rest = args[0], args[1:]
    if sub == "train":
        train_command(rest)
    elif sub == "sample":
        sample_command(tyro.cli(SampleArgs, args=rest, prog="facelab steerface sample"))
    elif sub == "eval":
        eval_command(tyro.cli(EvalArgs, args=rest, prog="facelab steerface eval"))
    else:
        print(
            f"facelab steerface: error: unknown command {sub!r}; expected train, sample or eval",
            file=sys.stderr,
        )
        return 2
    return 0
