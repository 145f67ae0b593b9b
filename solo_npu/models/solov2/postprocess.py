"""SOLOv2 inference: candidate selection, dynamic convolution, Matrix NMS and mask pasting.

Two orders share the same steps:

* ``select_static`` (the default for eager prediction and the only one for export): the top ``nms_pre``
  (cell, class) pairs by category score go through the dynamic convolution; every later filter
  (``score_thr``, mask area <= stride, ``filter_thr``) zeroes scores instead of removing entries, so all
  shapes are fixed and the function traces to TorchScript / ONNX. It returns ``k`` slots per image.
* ``select_reference`` (eager, one image): mmdet's order, where every pair above ``score_thr`` goes
  through the dynamic convolution and ``nms_pre`` applies inside Matrix NMS. Kept for measurement: with
  an untrained classifier it convolves all cells x classes.

When no more than ``nms_pre`` pairs pass ``score_thr`` both orders give the same instances.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from solo_npu.models.solov2.matrix_nms import matrix_nms

__all__ = ["SOLOv2TestConfig", "flatten_predictions", "masks_to_boxes", "paste_masks", "points_nms",
           "select_reference", "select_static"]


@dataclass
class SOLOv2TestConfig:
    """Inference settings (defaults: mmdet's SOLOv2 test config)."""

    nms_pre: int = 500
    score_thr: float = 0.1
    mask_thr: float = 0.5
    filter_thr: float = 0.05
    kernel: str = "gaussian"
    sigma: float = 2.0
    max_per_img: int = 100
    bound_before_conv: bool = True


def points_nms(heat: Tensor) -> Tensor:
    """Keep only the local maxima of ``heat`` ``[B, C, S, S]`` within 2x2 windows (others become 0)."""
    hmax = F.max_pool2d(heat, kernel_size=2, stride=1, padding=1)[..., :-1, :-1]
    return heat * (hmax == heat).to(heat.dtype)


def flatten_predictions(cls_preds: Sequence[Tensor], kernel_preds: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-level head outputs -> category scores ``[B, N, C]`` (sigmoid + points NMS) and kernels ``[B, N, E]``."""
    scores = torch.cat([points_nms(p.float().sigmoid()).flatten(2) for p in cls_preds], dim=2).transpose(1, 2)
    kernels = torch.cat([k.flatten(2) for k in kernel_preds], dim=2).transpose(1, 2)
    return scores, kernels


def _take(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b, i], ...]`` for ``x`` ``[B, N, ...]`` and ``index`` ``[B, K]``."""
    idx = index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
    return torch.gather(x, 1, idx)


def _masks_and_maskness(kernels: Tensor, mask_feats: Tensor, mask_thr: float) -> tuple[Tensor, Tensor, Tensor]:
    h, w = mask_feats.shape[-2:]
    logits = kernels @ mask_feats.to(kernels.dtype).flatten(-2)  # dynamic 1x1 conv as one (batched) matmul
    probs = logits.unflatten(-1, (h, w)).float().sigmoid()
    binary = (probs > mask_thr).to(probs.dtype)
    area = binary.sum((-1, -2))
    maskness = (probs * binary).sum((-1, -2)) / area.clamp(min=1)
    return probs, binary, area, maskness


def select_static(scores: Tensor, kernels: Tensor, mask_feats: Tensor, cell_strides: Tensor, cfg: SOLOv2TestConfig,
                  k: int | None = None, nms_pre: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Fixed-shape SOLOv2 selection for a batch.

    Args:
        scores: ``[B, N, C]`` category scores from :func:`flatten_predictions`.
        kernels: ``[B, N, E]`` dynamic kernels.
        mask_feats: ``[B, E, h, w]`` mask features.
        cell_strides: ``[N]`` stride of each cell's level.
        k: output slots per image (``cfg.max_per_img`` when ``None``).
        nms_pre: candidates per image (``cfg.nms_pre`` when ``None``). Eager callers may lower it to the
            number of pairs above ``score_thr``: the extra candidates are zeroed anyway, so the result
            is the same.

    Returns:
        ``(mask_probs [B, k, h, w], labels [B, k] int64, scores [B, k])`` sorted by score; slots
        without an instance have score 0.
    """
    k = cfg.max_per_img if k is None else k
    b, n, c = scores.shape
    k_pre = max(1, min(cfg.nms_pre if nms_pre is None else nms_pre, n * c))
    cand_scores, flat_idx = scores.flatten(1).topk(k_pre, dim=1)
    cells = torch.div(flat_idx, c, rounding_mode="floor")
    labels = flat_idx - cells * c
    probs, binary, area, maskness = _masks_and_maskness(_take(kernels, cells), mask_feats, cfg.mask_thr)
    valid = (cand_scores > cfg.score_thr) & (area > cell_strides[cells])
    cand_scores = torch.where(valid, cand_scores * maskness, torch.zeros_like(cand_scores))

    decayed = matrix_nms(binary, labels, cand_scores, area, cfg.kernel, cfg.sigma)
    keep = (decayed >= cfg.filter_thr) & (cand_scores > 0)
    decayed = torch.where(keep, decayed, torch.zeros_like(decayed))

    k_out = min(k, k_pre)
    out_scores, order = decayed.topk(k_out, dim=1)
    out_masks, out_labels = _take(probs, order), _take(labels, order)
    if k_out < k:
        pad = k - k_out
        out_scores = torch.cat([out_scores, out_scores.new_zeros(b, pad)], dim=1)
        out_labels = torch.cat([out_labels, out_labels.new_zeros(b, pad)], dim=1)
        out_masks = torch.cat([out_masks, out_masks.new_zeros(b, pad, *out_masks.shape[2:])], dim=1)
    return out_masks, out_labels, out_scores


def select_reference(scores: Tensor, kernels: Tensor, mask_feats: Tensor, cell_strides: Tensor,
                     cfg: SOLOv2TestConfig) -> tuple[Tensor, Tensor, Tensor]:
    """mmdet's order for one image (dynamic shapes): score filter -> dynamic conv -> area filter -> maskness
    -> Matrix NMS (``nms_pre`` applied there) -> ``filter_thr`` -> top ``max_per_img``.

    Args:
        scores: ``[N, C]``; kernels: ``[N, E]``; mask_feats: ``[E, h, w]``; cell_strides: ``[N]``.

    Returns:
        ``(mask_probs [n, h, w], labels [n], scores [n])`` sorted by score.
    """
    cells, labels = torch.nonzero(scores > cfg.score_thr, as_tuple=True)
    cand_scores = scores[cells, labels]
    probs, binary, area, maskness = _masks_and_maskness(kernels[cells], mask_feats, cfg.mask_thr)
    keep = area > cell_strides[cells]
    probs, binary, area, labels = probs[keep], binary[keep], area[keep], labels[keep]
    cand_scores = cand_scores[keep] * maskness[keep]
    cand_scores, order = cand_scores.sort(descending=True)
    order = order[: cfg.nms_pre]
    cand_scores = cand_scores[: cfg.nms_pre]
    probs, binary, area, labels = probs[order], binary[order], area[order], labels[order]
    decayed = matrix_nms(binary, labels, cand_scores, area, cfg.kernel, cfg.sigma)
    keep = decayed >= cfg.filter_thr
    decayed, probs, labels = decayed[keep], probs[keep], labels[keep]
    decayed, order = decayed.sort(descending=True)
    order = order[: cfg.max_per_img]
    return probs[order], labels[order], decayed[: cfg.max_per_img]


def paste_masks(masks: Tensor, meta: dict[str, Any], mask_thr: float = 0.5) -> Tensor:
    """Low-resolution mask probabilities ``[N, h, w]`` (canvas / 4) -> bool masks ``[N, H0, W0]``.

    Upsamples to the canvas, crops the padding (``meta["pad"]``, ``meta["img_shape"]``), resizes to
    ``meta["ori_shape"]`` (bilinear, half-pixel centres) and thresholds.
    """
    h0, w0 = (int(v) for v in meta["ori_shape"][:2])
    if masks.shape[0] == 0:
        return torch.zeros((0, h0, w0), dtype=torch.bool, device=masks.device)
    h, w = masks.shape[-2:]
    hc, wc = (int(v) for v in meta.get("canvas", (4 * h, 4 * w)))
    top, left = (int(v) for v in meta.get("pad", (0, 0)))
    ih, iw = (int(v) for v in meta["img_shape"][:2])
    sy, sx = hc / h, wc / w
    # Upsample only the low-resolution rows/columns under the image (plus one of margin, so that the
    # interpolation near the crop edge reads the same neighbours as a full-canvas upsample would).
    r0, c0 = max(0, int(top / sy) - 1), max(0, int(left / sx) - 1)
    r1, c1 = min(h, int(math.ceil((top + ih) / sy)) + 1), min(w, int(math.ceil((left + iw) / sx)) + 1)
    out = []
    for chunk in masks.float().split(32):  # bounds the memory of the canvas-size intermediate
        part = chunk[:, r0:r1, c0:c1].unsqueeze(0)
        up = F.interpolate(part, scale_factor=(sy, sx), mode="bilinear", align_corners=False)
        y0, x0 = top - int(round(r0 * sy)), left - int(round(c0 * sx))
        up = up[..., y0:y0 + ih, x0:x0 + iw]
        if (ih, iw) != (h0, w0):
            up = F.interpolate(up, size=(h0, w0), mode="bilinear", align_corners=False)
        out.append(up[0] > mask_thr)
    return torch.cat(out)


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight boxes ``[N, 4]`` (x1, y1, x2, y2; x2/y2 exclusive) around bool masks ``[N, H, W]``; 0 for empty masks."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.float32, device=masks.device)
    cols = masks.any(dim=1).float()  # [N, W]
    rows = masks.any(dim=2).float()  # [N, H]
    xs = torch.arange(w, device=masks.device, dtype=torch.float32)
    ys = torch.arange(h, device=masks.device, dtype=torch.float32)
    x1 = torch.where(cols > 0, xs, torch.full_like(xs, w)).amin(1)
    x2 = torch.where(cols > 0, xs + 1, torch.zeros_like(xs)).amax(1)
    y1 = torch.where(rows > 0, ys, torch.full_like(ys, h)).amin(1)
    y2 = torch.where(rows > 0, ys + 1, torch.zeros_like(ys)).amax(1)
    boxes = torch.stack([x1, y1, x2, y2], dim=1)
    return torch.where((cols.sum(1) > 0).unsqueeze(1), boxes, torch.zeros_like(boxes))
