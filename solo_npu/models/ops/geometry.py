"""Mapping between canvas coordinates (what the network saw) and original-image coordinates.

Uses the image meta dict of ``docs/architecture.md``: ``ori_shape`` (H0, W0), ``img_shape`` (h, w),
``pad`` (top, left), ``scale_factor`` (sy, sx) and ``flip``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["boxes_to_original"]


def boxes_to_original(boxes: Tensor, meta: Mapping[str, Any], clip: bool = True) -> Tensor:
    """Canvas-pixel boxes ``[N, 4]`` -> original-image boxes (pad removed, un-flipped, un-scaled, clipped)."""
    top, left = meta.get("pad", (0, 0))
    sy, sx = meta["scale_factor"]
    h, w = meta["img_shape"]
    out = boxes - boxes.new_tensor([left, top, left, top])
    if meta.get("flip", False):
        out = torch.stack([w - out[:, 2], out[:, 1], w - out[:, 0], out[:, 3]], dim=1)
    out = out / out.new_tensor([sx, sy, sx, sy])
    if clip:
        h0, w0 = meta["ori_shape"]
        out = torch.stack([out[:, 0].clamp(0, w0), out[:, 1].clamp(0, h0),
                           out[:, 2].clamp(0, w0), out[:, 3].clamp(0, h0)], dim=1)
    return out
