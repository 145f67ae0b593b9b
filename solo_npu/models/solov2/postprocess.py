"""SOLOv2 inference after the head: candidate selection, dynamic convolution and Matrix NMS.

mmdet's order (``select_reference``) sends every (cell, class) pair above ``score_thr`` through the
dynamic convolution, drops masks whose area is <= the level's stride, multiplies the category score by
the maskness and keeps the top ``nms_pre`` by that final score for Matrix NMS. Three functions give
that result at different costs:

* ``select_reference`` (eager, one image): the order as written; its cost grows with every pair above
  ``score_thr`` (all 3872 x 80 of them with an early classifier).
* ``select_exact`` (eager, one image; the default of ``predict``): the same instances, found by
  convolving candidates in descending category score, chunk by chunk, and stopping as soon as no
  remaining candidate can enter the top ``nms_pre``. Maskness is a mean of probabilities above
  ``mask_thr`` >= 0.5, so it lies in (0.5, 1] and a final score never exceeds its category score: once
  the next category score is below the ``nms_pre``-th best final score found so far, no later pair can
  displace one. When fewer than ``nms_pre`` pairs pass ``score_thr`` this is one chunk, the cost of
  the bounded order.
* ``select_static`` (batched, fixed shapes; export and TorchScript): the top ``pre_budget`` pairs by
  category score go through the dynamic convolution, the top ``nms_pre`` of them by final score go to
  Matrix NMS; later filters zero scores instead of removing entries. It can also return, per image,
  whether the same bound proves that the budget held the reference's selection.

Pasting the kept masks onto the original image is :mod:`solo_npu.models.solov2.paste`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from solo_npu.models.ops.indexing import take_rows, topk_int32
from solo_npu.models.solov2.matrix_nms import mask_product_dtype, matrix_nms, matrix_nms_by_class
from solo_npu.runtime import prefers_few_shapes
from solo_npu.runtime.onednn import matmul_nt, onednn_applies

__all__ = ["SOLOv2TestConfig", "flatten_predictions", "points_nms", "select_exact", "select_reference",
           "select_static"]


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
    """Eager: ``True`` runs :func:`select_exact` (the reference's instances at a bounded cost), ``False``
    runs :func:`select_reference` (every pair above ``score_thr`` through the dynamic convolution)."""
    pre_budget: int | None = None
    """Static graph: pairs (by category score) that go through the dynamic convolution before the top
    ``nms_pre`` by final score are taken; ``None``: ``2 * nms_pre``."""
    exact_limit: int | None = None
    """Eager: the most pairs :func:`select_exact` convolves per image; ``None``: no limit (exact in every
    regime). When the limit stops it before the bound proves the selection, the result is the
    static budget's and ``predict`` logs a WARNING."""
    exact_chunk: int = 256
    """Eager: pairs per dynamic-convolution chunk after the first ``nms_pre`` (rounded up to 64)."""


def points_nms(heat: Tensor) -> Tensor:
    """Keep only the local maxima of ``heat`` ``[B, C, S, S]`` (scores >= 0) within 2x2 windows (others become 0).

    The reference (mmdet's and SOLO's ``points_nms``) keeps a cell where ``max_pool2d(heat, 2, stride=1,
    padding=1)[..., :-1, :-1] == heat``: its window is the cell and its upper, left and upper-left neighbours, so
    that is ``heat >= max(upper, left, upper-left)``, computed here without the pooling. Both give the same cells in
    any one precision, but an exported graph's MaxPool may run in another than the score it is compared with (ATC's
    mixed precision modes keep an operator in fp32 where it has an fp32 kernel, and MaxPool has fp16 only up to
    CANN 8.0): an exact equality across the two would then keep almost no cell."""
    upper = _shift_down(heat, -2)  # cell (i, j) holds (i - 1, j); -1 on the first row, below any score
    neighbours = torch.maximum(torch.maximum(upper, _shift_down(heat, -1)), _shift_down(upper, -1))
    return heat * (heat >= neighbours).to(heat.dtype)


def _shift_down(x: Tensor, dim: int) -> Tensor:
    """``x`` moved one step along ``dim`` (negative), -1 in the first place: slices and a concatenation, which an
    exported graph keeps at static shapes (``F.pad`` exports its pads through a reversing Slice that the exporter
    does not fold, and every shape after it is then unknown)."""
    first = x.narrow(dim, 0, 1) * 0 - 1
    return torch.cat([first, x.narrow(dim, 0, x.shape[dim] - 1)], dim=dim)


def flatten_predictions(cls_preds: Sequence[Tensor], kernel_preds: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-level head outputs -> category scores ``[B, N, C]`` (sigmoid + points NMS) and kernels ``[B, N, E]``."""
    scores = torch.cat([points_nms(p.float().sigmoid()).flatten(2) for p in cls_preds], dim=2).transpose(1, 2)
    kernels = torch.cat([k.flatten(2) for k in kernel_preds], dim=2).transpose(1, 2)
    return scores, kernels


def _features(mask_feats: Tensor) -> Tensor:
    """One image's mask features ``[E, h, w]`` as ``[h * w, E]`` for :func:`_dynamic_conv` (no copy when
    they are channels-last; otherwise one copy per image where oneDNN multiplies them)."""
    flat = mask_feats.flatten(-2).t()
    return flat.contiguous() if onednn_applies(flat) else flat


def _dynamic_conv(kernels: Tensor, feats: Tensor) -> Tensor:
    """Logits ``[K, h * w]`` of kernels ``[K, E]`` over one image's features from :func:`_features`: the
    dynamic 1x1 convolution as one matrix product (on oneDNN in eager CPU inference)."""
    return matmul_nt(kernels, feats.to(kernels.dtype))


def _masks_and_maskness(logits: Tensor, size: tuple[int, int], mask_thr: float,
                        binary_dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mask probabilities ``[.., K, h, w]``, 0/1 masks, areas and maskness of dynamic-conv logits ``[.., K, h * w]``.

    Maskness is mmdet's ``(probs * masks).sum() / masks.sum()``, summed as ``sum(relu(probs - mask_thr)) +
    mask_thr * area``: the same quantity, summed more accurately (each term ``probs - mask_thr`` is exact for
    ``mask_thr`` = 0.5, Sterbenz, and torch's reductions sum in cascades): within 1e-7 of its float64 value on
    500 R50 masks of 200 x 304 pixels, where a float32 dot product over each mask (the former sum) was 1.3e-4
    off. A probability above ``mask_thr`` is exactly a positive ``probs - mask_thr``,
    so masks and areas are mmdet's bit for bit. The ``K x h x w`` tensors are the largest of post-processing
    (500 x 200 x 304 floats for R50), so the sigmoid runs in place and every reduction runs over one flattened
    axis. The 0/1 masks come in ``binary_dtype``: float32, or int8 (one image, eager CPU: the dtype Matrix NMS
    multiplies there, :func:`mask_product_dtype`), made a few rows at a time that stay in cache (500 R50 masks:
    64 instead of 200 ms for the former comparison, float copy and dot products). Both give the same areas and
    maskness bit for bit (each row is reduced alone, in the same order).
    """
    h, w = size
    probs = logits.float().sigmoid_()
    if binary_dtype == torch.int8:
        binary, area, excess = _binary_rows(probs, mask_thr)
    else:
        excess = (probs - mask_thr).relu()
        binary = (excess > 0).to(probs.dtype)
        area = binary.sum(-1)
        excess = excess.sum(-1)
    maskness = (excess + mask_thr * area) / area.clamp(min=1)
    # reshape, not unflatten: ONNX opset 11 (what older ATC reads) has no export for aten::unflatten
    return probs.reshape(*probs.shape[:-1], h, w), binary.reshape(*binary.shape[:-1], h, w), area, maskness


def _binary_rows(probs: Tensor, mask_thr: float, rows: int = 4) -> tuple[Tensor, Tensor, Tensor]:
    """int8 0/1 masks, areas and ``sum(relu(probs - mask_thr))`` of ``probs [K, P]``, ``rows`` masks at a time."""
    k = probs.shape[0]
    binary = torch.empty(probs.shape, dtype=torch.int8, device=probs.device)
    area, excess = probs.new_empty(k), probs.new_empty(k)
    for start in range(0, k, rows):
        block = (probs[start:start + rows] - mask_thr).relu_()
        excess[start:start + rows] = block.sum(-1)
        block.sign_()  # 1 where probs > mask_thr, else 0
        area[start:start + rows] = block.sum(-1)
        binary[start:start + rows] = block
    return binary, area, excess


def _round_up(n: int, unit: int) -> int:
    return unit * ((n + unit - 1) // unit)


def select_static(scores: Tensor, kernels: Tensor, mask_feats: Tensor, cell_strides: Tensor, cfg: SOLOv2TestConfig,
                  k: int | None = None, nms_pre: int | None = None, by_class: bool = False,
                  pre_budget: int | None = None, return_exact: bool = False) -> tuple[Tensor, ...]:
    """Fixed-shape SOLOv2 selection for a batch.

    The top ``pre_budget`` pairs by category score go through the dynamic convolution; the area filter
    and ``score_thr`` zero the final score (category score x maskness) of the pairs they reject; the top
    ``nms_pre`` by final score go to Matrix NMS. Every filter zeroes scores instead of removing entries,
    so all shapes are fixed and the function traces to TorchScript / ONNX.

    Args:
        scores: ``[B, N, C]`` category scores from :func:`flatten_predictions`.
        kernels: ``[B, N, E]`` dynamic kernels.
        mask_feats: ``[B, E, h, w]`` mask features.
        cell_strides: ``[N]`` stride of each cell's level.
        k: output slots per image (``cfg.max_per_img`` when ``None``).
        nms_pre: candidates per image for Matrix NMS (``cfg.nms_pre`` when ``None``).
        by_class: eager only: Matrix NMS class by class (:func:`matrix_nms_by_class`), which gives the
            same scores for a fraction of the pairwise intersections when candidates spread over classes.
        pre_budget: pairs through the dynamic convolution (``cfg.pre_budget``, else ``2 * cfg.nms_pre``,
            when ``None``; at least ``nms_pre``). ``pre_budget == nms_pre`` is the order that picks the
            candidates by category score alone.
        return_exact: also return ``exact [B]`` bool: ``True`` where the bound proves that the candidates
            are the reference order's (every pair above ``score_thr`` was in the budget, or the best
            category score left out is below the ``nms_pre``-th final score, which no pair left out can
            then exceed).

    Returns:
        ``(mask_probs [B, k, h, w], labels [B, k] int32, scores [B, k])`` sorted by score, plus ``exact``
        when asked; slots without an instance have score 0.
    """
    k = cfg.max_per_img if k is None else k
    b, n, c = scores.shape
    k_pre = max(1, min(cfg.nms_pre if nms_pre is None else nms_pre, n * c))
    if pre_budget is None:
        pre_budget = cfg.pre_budget if cfg.pre_budget is not None else 2 * cfg.nms_pre
    budget = min(max(int(pre_budget), k_pre), n * c)
    extra = 1 if return_exact and budget < n * c else 0  # the best pair left out, for the bound
    top_scores, flat_idx = topk_int32(scores.flatten(1), budget + extra, dim=1)
    next_score = top_scores[:, budget] if extra else top_scores.new_zeros(b)
    top_scores, flat_idx = top_scores[:, :budget], flat_idx[:, :budget]
    cells = torch.div(flat_idx, c, rounding_mode="trunc")  # int32 and never negative: the floor division
    labels = flat_idx - cells * c
    kernels = take_rows(kernels, cells)
    logits = kernels @ mask_feats.to(kernels.dtype).flatten(-2)  # dynamic 1x1 conv as one batched matmul
    probs, binary, area, maskness = _masks_and_maskness(logits, mask_feats.shape[-2:], cfg.mask_thr)
    valid = (top_scores > cfg.score_thr) & (area > cell_strides[cells])
    cand_scores = torch.where(valid, top_scores * maskness, torch.zeros_like(top_scores))
    if budget > k_pre:
        cand_scores, order = topk_int32(cand_scores, k_pre, dim=1)
        probs, binary, area, labels = (take_rows(t, order) for t in (probs, binary, area, labels))

    if by_class:
        decayed = torch.stack([matrix_nms_by_class(binary[i], labels[i], cand_scores[i], area[i], cfg.kernel,
                                                   cfg.sigma) for i in range(b)])
    else:
        decayed = matrix_nms(binary, labels, cand_scores, area, cfg.kernel, cfg.sigma)
    keep = (decayed >= cfg.filter_thr) & (cand_scores > 0)
    decayed = torch.where(keep, decayed, torch.zeros_like(decayed))

    k_out = min(k, k_pre)
    out_scores, order = topk_int32(decayed, k_out, dim=1)
    out_masks, out_labels = take_rows(probs, order), take_rows(labels, order)
    if k_out < k:
        pad = k - k_out
        out_scores = torch.cat([out_scores, out_scores.new_zeros(b, pad)], dim=1)
        out_labels = torch.cat([out_labels, out_labels.new_zeros(b, pad)], dim=1)
        out_masks = torch.cat([out_masks, out_masks.new_zeros(b, pad, *out_masks.shape[2:])], dim=1)
    if not return_exact:
        return out_masks, out_labels, out_scores
    full = valid.sum(1) >= k_pre  # the nms_pre-th final score is a real pair's
    exact = (next_score <= cfg.score_thr) | (full & (next_score < cand_scores.amin(1)))
    return out_masks, out_labels, out_scores, exact


def _rank(final: Tensor, key: Tensor) -> Tensor:
    """Order by ``final`` descending, ties by ``key`` ascending (a stable sort of mmdet's candidate order)."""
    by_key = key.argsort()
    return by_key[final[by_key].sort(descending=True, stable=True).indices]


def select_exact(scores: Tensor, kernels: Tensor, mask_feats: Tensor, cell_strides: Tensor, cfg: SOLOv2TestConfig,
                 limit: int | None = None, chunk: int | None = None,
                 pad: int | None = None) -> tuple[Tensor, Tensor, Tensor, bool]:
    """:func:`select_reference`'s instances for one image, convolving only the pairs that can matter.

    Pairs above ``score_thr`` are taken in descending category score: first ``nms_pre`` of them, then
    chunks of ``chunk``; on an accelerator every chunk is padded to a multiple of 64, so it sees a few
    shapes (on the CPU padding would only add work). After each chunk the best ``nms_pre`` final scores
    so far are kept with their masks; the loop stops when the next category score is below the
    ``nms_pre``-th of them: a final score is
    at most its category score (maskness <= 1), so no later pair can enter. Ties rank as a stable sort of
    mmdet's candidate order (cell-major, class-minor).

    Args:
        scores: ``[N, C]``; kernels: ``[N, E]``; mask_feats: ``[E, h, w]``; cell_strides: ``[N]``.
        limit: convolve at most this many pairs (``cfg.exact_limit`` when ``None``; no limit when both are).
        chunk: pairs per chunk after the first (``cfg.exact_chunk`` when ``None``).
        pad: chunk sizes are multiples of this (``None``: 64 where the device prefers a few shapes,
            :func:`solo_npu.runtime.prefers_few_shapes`, else 1).

    Returns:
        ``(mask_probs [n, h, w], labels [n], scores [n], exact)``; ``exact`` is ``False`` only when
        ``limit`` stopped the loop before the bound proved the selection.
    """
    n, c = scores.shape
    h, w = mask_feats.shape[-2:]
    flat = scores.flatten()
    cand = torch.nonzero(flat > cfg.score_thr).squeeze(1)  # ascending flat index: mmdet's candidate order
    cand_scores, order = flat[cand].sort(descending=True, stable=True)
    cand = cand[order]
    total = cand.numel()
    limit = cfg.exact_limit if limit is None else limit
    stop = total if limit is None else min(total, int(limit))
    nms_pre = cfg.nms_pre
    unit = (64 if prefers_few_shapes(mask_feats.device) else 1) if pad is None else int(pad)
    step = _round_up(cfg.exact_chunk if chunk is None else chunk, unit)
    binary_dtype = mask_product_dtype(mask_feats.device)  # the slots' masks as Matrix NMS will multiply them
    feats = _features(mask_feats)
    # The first chunk's rows are the slots (no copy). Each later chunk's entrants overwrite the rows of the
    # pairs they push out, so no kept mask is copied twice. A row outside the best nms_pre has final -1
    # (real final scores are >= 0).
    slot_probs = slot_binary = slot_final = slot_key = slot_area = None
    done, exact = 0, True
    while done < stop:
        size = min(_round_up(nms_pre, unit) if done == 0 else step, _round_up(stop - done, unit))
        idx = cand[done:min(done + size, stop)]
        real = idx.numel()
        s = cand_scores[done:done + real]
        if real < size:  # pad to the chunk shape; padding is never valid
            idx = torch.cat([idx, idx[:1].expand(size - real)])
            s = torch.cat([s, s.new_zeros(size - real)])
        cells = torch.div(idx, c, rounding_mode="floor")
        probs, binary, area, maskness = _masks_and_maskness(_dynamic_conv(kernels[cells], feats), (h, w),
                                                            cfg.mask_thr, binary_dtype)
        valid = (area > cell_strides[cells]) & (torch.arange(size, device=idx.device) < real)
        if slot_final is None:
            final = torch.where(valid, s * maskness, torch.full_like(s, -1.0))
            best = torch.zeros(size, dtype=torch.bool, device=idx.device)
            best[_rank(final, idx)[:nms_pre]] = True  # padding keeps final -1 whatever its key
            slot_final = torch.where(best, final, torch.full_like(final, -1.0))
            slot_probs, slot_binary, slot_key, slot_area = probs.flatten(-2), binary.flatten(-2), idx, area
        else:
            new = torch.nonzero(valid).squeeze(1)
            new_final = s[new] * maskness[new]
            slots = slot_final.numel()
            pick = _rank(torch.cat([slot_final, new_final]), torch.cat([slot_key, idx[new]]))[:nms_pre]
            chosen = torch.zeros(slots + new.numel(), dtype=torch.bool, device=idx.device)
            chosen[pick] = True
            enter = torch.nonzero(chosen[slots:]).squeeze(1)
            free = torch.nonzero(~chosen[:slots]).squeeze(1)  # at least as many as the entrants
            slot_final[free] = -1.0
            free, rows = free[:enter.numel()], new[enter]
            slot_probs[free] = probs.flatten(-2)[rows]
            slot_binary[free] = binary.flatten(-2)[rows]
            slot_final[free], slot_key[free], slot_area[free] = new_final[enter], idx[rows], area[rows]
        done += real
        # The nms_pre-th best final score so far (-1 until nms_pre are kept) bounds every later pair.
        if done < total and bool(cand_scores[done] < _kth_best(slot_final, nms_pre)):
            break
    else:
        exact = done >= total

    if slot_final is None or not bool((slot_final >= 0).any()):
        empty = mask_feats.new_zeros((0, h, w), dtype=torch.float32)
        return empty, cand.new_zeros(0), cand_scores.new_zeros(0), exact
    # Matrix NMS on the slots where they lie: ties of equal final score rank as the reference's order
    # (final descending, then mmdet's candidate order), through each slot's position in that order.
    used = torch.nonzero(slot_final >= 0).squeeze(1)
    used = used[_rank(slot_final[used], slot_key[used])]
    position = torch.full_like(slot_key, slot_key.numel())
    position[used] = torch.arange(used.numel(), device=used.device)
    labels = slot_key - torch.div(slot_key, c, rounding_mode="floor") * c
    decayed = matrix_nms_by_class(slot_binary, labels, slot_final.clamp(min=0), slot_area, cfg.kernel, cfg.sigma,
                                  tie_rank=position)
    keep = torch.nonzero((decayed >= cfg.filter_thr) & (slot_final >= 0)).squeeze(1)
    keep = keep[_rank(decayed[keep], position[keep])][: cfg.max_per_img]
    return slot_probs[keep].view(-1, h, w), labels[keep], decayed[keep], exact


def _kth_best(values: Tensor, k: int) -> Tensor:
    """The ``k``-th largest of ``values`` (its smallest when it has at most ``k``)."""
    return values.min() if values.numel() <= k else values.topk(k).values[-1]


def select_reference(scores: Tensor, kernels: Tensor, mask_feats: Tensor, cell_strides: Tensor,
                     cfg: SOLOv2TestConfig) -> tuple[Tensor, Tensor, Tensor]:
    """mmdet's order for one image (dynamic shapes): score filter -> dynamic conv -> area filter -> maskness
    -> Matrix NMS (``nms_pre`` applied there) -> ``filter_thr`` -> top ``max_per_img``.

    mmdet sorts with ``torch.sort`` (not stable); here the sorts are stable, which fixes the order of equal
    scores to one that sort may return (the candidate order: cell-major, class-minor).

    Args:
        scores: ``[N, C]``; kernels: ``[N, E]``; mask_feats: ``[E, h, w]``; cell_strides: ``[N]``.

    Returns:
        ``(mask_probs [n, h, w], labels [n], scores [n])`` sorted by score.
    """
    cells, labels = torch.nonzero(scores > cfg.score_thr, as_tuple=True)
    cand_scores = scores[cells, labels]
    probs, binary, area, maskness = _masks_and_maskness(_dynamic_conv(kernels[cells], _features(mask_feats)),
                                                        mask_feats.shape[-2:], cfg.mask_thr)
    keep = area > cell_strides[cells]
    probs, binary, area, labels = probs[keep], binary[keep], area[keep], labels[keep]
    cand_scores = cand_scores[keep] * maskness[keep]
    cand_scores, order = cand_scores.sort(descending=True, stable=True)
    order = order[: cfg.nms_pre]
    cand_scores = cand_scores[: cfg.nms_pre]
    probs, binary, area, labels = probs[order], binary[order], area[order], labels[order]
    decayed = matrix_nms(binary, labels, cand_scores, area, cfg.kernel, cfg.sigma)
    keep = decayed >= cfg.filter_thr
    decayed, probs, labels = decayed[keep], probs[keep], labels[keep]
    decayed, order = decayed.sort(descending=True, stable=True)
    order = order[: cfg.max_per_img]
    return probs[order], labels[order], decayed[: cfg.max_per_img]
