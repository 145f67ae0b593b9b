"""SOLOv2 masks from the stride-4 mask resolution onto the original image, and their boxes.

The reference upsamples each kept mask x4, crops the padding, resizes to the original size and
thresholds; :func:`paste_masks` composes those linear maps into a few taps per output pixel and, on the
CPU, resamples only the regions a mask's taps above the threshold reach.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from solo_npu.runtime import prefers_few_shapes

__all__ = ["masks_to_boxes", "paste_masks"]


def _axis_taps(n_low: int, scale: float, offset: int, size: int, out: int) -> tuple[Tensor, Tensor]:
    """One axis of :func:`paste_masks` as taps: ``y[i] = sum_k weight[i, k] * x[index[i, k]]``.

    The axis map is: bilinear upsample ``n_low -> n_low * scale`` (half-pixel centres), crop
    ``[offset, offset + size)``, bilinear resize ``size -> out``. It is linear, so sending the identity
    through the same ``F.interpolate`` calls (in float64, on the host) gives its exact matrix; each row
    has a few non-zero entries (2-4), which become the taps (indices ascending; rows with fewer
    non-zeros repeat their strongest index with weight 0).
    """
    eye = torch.eye(n_low, dtype=torch.float64).unsqueeze(0)  # [1, basis, position]
    up = F.interpolate(eye, scale_factor=scale, mode="linear", align_corners=False)[..., offset:offset + size]
    if size != out:
        up = F.interpolate(up, size=out, mode="linear", align_corners=False)
    matrix = up[0].t()  # [out, n_low]
    k = max(1, int((matrix != 0).sum(1).max()))
    index = matrix.topk(k, dim=1).indices
    weight = matrix.gather(1, index)
    index = torch.where(weight != 0, index, index[:, :1])  # bilinear weights are >= 0: column 0 is the largest
    index, order = index.sort(dim=1)
    return index, weight.gather(1, order).float()


def _axis_bands(index: Tensor, weight: Tensor, n_low: int, block: int) -> tuple[Tensor, Tensor]:
    """Taps of :func:`_axis_taps` as a block-banded matrix: output positions in blocks of ``block``,
    each block reading one window of ``width`` consecutive low-resolution positions.

    Returns ``(start [nb] int64, band [nb, block, width] float)``: output ``j * block + r`` is
    ``sum_t band[j, r, t] * x[start[j] + t]`` (rows past the end of the axis are 0).
    """
    out, k = index.shape
    nb = -(-out // block)
    first = index[torch.arange(nb) * block, 0]
    last = index[(torch.arange(nb) * block + block).clamp(max=out) - 1, -1]
    width = int((last - first).max()) + 1
    start = first.clamp(max=n_low - width)  # taps ascend, so every block's taps lie in its window
    rel = index - start.repeat_interleave(block)[:out, None]
    band = torch.zeros(nb * block, width, dtype=weight.dtype)
    rows = torch.arange(out).view(-1, 1).expand(out, k)
    band.index_put_((rows, rel), weight, accumulate=True)  # padding taps (weight 0) add nothing
    return start, band.view(nb, block, width)


def _apply_bands(x: Tensor, dim: int, start: Tensor, band: Tensor) -> Tensor:
    """Resample ``x`` ``[N, H, W]`` along ``dim`` (-2 or -1) with :func:`_axis_bands` (one gather and one
    batched matmul); the result has ``nb * block`` positions along ``dim``."""
    window = start.view(-1, 1) + torch.arange(band.shape[-1], device=start.device)  # [nb, width]
    if dim == -2:
        return (band @ x[:, window]).flatten(1, 2)  # [nb, block, width] @ [N, nb, width, W]
    cols = x[..., window].permute(2, 0, 1, 3).flatten(1, 2)  # [nb, N * H, width]
    out = cols @ band.transpose(1, 2)  # [nb, N * H, block]
    return out.view(band.shape[0], x.shape[0], x.shape[1], -1).permute(1, 2, 0, 3).flatten(2)


def _span(candidates: Tensor) -> tuple[Tensor, Tensor]:
    """First and last True position along the last axis (``last < first`` when there is none)."""
    n = candidates.shape[-1]
    pos = torch.arange(n, device=candidates.device)
    first = torch.where(candidates, pos, torch.full_like(pos, n)).amin(-1)
    last = torch.where(candidates, pos, torch.full_like(pos, -1)).amax(-1)
    return first, last


def paste_masks(masks: Tensor, meta: dict[str, Any], mask_thr: float = 0.5, regions: bool | None = None,
                block: int = 32) -> Tensor:
    """Low-resolution mask probabilities ``[N, h, w]`` (canvas / 4) -> bool masks ``[N, H0, W0]``.

    The result is mmdet's: upsample x4 to the canvas (bilinear, half-pixel centres), crop the padding
    (``meta["pad"]``, ``meta["img_shape"]``), resize to ``meta["ori_shape"]`` (bilinear) and
    threshold. Bilinear resizing is separable, so each axis's three steps are composed into one map
    with a few taps per output pixel (:func:`_axis_taps`), laid out as a block-banded matrix
    (:func:`_axis_bands`: ``block`` outputs share one window of the input) and applied axis by axis as
    batched matmuls, without the canvas-size intermediate. The tap weights are >= 0 and sum to 1, so an
    output pixel can exceed ``mask_thr`` only if one of its taps does: each mask is resampled only over
    the blocks of rows and columns whose taps reach a low-resolution pixel above ``mask_thr``, and is
    False elsewhere. Values equal the two-resize reference up to float rounding (~1e-7).

    ``regions`` picks that per-mask loop (default on the CPU) or whole masks in batches of 32 (default
    where the device prefers a few shapes, :func:`solo_npu.runtime.prefers_few_shapes`: on accelerators a
    few large kernels beat many small launches of varying size).
    """
    h0, w0 = (int(v) for v in meta["ori_shape"][:2])
    n = masks.shape[0]
    out = torch.zeros((n, h0, w0), dtype=torch.bool, device=masks.device)
    if n == 0:
        return out
    h, w = masks.shape[-2:]
    hc, wc = (int(v) for v in meta.get("canvas", (4 * h, 4 * w)))
    # The features are the canvas's stride-s cells, ceil(canvas / s) of them: the reference upsamples by
    # s (mmdet's SOLOv2Head: featmap_size * 4), so a canvas that is not a multiple of s is not stretched.
    stride = max(1, round(max(hc / h, wc / w)))
    top, left = (int(v) for v in meta.get("pad", (0, 0)))
    ih, iw = (int(v) for v in meta["img_shape"][:2])
    iy, wy = _axis_taps(h, stride, top, ih, h0)
    ix, wx = _axis_taps(w, stride, left, iw, w0)
    sy, by = (t.to(masks.device) for t in _axis_bands(iy, wy, h, block))
    sx, bx = (t.to(masks.device) for t in _axis_bands(ix, wx, w, block))
    probs = masks.float()
    rows_first = h0 * w <= h * w0  # the axis that leaves the smaller intermediate first

    def resample(x: Tensor, ry: slice, rx: slice, y_off: int, x_off: int) -> Tensor:
        if rows_first:
            x = _apply_bands(x, -2, sy[ry] - y_off, by[ry])
            return _apply_bands(x, -1, sx[rx] - x_off, bx[rx])
        x = _apply_bands(x, -1, sx[rx] - x_off, bx[rx])
        return _apply_bands(x, -2, sy[ry] - y_off, by[ry])

    if regions is None:
        regions = not prefers_few_shapes(masks.device)
    if not regions:
        for i in range(0, n, 32):
            out[i:i + 32] = resample(probs[i:i + 32], slice(None), slice(None), 0, 0)[:, :h0, :w0] > mask_thr
        return out
    on = (probs > mask_thr).view(torch.uint8)
    y0, y1 = _span(on.amax(-1)[:, iy.to(masks.device)].amax(-1) > 0)  # [N]: output rows that may be on
    x0, x1 = _span(on.amax(-2)[:, ix.to(masks.device)].amax(-1) > 0)
    blocks = torch.stack([y0, y1, x0, x1], dim=1).div(block, rounding_mode="floor").tolist()  # one host read
    starts_y, starts_x = sy.tolist(), sx.tolist()
    wd_y, wd_x = by.shape[-1], bx.shape[-1]
    for i, (j0, j1, k0, k1) in enumerate(blocks):
        if j1 < j0 or k1 < k0:
            continue
        a, b = starts_y[j0], starts_y[j1] + wd_y
        c, d = starts_x[k0], starts_x[k1] + wd_x
        r0, r1 = j0 * block, min(h0, (j1 + 1) * block)
        c0, c1 = k0 * block, min(w0, (k1 + 1) * block)
        tile = resample(probs[i:i + 1, a:b, c:d], slice(j0, j1 + 1), slice(k0, k1 + 1), a, c)
        torch.gt(tile[0, :r1 - r0, :c1 - c0], mask_thr, out=out[i, r0:r1, c0:c1])
    return out


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight boxes ``[N, 4]`` (x1, y1, x2, y2; x2/y2 exclusive) around bool masks ``[N, H, W]``; 0 for empty masks."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=masks.device)
    # amax over uint8 is a plain vectorised reduction; any() over bool is many times slower on the CPU
    flags = masks.view(torch.uint8) if masks.dtype == torch.bool else (masks != 0).view(torch.uint8)
    cols = flags.amax(dim=1).float()  # [N, W]
    rows = flags.amax(dim=2).float()  # [N, H]
    xs = torch.arange(w, device=masks.device, dtype=torch.float32)
    ys = torch.arange(h, device=masks.device, dtype=torch.float32)
    x1 = torch.where(cols > 0, xs, torch.full_like(xs, w)).amin(1)
    x2 = torch.where(cols > 0, xs + 1, torch.zeros_like(xs)).amax(1)
    y1 = torch.where(rows > 0, ys, torch.full_like(ys, h)).amin(1)
    y2 = torch.where(rows > 0, ys + 1, torch.zeros_like(ys)).amax(1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1)
    return torch.where((cols.sum(1) > 0).unsqueeze(1), boxes, torch.zeros_like(boxes))
