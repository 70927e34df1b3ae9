"""How learnable is toyfaces? Train a small CNN for a few minutes on CPU, verify held-out people.

Not a test: a tuning tool for the toyfaces difficulty. It trains a small CNN with a normalized
softmax (CosFace-style margin) on ``--ids`` x ``--per-id`` toy images, then runs LFW-style
verification (10-fold best-threshold accuracy on squared L2 of flip-summed, normalized
embeddings) on pairs of ``--test-ids`` held-out identities (``identity_offset`` far away), and
compares with trivial baselines (raw-pixel cosine and low-frequency DCT cosine).

    uv run python shared/scripts/toyfaces_learnability.py --seconds 180 --size 56
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facelab.core.data.toyfaces import ToyFaces, make_pairs
from facelab.core.freq import DUETFACE_CLIENT, FrequencyCodec, select_channels


def block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.PReLU(cout),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.PReLU(cout),
    )


class SmallNet(nn.Module):
    """Four stride-2 stages, then an insightface-style flatten -> fc -> BN embedding."""

    def __init__(self, size: int, width: int = 24, emb: int = 128) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            block(3, w, 2), block(w, 2 * w, 2), block(2 * w, 4 * w, 2), block(4 * w, 4 * w, 2)
        )
        side = -(-size // 16)  # ceil: stride-2 convs with padding 1
        self.fc = nn.Linear(4 * w * side * side, emb)
        self.bn = nn.BatchNorm1d(emb)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(self.body(x).flatten(1)))


def verification_accuracy(
    dist: np.ndarray, issame: np.ndarray, folds: int = 10
) -> tuple[float, float]:
    """insightface protocol: thresholds 0:4:0.01 on squared L2, unshuffled KFold, best on train."""
    thresholds = np.arange(0, 4, 0.01)
    n = len(dist)
    idx = np.arange(n)
    accs = []
    pred = dist[None, :] < thresholds[:, None]  # (T, n)
    correct = pred == issame[None, :]
    for f in range(folds):
        test = (idx * folds // n) == f
        best = correct[:, ~test].mean(1).argmax()
        accs.append(correct[best, test].mean())
    return float(np.mean(accs)), float(np.std(accs))


def pair_accuracy(feats: torch.Tensor, i1, i2, same) -> tuple[float, float]:
    f = F.normalize(feats.double(), dim=1)
    d = ((f[i1] - f[i2]) ** 2).sum(1).numpy()
    return verification_accuracy(d, same.numpy())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ids", type=int, default=200)
    p.add_argument("--per-id", type=int, default=20)
    p.add_argument("--test-ids", type=int, default=100)
    p.add_argument("--test-per-id", type=int, default=10)
    p.add_argument("--pairs", type=int, default=3000)
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--difficulty", default="default")
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: time only)")
    p.add_argument("--eval-every", type=int, default=0, help="held-out verification every N steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--width", type=int, default=24)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    diff = args.difficulty
    try:
        diff = float(diff)
    except ValueError:
        pass

    t0 = time.perf_counter()
    train = ToyFaces(args.ids, args.per_id, size=args.size, seed=args.seed, difficulty=diff)
    test = ToyFaces(
        args.test_ids,
        args.test_per_id,
        size=args.size,
        seed=args.seed,
        identity_offset=1_000_000,
        difficulty=diff,
    )
    xtr = train.materialize(torch.float32)
    ytr = train.labels
    xte = test.materialize(torch.float32)
    i1, i2, same = make_pairs(test, args.pairs, seed=args.seed)
    t_data = time.perf_counter() - t0
    print(f"data: {len(train)} train / {len(test)} test images at {args.size}px in {t_data:.1f}s")

    # trivial baselines
    raw = pair_accuracy(xte.flatten(1) - xte.flatten(1).mean(0), i1, i2, same)
    codec = FrequencyCodec("compact")
    low = select_channels(
        codec.encode(F.interpolate(xte, size=(args.size // 8 * 8,) * 2)), DUETFACE_CLIENT
    )
    dct = pair_accuracy(low.flatten(1) - low.flatten(1).mean(0), i1, i2, same)
    print(f"baseline raw-pixel cosine: {raw[0] * 100:.1f} +- {raw[1] * 100:.1f}")
    print(f"baseline low-DCT cosine:   {dct[0] * 100:.1f} +- {dct[1] * 100:.1f}")

    net = SmallNet(args.size, args.width)
    weight = nn.Parameter(torch.randn(args.ids, 128) * 0.01)
    opt = torch.optim.AdamW([*net.parameters(), weight], lr=3e-3, weight_decay=5e-4)
    s, m = 30.0, 0.25
    steps, t_start = 0, time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    net.train()

    def evaluate() -> tuple[float, float]:
        net.eval()
        with torch.no_grad():
            emb = torch.cat([net(b) + net(b.flip(-1)) for b in xte.split(256)])
        net.train()
        return pair_accuracy(emb, i1, i2, same)

    while time.perf_counter() - t_start < args.seconds and (not args.steps or steps < args.steps):
        idx = torch.randint(0, len(train), (args.batch,), generator=gen)
        x, y = xtr[idx], ytr[idx]
        flip = torch.rand(args.batch, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        cos = F.normalize(net(x)) @ F.normalize(weight).T
        logits = s * (cos - m * F.one_hot(y, args.ids))
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if steps % 50 == 0:
            acc = (cos.argmax(1) == y).float().mean()
            print(
                f"step {steps:5d}  {time.perf_counter() - t_start:6.1f}s  loss {loss.item():.3f}  "
                f"train top1 {acc.item() * 100:.1f}"
            )
        if args.eval_every and steps % args.eval_every == 0:
            va = evaluate()
            print(
                f"eval step {steps:5d}  {time.perf_counter() - t_start:6.1f}s  held-out {va[0] * 100:.1f}"
            )
    t_train = time.perf_counter() - t_start
    acc = evaluate()
    print(f"trained {steps} steps in {t_train:.0f}s ({args.threads} thread(s))")
    print(
        f"held-out verification: {acc[0] * 100:.1f} +- {acc[1] * 100:.1f}  "
        f"(raw pixels {raw[0] * 100:.1f}, low DCT {dct[0] * 100:.1f})"
    )


if __name__ == "__main__":
    main()
