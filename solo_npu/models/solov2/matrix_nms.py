"""Matrix NMS (SOLOv2): every mask's score decays by its overlap with higher-scored masks of its class."""

from __future__ import annotations

import torch
from torch import Tensor

from solo_npu.models.ops.factories import arange_on
from solo_npu.runtime import compat
from solo_npu.runtime.onednn import matmul_nt

__all__ = ["mask_product_dtype", "matrix_nms", "matrix_nms_by_class", "self_intersections"]


def mask_product_dtype(device: torch.device) -> torch.dtype:
    """The dtype in which :func:`self_intersections` multiplies one image's 0/1 masks on ``device`` in eager
    mode: int8 (int32 sums) where the device has an int8 matrix product (:func:`has_int8_matmul`: the CPU
    from torch 2.2 on), float32 elsewhere. Masks already in it are multiplied without a conversion."""
    return torch.int8 if compat.has_int8_matmul(torch.device(device).type) else torch.float32


def self_intersections(flat: Tensor, block: int = 128) -> Tensor:
    """``flat @ flat^T`` for 0/1 masks ``[..., N, P]`` of any dtype: pairwise intersections ``[..., N, N]`` float32.

    Eager, one image (``[N, P]``), the masks are multiplied in :func:`mask_product_dtype`: as int8 with
    int32 sums on the CPU, several times faster than in float32 (where the CPU has no int8 product, the float
    product runs on oneDNN, :func:`solo_npu.runtime.onednn.matmul_nt`). Both sums are exact (0/1 products, fewer
    than 2^24 of them), so every path gives the same matrix bit for bit. The matrix is symmetric, so in
    eager mode only the blocks on and above the diagonal are multiplied (rows in blocks of ``block``) and
    mirrored: about half the multiply-accumulates for large ``N``. Traced and exported graphs keep the
    single float matmul.
    """
    graph = torch.jit.is_tracing() or torch.jit.is_scripting()
    if graph:
        return _intersections(flat, block, graph)
    # Under autocast (an evaluation with amp.enabled) the float product would run in fp16 or bf16: sums above
    # 2048 (fp16) or 256 (bf16) rounded, above 65504 inf in fp16, which decays a mask to 0. They stay float32.
    with torch.autocast(flat.device.type, enabled=False):
        return _intersections(flat, block, graph)


def _intersections(flat: Tensor, block: int, graph: bool) -> Tensor:
    if not graph and flat.dim() == 2 and mask_product_dtype(flat.device) == torch.int8:
        q = flat.to(torch.int8)

        def product(a: Tensor, b: Tensor) -> Tensor:
            return torch._int_mm(a, b.t()).float()
    else:
        q = flat.float()

        def product(a: Tensor, b: Tensor) -> Tensor:
            return matmul_nt(a, b) if a.dim() == 2 else a @ b.transpose(-1, -2)  # matmul_nt: oneDNN on the CPU
    n = q.shape[-2]
    if graph or n <= 2 * block:
        return product(q, q)
    inter = torch.empty(*q.shape[:-2], n, n, dtype=torch.float32, device=q.device)
    for start in range(0, n, block):
        part = product(q[..., start:start + block, :], q[..., start:, :])  # [..., b, n - start]
        inter[..., start:start + block, start:] = part
        inter[..., start:, start:start + block] = part.transpose(-1, -2)
    return inter


