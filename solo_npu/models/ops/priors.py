"""Anchor points and default boxes, generated with tensor ops (no loops over positions).

Orders match the reference heads' output layouts, so decoded boxes line up with predictions:

* :func:`fcos_points`: row-major ``(y, x)`` per level, point = ``(x * s + s // 2, y * s + s // 2)``
  (mmdet's FCOS).
* :func:`ssd_default_boxes`: MLPerf SSD ``DefaultBoxes``: per level, size-major (every prior shape over
  all positions, then the next shape), positions row-major; ``(cx, cy, w, h)`` relative to the image and
  clamped to ``[0, 1]``. 8732 boxes for SSD300.
* :func:`yolact_priors`: position-major (for each position, every aspect ratio), ``(cx, cy, w, h)``
  relative; YOLACT's ``use_pixel_scales`` / ``preapply_sqrt=False`` / ``use_square_anchors`` settings of
  the released COCO models (so every prior is square with side ``scale * ar / max_size``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["fcos_points", "ssd_default_boxes", "yolact_priors"]

SSD300_FEAT_SIZE = (38, 19, 10, 5, 3, 1)
SSD300_STEPS = (8, 16, 32, 64, 100, 300)
SSD300_SCALES = (21, 45, 99, 153, 207, 261, 315)
SSD300_ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))


def _grid(h: int, w: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return ys.reshape(-1), xs.reshape(-1)


def fcos_points(sizes: Sequence[tuple[int, int]], strides: Sequence[int],
                device: torch.device | None = None) -> list[Tensor]:
    """One ``[H*W, 2]`` tensor of (x, y) image coordinates per level."""
    points = []
    for (h, w), s in zip(sizes, strides):
        ys, xs = _grid(h, w, device)
        points.append(torch.stack([xs * s + s // 2, ys * s + s // 2], dim=-1))
    return points


def ssd_default_boxes(fig_size: int = 300, feat_size: Sequence[int] = SSD300_FEAT_SIZE,
                      steps: Sequence[int] = SSD300_STEPS, scales: Sequence[int] = SSD300_SCALES,
                      aspect_ratios: Sequence[Sequence[int]] = SSD300_ASPECT_RATIOS) -> Tensor:
    """MLPerf SSD default boxes ``[N, 4]`` (cx, cy, w, h) relative to the image."""
    boxes = []
    for idx, sfeat in enumerate(feat_size):
        fk = fig_size / steps[idx]
        sk1 = scales[idx] / fig_size
        sk2 = scales[idx + 1] / fig_size
        sk3 = math.sqrt(sk1 * sk2)
        sizes = [(sk1, sk1), (sk3, sk3)]
        for alpha in aspect_ratios[idx]:
            w, h = sk1 * math.sqrt(alpha), sk1 / math.sqrt(alpha)
            sizes += [(w, h), (h, w)]
        ys, xs = _grid(sfeat, sfeat)
        centers = torch.stack([(xs + 0.5) / fk, (ys + 0.5) / fk], dim=-1)  # [S*S, 2]
        wh = torch.tensor(sizes, dtype=torch.float32)  # [A, 2]
        level = torch.cat([centers[None].expand(len(sizes), -1, -1),
                           wh[:, None].expand(-1, centers.shape[0], -1)], dim=-1)
        boxes.append(level.reshape(-1, 4))
    return torch.cat(boxes).clamp_(0, 1)


def yolact_priors(conv_sizes: Sequence[tuple[int, int]], scales: Sequence[float] = (24, 48, 96, 192, 384),
                  aspect_ratios: Sequence[float] = (1.0, 0.5, 2.0), max_size: int = 550,
                  square: bool = True) -> Tensor:
    """YOLACT priors ``[sum(H*W*A), 4]`` (cx, cy, w, h) relative, one scale per level."""
    priors = []
    ars = torch.tensor(list(aspect_ratios), dtype=torch.float32)
    for (h, w), scale in zip(conv_sizes, scales):
        ys, xs = _grid(h, w)
        cx = ((xs + 0.5) / w)[:, None].expand(-1, len(ars))
        cy = ((ys + 0.5) / h)[:, None].expand(-1, len(ars))
        pw = (scale * ars / max_size)[None].expand(h * w, -1)
        ph = pw if square else (scale / ars / max_size)[None].expand(h * w, -1)
        priors.append(torch.stack([cx, cy, pw, ph], dim=-1).reshape(-1, 4))
    return torch.cat(priors)
