"""Mask pasting: ``paste_masks`` (composed taps as block-banded matmuls, per-mask regions on the CPU, whole
masks on accelerators) against the two ``F.interpolate`` calls it replaces (upsample x4 to the canvas, crop,
resize to the original), on the same masks.

Usage: ``python benchmarks/paste_masks.py [--iters 3] [--threads 1] [--no-write]``
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

# Before anything imports torch (as in train.py): torch >= 2.5 imports installed device backends at `import torch`,
# and a torch_npu that cannot load CANN's libraries would end the benchmark there, on the CPU too. A set value wins.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import describe_machine, publish  # noqa: E402

from solo_npu.models.solov2.paste import paste_masks  # noqa: E402

HEADING = "## Mask pasting"
CASES = [  # label, low-res masks [h, w], meta (canvas = 4 x low-res)
    ("R50 800x1216 canvas", (200, 304), dict(ori_shape=(480, 640), img_shape=(800, 1067), pad=(0, 0),
                                             canvas=(800, 1216))),
    ("light 448x608 canvas", (112, 152), dict(ori_shape=(480, 640), img_shape=(448, 597), pad=(0, 0),
                                              canvas=(448, 608))),
]


def two_resizes(probs: torch.Tensor, meta: dict, thr: float = 0.5) -> torch.Tensor:
    """The reference: full-canvas upsample, crop, resize, threshold (in chunks of 32 masks)."""
    (top, left), (ih, iw) = meta["pad"], meta["img_shape"]
    out = []
    for chunk in probs.split(32):
        up = F.interpolate(chunk[None], size=meta["canvas"], mode="bilinear", align_corners=False)
        up = up[..., top:top + ih, left:left + iw]
        out.append(F.interpolate(up, size=meta["ori_shape"], mode="bilinear", align_corners=False)[0] > thr)
    return torch.cat(out)


def masks_of(hw: tuple[int, int], maps: str, n: int = 100) -> torch.Tensor:
    """``full``: smooth random probabilities over the whole mask (about half above 0.5 everywhere);
    ``objects``: one blob of 5-30% of each side per mask, zero elsewhere."""
    g = torch.Generator().manual_seed(0)
    if maps == "full":
        low = torch.rand(n, 1, hw[0] // 8, hw[1] // 8, generator=g)
        return F.interpolate(low, size=hw, mode="bilinear", align_corners=False)[:, 0]
    probs = torch.zeros(n, *hw)
    for i in range(n):
        bh, bw = (int(s * float(torch.empty(1).uniform_(0.05, 0.3, generator=g))) + 2 for s in hw)
        y = int(torch.randint(0, hw[0] - bh, (1,), generator=g))
        x = int(torch.randint(0, hw[1] - bw, (1,), generator=g))
        probs[i, y:y + bh, x:x + bw] = 0.3 + 0.7 * torch.rand(bh, bw, generator=g)
    return probs


def median_ms(fn, iters: int) -> tuple[float, torch.Tensor]:
    out, times = fn(), []
    for _ in range(iters):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return 1e3 * sorted(times)[len(times) // 2], out


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for label, hw, meta in CASES:
        for maps in ("full", "objects"):
            probs = masks_of(hw, maps)
            new_ms, new = median_ms(lambda: paste_masks(probs, meta, 0.5), args.iters)  # noqa: B023
            whole_ms, whole = median_ms(lambda: paste_masks(probs, meta, 0.5, regions=False), args.iters)  # noqa: B023
            ref_ms, ref = median_ms(lambda: two_resizes(probs, meta), args.iters)  # noqa: B023
            differ = int((new != ref).sum()) + int((whole != ref).sum())
            rows.append((label, f"{hw[0]}x{hw[1]}", maps, float(ref.float().mean()), ref_ms, new_ms, whole_ms,
                         differ, 2 * new.numel()))
            print(rows[-1], flush=True)
    lines = [HEADING, "", f"Measured {datetime.date.today().isoformat()} by `python benchmarks/paste_masks.py "
             f"--iters {args.iters}" + (f" --threads {args.threads}" if args.threads else "") + f"` on "
             f"{describe_machine()}, {torch.get_num_threads()} torch threads. 100 mask probability maps pasted to "
             "a 480x640 original; median of the timed runs after one warm-up. Maps `full`: smooth random maps "
             "(about half of every mask above 0.5); `objects`: one box-shaped blob of 5-30% of each side per "
             "mask. Above 0.5: the share of pasted pixels above the threshold.", "",
             "| canvas | low-res masks | maps | above 0.5 | two resizes (ms) | paste_masks, regions (ms) "
             "| paste_masks, whole masks (ms) | pixels that differ |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, shape, maps, frac, ref_ms, new_ms, whole_ms, differ, total in rows:
        lines.append(f"| {label} | {shape} | {maps} | {100 * frac:.0f}% | {ref_ms:.0f} | {new_ms:.0f} | "
                     f"{whole_ms:.0f} | {differ} of {total / 1e6:.1f} M |")
    lines += ["", "`regions` is the CPU default (each mask resampled only over the 32 x 32 blocks its taps above "
              "the threshold reach), `whole masks` the accelerator default (batches of 32 masks, a few large "
              "kernels). Pixels that differ are counted over both; they come from rounding: the composed taps "
              "sum in another order than the two resizes (tests/models/test_solov2_model.py checks that every "
              "differing pixel is within 1e-5 of the threshold).", ""]
    return publish(HEADING, lines, write=not args.no_write)


if __name__ == "__main__":
    main()
