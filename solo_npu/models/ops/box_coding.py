"""Box encodings shared by the detectors.

* FCOS: distances ``(left, top, right, bottom)`` from a point to the box sides, and the
  centerness target ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``.
* SSD / YOLACT: centre-size offsets against a prior ``(cx, cy, w, h)`` with variances
  ``(v_xy, v_wh)``: ``cx = pcx + dx * v_xy * pw``, ``w = pw * exp(dw * v_wh)``. MLPerf SSD names the
  variances ``scale_xy = 0.1`` and ``scale_wh = 0.2``; YOLACT uses the same values.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "bbox2distance",
    "centerness_target",
    "cxcywh_to_xyxy",
    "decode_center_size",
    "distance2bbox",
    "encode_center_size",
    "xyxy_to_cxcywh",
]


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)``."""
    half = boxes[..., 2:] / 2
    return torch.cat([boxes[..., :2] - half, boxes[..., :2] + half], dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(x1, y1, x2, y2)`` -> ``(cx, cy, w, h)``."""
    return torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], dim=-1)


def distance2bbox(points: Tensor, distances: Tensor, max_shape: tuple[int, int] | None = None) -> Tensor:
    """Boxes from ``points [..., 2]`` (x, y) and ``distances [..., 4]`` (l, t, r, b).

    With ``max_shape = (h, w)`` the corners are clamped to ``[0, w] x [0, h]``.
    """
    x1 = points[..., 0] - distances[..., 0]
    y1 = points[..., 1] - distances[..., 1]
    x2 = points[..., 0] + distances[..., 2]
    y2 = points[..., 1] + distances[..., 3]
    if max_shape is not None:
        h, w = max_shape
        x1, x2 = x1.clamp(0, w), x2.clamp(0, w)
        y1, y2 = y1.clamp(0, h), y2.clamp(0, h)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def bbox2distance(points: Tensor, boxes: Tensor) -> Tensor:
    """Inverse of :func:`distance2bbox`: ``(l, t, r, b)`` of ``boxes`` seen from ``points``."""
    return torch.stack([points[..., 0] - boxes[..., 0], points[..., 1] - boxes[..., 1],
                        boxes[..., 2] - points[..., 0], boxes[..., 3] - points[..., 1]], dim=-1)


def centerness_target(distances: Tensor) -> Tensor:
    """FCOS centerness of regression targets ``[..., 4]`` (l, t, r, b); 0 where a side is <= 0."""
    lr = distances[..., 0::2]
    tb = distances[..., 1::2]
    ratio = (lr.min(dim=-1).values / lr.max(dim=-1).values.clamp(min=1e-12)) * \
            (tb.min(dim=-1).values / tb.max(dim=-1).values.clamp(min=1e-12))
    return torch.sqrt(ratio.clamp(min=0))


def decode_center_size(loc: Tensor, priors: Tensor, variances: tuple[float, float] = (0.1, 0.2)) -> Tensor:
    """Decode offsets ``loc [..., N, 4]`` against ``priors [N, 4]`` (cx, cy, w, h) into x1y1x2y2 boxes."""
    centers = priors[..., :2] + loc[..., :2] * variances[0] * priors[..., 2:]
    sizes = priors[..., 2:] * torch.exp(loc[..., 2:] * variances[1])
    return cxcywh_to_xyxy(torch.cat([centers, sizes], dim=-1))


def encode_center_size(boxes: Tensor, priors: Tensor, variances: tuple[float, float] = (0.1, 0.2)) -> Tensor:
    """Inverse of :func:`decode_center_size` for x1y1x2y2 ``boxes``."""
    b = xyxy_to_cxcywh(boxes)
    dxy = (b[..., :2] - priors[..., :2]) / (variances[0] * priors[..., 2:])
    dwh = torch.log(b[..., 2:] / priors[..., 2:]) / variances[1]
    return torch.cat([dxy, dwh], dim=-1)
