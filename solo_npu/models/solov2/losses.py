"""SOLOv2 losses: sigmoid focal loss on the category grids, dice loss on the dynamic-conv masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from solo_npu.models.solov2.targets import SOLOv2Targets

__all__ = ["dice_loss", "sigmoid_focal_loss", "solov2_loss"]


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, gamma: float = 2.0, alpha: float = 0.25) -> Tensor:
    """Element-wise sigmoid focal loss (Lin et al.) for float 0/1 ``targets`` of ``logits``' shape."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    pt = (1 - p) * targets + p * (1 - targets)
    weight = (alpha * targets + (1 - alpha) * (1 - targets)) * pt.pow(gamma)
    return ce * weight


def dice_loss(mask_logits: Tensor, targets: Tensor, eps: float = 1e-3) -> Tensor:
    """``1 - 2ab / (a^2 + b^2 + 2 eps)`` per mask over the last two dimensions (``sigmoid`` applied here)."""
    p = mask_logits.sigmoid().flatten(-2)
    t = targets.flatten(-2)
    inter = (p * t).sum(-1)
    denom = (p * p).sum(-1) + eps + (t * t).sum(-1) + eps
    return 1 - 2 * inter / denom


def solov2_loss(cls_preds: list[Tensor], kernel_preds: list[Tensor], mask_feats: Tensor, targets: SOLOv2Targets,
                gamma: float = 2.0, alpha: float = 0.25, cls_weight: float = 1.0,
                mask_weight: float = 3.0, mask_norm: str = "cells") -> dict[str, Tensor]:
    """Focal loss over all cells and classes normalised by ``num_pos + 1`` (the positive cells); dice loss summed
    over the positive (instance, cell) pairs and divided by ``mask_norm``'s count: ``"cells"`` the positive cells,
    as mmdetection's SOLOV2Head (``loss_mask = torch.cat(loss_mask).sum() / num_pos``), or ``"pairs"`` the pairs,
    a mean, as SOLO's solov2_head.py (``loss_ins = torch.cat(loss_ins).mean()``) and the Ascend ModelZoo port of it.
    The two differ where instances share a cell of one level (more pairs than cells). When pairs were dropped
    (more positives than slots), the kept pairs' sum is scaled to all of them.

    Args:
        cls_preds: per level ``[B, C, S, S]`` logits.
        kernel_preds: per level ``[B, E, S, S]`` dynamic 1x1 kernels.
        mask_feats: ``[B, E, h, w]`` mask features (stride 4).
        targets: from :func:`build_solov2_targets`.
    """
    b, num_classes = cls_preds[0].shape[:2]
    cls_logits = torch.cat([p.flatten(2) for p in cls_preds], dim=2).transpose(1, 2).float()  # [B, N, C]
    kernels = torch.cat([k.flatten(2) for k in kernel_preds], dim=2).transpose(1, 2)  # [B, N, E]

    labels = targets.labels
    classes = torch.arange(num_classes, device=labels.device).view(1, 1, -1)
    onehot = (labels.unsqueeze(-1) == classes).to(cls_logits.dtype)
    num_pos = (labels >= 0).float().sum()
    loss_cls = sigmoid_focal_loss(cls_logits, onehot, gamma, alpha).sum() / (num_pos + 1)

    e = kernels.shape[-1]
    pos_kernels = torch.gather(kernels, 1, targets.pos_cells.unsqueeze(-1).expand(-1, -1, e))  # [B, P, E]
    mask_logits = torch.einsum("bpe,behw->bphw", pos_kernels, mask_feats).float()
    hm, wm = mask_logits.shape[-2:]
    idx = targets.pos_instances.view(b, -1, 1, 1).expand(-1, -1, hm, wm)
    pos_targets = torch.gather(targets.mask_targets[..., :hm, :wm], 1, idx)
    dice = (dice_loss(mask_logits, pos_targets) * targets.pos_weights).sum()
    # Pairs beyond the slots (counted in num_dropped) have no dice term: the kept ones stand for them all, so the
    # mask loss keeps the scale of the full sum (a factor of exactly 1 when nothing is dropped).
    kept = targets.pos_weights.sum()
    pairs = kept + targets.num_dropped.to(kept.dtype)
    dice = dice * (pairs / kept.clamp(min=1))
    loss_mask = dice / (pairs if mask_norm == "pairs" else num_pos).clamp(min=1)
    return {"loss_cls": loss_cls * cls_weight, "loss_mask": loss_mask * mask_weight}