def matrix_nms(masks: Tensor, labels: Tensor, scores: Tensor, mask_area: Tensor | None = None,
               kernel: str = "gaussian", sigma: float = 2.0, tie_rank: Tensor | None = None) -> Tensor:
    """Decayed scores: every mask is decayed by the higher-ranked masks of its class.

    Mask ``i`` ranks above mask ``j`` when its score is higher, or equal with ``i < j`` (with
    ``tie_rank``: ``tie_rank[i] < tie_rank[j]``); the inputs need not be sorted (no sort or gather of
    the masks is needed). Works with or without a leading
    batch dimension and with static shapes only, so it traces and exports as is. Padding entries with
    score 0 rank below every real one and therefore never decay them.

    Args:
        masks: ``[..., N, H, W]`` (or ``[..., N, HW]``) binary masks.
        labels: ``[..., N]`` class of each mask.
        scores: ``[..., N]`` scores.
        mask_area: ``[..., N]`` pixel count of each mask (computed when ``None``).
        kernel: ``"gaussian"`` (``exp(-sigma * iou^2)``) or ``"linear"`` (``1 - iou``).
        sigma: width of the gaussian kernel.
        tie_rank: ``[..., N]`` distinct integers that order masks of equal score (the input order when ``None``).

    Returns:
        ``[..., N]`` decayed scores in the input order.
    """
    n = scores.shape[-1]
    if n == 0:
        return scores
    flat = masks.reshape(*masks.shape[: scores.dim()], -1)
    if mask_area is None:
        mask_area = flat.sum(-1, dtype=torch.float32)
    mask_area = mask_area.float()
    inter = self_intersections(flat)  # [..., N, N]
    # area_i + (area_j - inter): the same integer in fp32, and never above the mask's cell count, where the sum of two
    # areas first (mmdet's order) overflows fp16 (65504) for two large masks of an 800x1216 input (60800 cells) when
    # an exported graph runs in fp16 (ATC's default force_fp16)
    union = mask_area.unsqueeze(-1) + (mask_area.unsqueeze(-2) - inter)
    # traced into the export graph: no device constant; int32, which CANN's Less takes (ops/indexing.py)
    ar = arange_on(scores, n, torch.int32) if tie_rank is None else tie_rank
    s_i, s_j = scores.unsqueeze(-1), scores.unsqueeze(-2)
    upper = (s_i > s_j) | ((s_i == s_j) & (ar.unsqueeze(-1) < ar.unsqueeze(-2)))  # (i, j): mask i ranks above j
    same = labels.unsqueeze(-1) == labels.unsqueeze(-2)
    decay_iou = torch.where(upper & same, inter / union.clamp(min=1e-6), torch.zeros_like(inter))
    # For each mask i, the largest IoU it has with any higher-ranked mask of its class.
    compensate_iou = decay_iou.amax(dim=-2).unsqueeze(-1)  # [..., N, 1], indexed by the decaying mask i
    if kernel == "gaussian":
        decay = torch.exp(-sigma * (decay_iou.pow(2) - compensate_iou.pow(2)))
    elif kernel == "linear":
        decay = (1 - decay_iou) / (1 - compensate_iou).clamp(min=1e-6)
    else:
        raise ValueError(f"unknown matrix NMS kernel {kernel!r}; expected 'gaussian' or 'linear'")
    coefficient = decay.amin(dim=-2)
    return scores * coefficient


def matrix_nms_by_class(masks: Tensor, labels: Tensor, scores: Tensor, mask_area: Tensor | None = None,
                        kernel: str = "gaussian", sigma: float = 2.0, tie_rank: Tensor | None = None) -> Tensor:
    """:func:`matrix_nms` of one image (``masks [N, ...]``), computed class by class.

    Only pairs of the same class decay each other, and a mask of another class contributes a factor
    >= 1 that never wins the minimum (the top-ranked mask contributes exactly 1 to every column), so
    each class can be taken on its own: the intersections cost ``sum_c n_c^2`` pixel products instead
    of ``N^2``. Entries with score <= 0 cannot decay anything and decay to 0 themselves, so they are
    skipped. When one class holds most candidates (``sum_c n_c^2 > N^2 / 2``) the whole matrix is
    computed instead, which saves copying the masks class by class. The result equals
    :func:`matrix_nms` bit for bit (the same arithmetic on the same pairs), ``tie_rank`` included. Eager
    only: the loop over classes depends on the data.
    """
    if masks.dim() < 2 or labels.dim() != 1:
        raise ValueError(f"matrix_nms_by_class takes one image: masks [N, ...], labels [N]; got {tuple(masks.shape)}")
    flat = masks.reshape(masks.shape[0], -1)
    if mask_area is None:
        mask_area = flat.sum(-1, dtype=torch.float32)
    flat = flat.to(mask_product_dtype(flat.device))  # what self_intersections multiplies, gathered class by class
    out = torch.zeros_like(scores)
    live = torch.nonzero(scores > 0).squeeze(1)
    if live.numel() == 0:
        return out
    live_labels = labels[live]
    classes, order = live_labels.sort(stable=True)  # grouped by class, input order kept inside a class
    live = live[order]
    counts = torch.unique_consecutive(classes, return_counts=True)[1].tolist()  # one host read
    if sum(c * c for c in counts) > 0.5 * len(live) ** 2:
        # Mostly one class: the whole matrix costs about as much and needs no copy of the masks (the
        # scores are the same either way).
        return matrix_nms(flat, labels, scores, mask_area, kernel, sigma, tie_rank)
    if tie_rank is None:
        tie_rank = torch.arange(len(scores), device=scores.device)
    for idx in live.split(counts):
        out[idx] = matrix_nms(flat[idx], labels[idx], scores[idx], mask_area[idx], kernel, sigma, tie_rank[idx])
    return out
