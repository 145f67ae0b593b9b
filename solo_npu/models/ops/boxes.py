"""Box geometry and non-maximum suppression in plain PyTorch (no torchvision).

Boxes are ``[..., 4]`` tensors in ``(x1, y1, x2, y2)`` order. Areas use ``(x2 - x1) * (y2 - y1)``
(no +1 pixel), as mmcv >= 1.0 and torchvision do.

Two families of NMS live here:

* host-side, exact greedy NMS (:func:`nms`, :func:`batched_nms`, :func:`multiclass_nms`) used after a
  static graph has produced a fixed number of candidates;
* static-shape Fast NMS (:func:`fast_nms`, YOLACT) that runs inside an exported graph: per-class
  top-k, one IoU matrix per class, upper-triangular suppression and a fixed number of outputs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from solo_npu.models.ops.factories import arange_on
from solo_npu.models.ops.indexing import take_rows, topk_int32

__all__ = [
    "batched_nms",
    "box_area",
    "box_iou",
    "fast_nms",
    "multiclass_nms",
    "nms",
    "pairwise_box_iou",
]


def box_area(boxes: Tensor) -> Tensor:
    """Area of ``[..., 4]`` boxes; degenerate boxes have area 0."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def pairwise_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box in ``a [..., N, 4]`` with every box in ``b [..., M, 4]`` -> ``[..., N, M]``.

    Leading dimensions broadcast, so ``[C, K, 4] x [C, K, 4]`` gives one ``K x K`` matrix per class.
    """
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[..., :, None] + box_area(b)[..., None, :] - inter
    return inter / union.clamp(min=1e-12)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU matrix ``[N, M]`` of two box sets ``[N, 4]`` and ``[M, 4]``."""
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"box_iou expects [N, 4] and [M, 4], got {tuple(a.shape)} and {tuple(b.shape)}")
    return pairwise_box_iou(a, b)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, inclusive: bool = False) -> Tensor:
    """Greedy NMS: indices of the kept boxes, by decreasing score.

    A box is suppressed when its IoU with a higher-scoring kept box is greater than ``iou_threshold``
    (mmcv, torchvision), or greater than or equal to it with ``inclusive=True`` (MLPerf SSD keeps
    ``iou < criteria``). Ties in score keep the earlier index first (stable sort).
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = box_iou(boxes[order], boxes[order])
    over = (iou >= iou_threshold if inclusive else iou > iou_threshold).cpu().numpy()
    suppressed = np.zeros(order.numel(), dtype=bool)
    keep = []
    # The greedy recurrence is sequential by nature; it runs on the host over one class's candidates.
    for i in range(order.numel()):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= over[i]
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float, inclusive: bool = False) -> Tensor:
    """NMS applied independently per category ``idxs``; indices of the kept boxes by decreasing score."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    kept = [torch.nonzero(idxs == c).squeeze(1) for c in torch.unique(idxs)]
    kept = torch.cat([k[nms(boxes[k], scores[k], iou_threshold, inclusive)] for k in kept])
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def multiclass_nms(boxes: Tensor, scores: Tensor, score_thr: float, iou_threshold: float, max_num: int = 100,
                   score_factors: Tensor | None = None,
                   max_per_class: int | None = None, inclusive: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Multi-class NMS over ``boxes [N, 4]`` and per-class ``scores [N, C]`` (mmdet / MLPerf SSD).

    Every (box, class) pair with ``scores > score_thr`` is a candidate; its ranking score is
    ``scores * score_factors`` when factors (e.g. FCOS centerness ``[N]``) are given. Optionally only
    the ``max_per_class`` best candidates of a class enter its NMS (SSD). Per-class NMS (see :func:`nms`
    for ``inclusive``), then the ``max_num`` best over all classes.

    Returns:
        ``(boxes [K, 4], scores [K], labels [K])`` sorted by decreasing score.
    """
    if scores.dim() != 2 or boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"multiclass_nms expects boxes [N, 4] and scores [N, C], got {tuple(boxes.shape)} "
                         f"and {tuple(scores.shape)}")
    valid = scores > score_thr
    box_idx, labels = valid.nonzero(as_tuple=True)
    cand_scores = scores[box_idx, labels]
    if score_factors is not None:
        cand_scores = cand_scores * score_factors[box_idx]
    if max_per_class is not None and cand_scores.numel():
        # rank inside each class: sort by (label, -score) and keep the first max_per_class of each label
        order = torch.sort(cand_scores, descending=True, stable=True).indices
        order = order[torch.sort(labels[order], stable=True).indices]
        lab = labels[order]
        first = torch.searchsorted(lab, lab, right=False)
        rank = torch.arange(lab.numel(), device=lab.device) - first
        sel = order[rank < max_per_class]
        box_idx, labels, cand_scores = box_idx[sel], labels[sel], cand_scores[sel]
    cand_boxes = boxes[box_idx]
    keep = batched_nms(cand_boxes, cand_scores, labels, iou_threshold, inclusive)[:max_num]
    return cand_boxes[keep], cand_scores[keep], labels[keep]


def fast_nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.5, top_k: int = 200,
             max_num: int = 100) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """YOLACT Fast NMS with static shapes (exportable, no boolean indexing).

    For every class the ``top_k`` best candidates are taken; a candidate is dropped when any
    higher-scoring candidate of the same class overlaps it with IoU > ``iou_threshold`` (suppressed
    candidates may still suppress others, which is what makes it "fast"). The ``max_num`` best
    survivors over all classes are returned.

    Args:
        boxes: ``[N, 4]`` or batched ``[B, N, 4]`` candidate boxes.
        scores: ``[C, N]`` or ``[B, C, N]`` class scores (background excluded). Scores <= 0 mark
            invalid candidates.

    Returns:
        ``(boxes [.., max_num, 4], scores [.., max_num], labels [.., max_num] int32,
        index [.., max_num] int32)`` (int32 index arithmetic: :mod:`solo_npu.models.ops.indexing`); ``index``
        points into the N candidates. Empty slots have score 0.
    """
    unbatched = boxes.dim() == 2
    if unbatched:
        boxes, scores = boxes[None], scores[None]
    batch, num_classes, num = scores.shape
    k = min(top_k, num)
    cls_scores, idx = topk_int32(scores, k, dim=2)  # [B, C, k], sorted descending
    idx = idx.reshape(batch, num_classes * k)
    cls_boxes = take_rows(boxes, idx).reshape(batch, num_classes, k, 4)
    iou = pairwise_box_iou(cls_boxes, cls_boxes)  # [B, C, k, k]
    ar = arange_on(boxes, k)  # traced into the export graph: no device constant
    upper = (ar[:, None] < ar[None, :]).to(iou.dtype)  # strictly upper triangle: row outranks column
    iou_max = (iou * upper).amax(dim=2)
    kept_scores = torch.where(iou_max <= iou_threshold, cls_scores, torch.zeros_like(cls_scores))
    flat = kept_scores.reshape(batch, -1)
    m = min(max_num, flat.shape[1])
    top_scores, top = topk_int32(flat, m, dim=1)
    labels = torch.div(top, k, rounding_mode="trunc")  # never negative: the floor division
    index = take_rows(idx, top)
    out_boxes = take_rows(boxes, index)
    if m < max_num:  # fewer candidates than slots: pad to a fixed size
        pad = max_num - m
        out_boxes = torch.cat([out_boxes, out_boxes.new_zeros(batch, pad, 4)], 1)
        top_scores = torch.cat([top_scores, top_scores.new_zeros(batch, pad)], 1)
        labels = torch.cat([labels, labels.new_zeros(batch, pad)], 1)
        index = torch.cat([index, index.new_zeros(batch, pad)], 1)
    if unbatched:
        return out_boxes[0], top_scores[0], labels[0], index[0]
    return out_boxes, top_scores, labels, index
