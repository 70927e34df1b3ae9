"""Run facelab-core's end-to-end self-check (codec round trips, sphere math) and print a table."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _smooth_images(n: int, size: int = 112, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 8, size // 8, generator=g)
    img = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    img = img + 0.05 * torch.randn(n, 3, size, size, generator=g)
    return img.clamp(0, 1) * 2 - 1


def run_checks() -> list[tuple[str, str, bool]]:
    """(check, measured value, passed) rows."""
    from facelab.core import freq, sphere

    rows: list[tuple[str, str, bool]] = []
    x = _smooth_images(8)
    for mode in ("reference", "compact"):
        codec = freq.FrequencyCodec(mode)
        t0 = time.perf_counter()
        c = codec.encode(x)
        err = float((codec.decode(c) - x).abs().max())
        dt = time.perf_counter() - t0
        rows.append(
            (
                f"codec {mode}: shape {tuple(c.shape[1:])}",
                f"max err {err:.2e} ({dt * 1e3:.0f} ms)",
                err < 1e-4,
            )
        )
    ref = freq.FrequencyCodec("reference")
    c = ref.encode(x)
    client, server = freq.split_channels(c, freq.DUETFACE_CLIENT)
    rows.append(
        (
            "duetface split 30/162",
            f"{client.shape[1]}/{server.shape[1]}",
            (client.shape[1], server.shape[1]) == (30, 162),
        )
    )
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 512, generator=g, dtype=torch.float64)
    b = torch.randn(64, 512, generator=g, dtype=torch.float64)
    th = sphere.angle(a, b)
    mid = sphere.slerp(a, b, 0.5)
    err = float((sphere.angle(a, mid) - th / 2).abs().max())
    rows.append(("slerp midpoint angle", f"max err {err:.1e} rad", err < 1e-9))
    u = sphere.random_orthogonal(a, generator=g)
    r = sphere.rotate_toward(a, u, 0.3)
    err = float((sphere.angle(a, r) - 0.3).abs().max())
    rows.append(("rotate_toward angle", f"max err {err:.1e} rad", err < 1e-9))
    return rows


def main(argv: Sequence[str] = ()) -> int:
    """Run facelab-core's end-to-end self-check and print a table."""
    if argv and argv[0] in ("-h", "--help"):
        print("usage: facelab selfcheck\n\nRun facelab-core's self-check and print a table.")
        return 0
    rows = run_checks()
    print("| check | measured | ok |\n|---|---|---|")
    for name, value, ok in rows:
        print(f"| {name} | {value} | {'yes' if ok else 'NO'} |")
    failed = [r for r in rows if not r[2]]
    print(f"\n{len(rows) - len(failed)}/{len(rows)} checks passed")
    return 1 if failed else 0
