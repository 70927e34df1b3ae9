"""MinusFace speed: per-sample channel shuffling and the client's protection cost.

Rows (``speed`` suite columns), each a ratio measured in this run:

* channel shuffling of a residue batch ``(B, 192, H, W)``: ours (one ``argsort`` of CSPRNG keys
  + one ``gather``) against the reference's per-sample ``torch.randperm`` loop + ``gather``;
* the client's protection (encode, U-Net, subtract, shuffle, decode, quantize) against the
  server's recognizer forward on the protected images (IR-18, 3-channel stem): how much more a
  client pays per face than the server.

``small`` uses toy sizes (32 px, a narrow U-Net); otherwise the paper's 112 px faces and the
paper's U-Net (64..1024) with a batch of 4.
"""

from __future__ import annotations

from typing import Any

import torch

from facelab.benchmarks.timing import measure


def _row(bench: str, ours: str, ref: str, ours_s: float, ref_s: float, note: str) -> dict[str, Any]:
    return {
        "benchmark": bench,
        "ours": ours,
        "reference": ref,
        "ours/s": ours_s,
        "reference/s": ref_s,
        "speedup": ours_s / ref_s,
        "note": note,
    }


def reference_shuffle(r: torch.Tensor) -> torch.Tensor:
    """The reference's loop: one ``torch.randperm`` per sample, stacked, then one gather."""
    b, c, h, w = r.shape
    perms = torch.stack([torch.randperm(c) for _ in range(b)]).to(r.device)
    return torch.gather(r, 1, perms.view(b, c, 1, 1).expand(-1, -1, h, w))


def run_minusface_speed(small: bool = False) -> list[dict[str, Any]]:
    from facelab.core.backbones import get_backbone
    from facelab.minusface import MinusFaceGenerator, shuffle_channels
    from facelab.minusface.client import protect_uint8
    from facelab.minusface.protocol import to_model_input

    torch.manual_seed(0)
    rows = []
    b, size = (64, 32) if small else (256, 56)
    r = torch.randn(b, 192, size, size)
    t_ours = measure(lambda: shuffle_channels(r), repeat=3)
    t_ref = measure(lambda: reference_shuffle(r), repeat=3)
    rows.append(
        _row(
            f"channel shuffle, {b}x192x{size}x{size}",
            "argsort(CSPRNG keys) + gather",
            "per-sample randperm loop + gather",
            b / t_ours,
            b / t_ref,
            "samples/s; goal speedup >= 1",
        )
    )

    if small:
        n, size, widths, bw = 16, 32, (8, 16, 32), 8
    else:
        n, size, widths, bw = 4, 112, (64, 128, 256, 512, 1024), 64
    gen = MinusFaceGenerator("freq", size, widths).eval()
    rec = get_backbone("r18", in_channels=3, input_size=size, base_width=bw).eval()
    faces = torch.rand(n, 3, size, size) * 2 - 1
    with torch.no_grad():
        xp = to_model_input(protect_uint8(gen, faces))
        t_protect = measure(lambda: protect_uint8(gen, faces), repeat=3)
        t_rec = measure(lambda: rec(xp), repeat=3)
    rows.append(
        _row(
            f"client protect vs server embed, {n}x3x{size}x{size}",
            f"protect (U-Net {widths[0]}..{widths[-1]})",
            f"IR-18 on X_p (width {bw})",
            n / t_protect,
            n / t_rec,
            "images/s; speedup < 1 = the client pays that fraction of the server's speed",
        )
    )
    return rows
