"""Anchor points and default boxes, vectorised over positions (no Python loops over them).

Orders match the reference heads' output layouts, so decoded boxes line up with predictions:

* :func:`fcos_points`: row-major ``(y, x)`` per level, point = ``((x + 0.5) * s, (y + 0.5) * s)``
  (mmdet 3.3.0 ``MlvlPointGenerator`` with its default offset 0.5; the same as mmdet 1.x/2.x's
  ``x * s + s // 2`` for the even FCOS strides).
* :func:`ssd_default_boxes`: MLPerf SSD ``DefaultBoxes``: per level, size-major (every prior shape over
  all positions, then the next shape), positions row-major; ``(cx, cy, w, h)`` relative to the image and
  clamped to ``[0, 1]``. 8732 boxes for SSD300.
* :func:`yolact_priors`: YOLACT / YolactEdge ``PredictionModule.make_priors``: position-major (for each
  position, every aspect ratio), ``(cx, cy, w, h)`` relative, with the reference's ``preapply_sqrt``,
  ``use_pixel_scales`` and ``use_square_anchors`` switches. The released COCO models (``yolact_base``,
  ``yolact_resnet50``, ``yolact_edge_resnet50``) set them to False / True / True: every prior is square
  with side ``scale * sqrt(ar) / max_size``, i.e. ``scale * (1, 0.7071, 1.4142) / 550`` for ratios
  ``(1, 1/2, 2)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from solo_npu.models.ops.factories import arange_on

__all__ = ["fcos_points", "ssd_default_boxes", "yolact_priors"]

SSD300_FEAT_SIZE = (38, 19, 10, 5, 3, 1)
SSD300_STEPS = (8, 16, 32, 64, 100, 300)
SSD300_SCALES = (21, 45, 99, 153, 207, 261, 315)
SSD300_ASPECT_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))


def _grid(h: int, w: int, like: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Row-major float32 ``(y, x)`` indices of an ``h x w`` grid, on ``like``'s device (the CPU when ``None``)."""
    if like is None:
        rows, cols = torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32)
    else:  # no device constant when traced
        rows, cols = arange_on(like, h, torch.float32), arange_on(like, w, torch.float32)
    ys, xs = torch.meshgrid(rows, cols, indexing="ij")
    return ys.reshape(-1), xs.reshape(-1)


def fcos_points(sizes: Sequence[tuple[int, int]], strides: Sequence[int], like: Tensor | None = None) -> list[Tensor]:
    """One ``[H*W, 2]`` tensor of (x, y) image coordinates per level, on ``like``'s device (the CPU when
    ``None``; a traced graph takes the device from ``like`` when it runs, see :mod:`.factories`)."""
    points = []
    for (h, w), s in zip(sizes, strides):
        ys, xs = _grid(h, w, like)
        points.append(torch.stack([(xs + 0.5) * s, (ys + 0.5) * s], dim=-1))
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
                  aspect_ratios: Sequence[float] = (1.0, 0.5, 2.0), max_size: int = 550, *,
                  preapply_sqrt: bool = False, use_pixel_scales: bool = True,
                  use_square_anchors: bool = True) -> Tensor:
    """YOLACT priors ``[sum(H*W*A), 4]`` (cx, cy, w, h) relative to the image, one scale per level.

    For the position ``(j, i)`` of an ``H x W`` level the centre is ``((i + 0.5) / W, (j + 0.5) / H)``;
    for each aspect ratio ``ar`` (replaced by ``sqrt(ar)`` unless ``preapply_sqrt``, i.e. unless the
    ratios are given already square-rooted) the size is ``(scale * ar, scale / ar) / max_size`` with
    ``use_pixel_scales``, ``(scale * ar / W, scale / ar / H)`` without, and ``h = w`` with
    ``use_square_anchors``. The defaults are the released R50 configuration. Computed in float64 and
    rounded once to float32, as the reference builds a list of Python floats and converts it.
    """
    if len(conv_sizes) != len(scales):
        raise ValueError(f"yolact_priors: {len(conv_sizes)} feature levels but {len(scales)} scales")
    # numpy, not torch ops: the priors depend only on shapes, so an exported graph holds them as one
    # constant (torch ops would be traced, float64 casts included).
    ars = np.asarray(aspect_ratios, dtype=np.float64)
    if not preapply_sqrt:
        ars = np.sqrt(ars)
    priors = []
    for (h, w), scale in zip(conv_sizes, scales):
        ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
        cx = np.broadcast_to(((xs.reshape(-1) + 0.5) / w)[:, None], (h * w, ars.size))
        cy = np.broadcast_to(((ys.reshape(-1) + 0.5) / h)[:, None], (h * w, ars.size))
        if use_pixel_scales:
            pw, ph = scale * ars / max_size, scale / ars / max_size
        else:
            pw, ph = scale * ars / w, scale / ars / h
        if use_square_anchors:
            ph = pw
        sides = [np.broadcast_to(v[None], (h * w, ars.size)) for v in (pw, ph)]
        priors.append(np.stack([cx, cy, *sides], axis=-1).reshape(-1, 4))
    return torch.from_numpy(np.concatenate(priors).astype(np.float32))
