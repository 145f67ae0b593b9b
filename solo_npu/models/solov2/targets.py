"""SOLOv2 target assignment on fixed-shape padded ground truth, vectorised over images, instances and cells.

Semantics follow mmdet's ``SOLOV2Head._get_targets_single``: an instance goes to every level whose
scale range holds ``sqrt(w * h)`` of its box; its centre cell is the grid cell of its mask's centre of
mass; positives are the cells within ``pos_scale`` times the box half-size of that centre, at most
one cell away from the centre cell (3 x 3). Where instances overlap on a cell, the later one's label
wins, while each (instance, cell) pair is a mask-loss positive. Mask targets are the instance masks
resized bilinearly to stride 4 and thresholded at 0.5.

Positive pairs are returned in fixed slots per image with 0/1 weights (no boolean indexing, no
``nonzero``). The number of slots is the smallest size of a short ladder (64, 128, 256, ... up to
``max_pos``) that holds every positive of the batch, so the mask loss computes few padding masks while
an accelerator sees few distinct shapes; that costs one host read of the batch's largest count.
``pos_slots`` pins one size instead (no host read). Positives beyond the slots are counted in
``num_dropped``, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["POS_LADDER", "SOLOv2Targets", "build_solov2_targets", "center_of_mass", "downsample_masks",
           "positive_slots"]

POS_LADDER = (64, 128, 256, 512, 1024, 2048, 4096)


@dataclass
class SOLOv2Targets:
    """Targets of one batch.

    Attributes:
        labels: ``[B, num_cells]`` int64 class of every grid cell, -1 for background.
        pos_cells: ``[B, P]`` int64 global cell index of each positive slot.
        pos_instances: ``[B, P]`` int64 ground-truth slot (0..M-1) of each positive slot.
        pos_weights: ``[B, P]`` float 1 for a real positive, 0 for padding.
        mask_targets: ``[B, M, H/4, W/4]`` float 0/1 instance masks at stride 4.
        num_dropped: ``[]`` int number of positive pairs (whole batch) that did not fit into the slots.
    """

    labels: Tensor
    pos_cells: Tensor
    pos_instances: Tensor
    pos_weights: Tensor
    mask_targets: Tensor
    num_dropped: Tensor


def center_of_mass(masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Centre of mass ``(cy, cx)`` in pixel indices and pixel count of masks ``[..., H, W]``."""
    h, w = masks.shape[-2:]
    rows = masks.sum(-1, dtype=torch.float32)
    cols = masks.sum(-2, dtype=torch.float32)
    area = rows.sum(-1)
    norm = area.clamp(min=1e-6)
    cy = (rows * torch.arange(h, device=masks.device, dtype=torch.float32)).sum(-1) / norm
    cx = (cols * torch.arange(w, device=masks.device, dtype=torch.float32)).sum(-1) / norm
    return cy, cx, area


# The 3 x 3 offsets in the order pairs are listed (row -1, 0, 1 by column -1, 0, 1), centre (index 4) first.
_CENTRE_FIRST = (4, 1, 3, 5, 7, 0, 2, 6, 8)


def _turn_order(weights: Tensor, levels: int, m: int) -> Tensor:
    """The positive pairs (``weights`` 1, listed level, instance, offset) in turns over the instances: sorted by
    their rank within their instance (centre cells first, then the other offsets, finer level first), ties in
    list order; then the other pairs. Static shapes only (a sort of ``[B, L*M*9]``)."""
    b = weights.shape[0]
    ok = weights.view(b, levels, m, 9)[..., list(_CENTRE_FIRST)]  # [B, L, M, 9], centre first
    per_inst = ok.permute(0, 2, 3, 1).reshape(b, m, 9 * levels)  # an instance's pairs: offset-major, then level
    rank = (per_inst.cumsum(-1) - 1).view(b, m, 9, levels).permute(0, 3, 1, 2)  # back to [B, L, M, 9(centre first)]
    inverse = [_CENTRE_FIRST.index(k) for k in range(9)]
    rank = rank[..., inverse].reshape(b, -1)  # [B, L*M*9] in list order
    n = weights.shape[1]
    key = torch.where(weights > 0, rank, torch.full_like(rank, float(9 * levels))) * n
    key = key + torch.arange(n, device=weights.device, dtype=key.dtype)
    return torch.sort(key, dim=1).indices


def downsample_masks(masks: Tensor, stride: int) -> Tensor:
    """Binary masks ``[..., H, W]`` -> float 0/1 ``[..., H/stride, W/stride]``.

    Equal to bilinear resizing (half-pixel centres, no antialiasing, as cv2 ``INTER_LINEAR`` and
    ``F.interpolate``) followed by ``>= 0.5``: for an even stride every output pixel interpolates the
    two middle input pixels of its block on each axis, so only those four pixels are read and the
    full-resolution masks are never converted to float.
    """
    if stride == 1:
        return masks.float()
    if stride % 2:
        raise ValueError(f"mask stride must be 1 or even, got {stride}")
    a, c = stride // 2 - 1, stride // 2
    m = masks.to(torch.uint8)
    total = m[..., a::stride, a::stride] + m[..., a::stride, c::stride] + m[..., c::stride, a::stride]
    total = total + m[..., c::stride, c::stride]
    return (total >= 2).float()


def positive_slots(max_count: int, max_pos: int) -> int:
    """Slots for a batch whose largest per-image positive count is ``max_count``: the smallest ladder size
    (:data:`POS_LADDER` below ``max_pos``, then ``max_pos``) that holds it, or ``max_pos``."""
    for size in (*(v for v in POS_LADDER if v < max_pos), max_pos):
        if max_count <= size:
            return size
    return max_pos


def _grid_index(pos: Tensor, size: float, grid: int) -> Tensor:
    # Same arithmetic as mmdet: (pos / size) // (1 / grid), truncating.
    return torch.div(pos / size, 1.0 / grid, rounding_mode="trunc")


@torch.no_grad()
def build_solov2_targets(gt_masks: Tensor, gt_labels: Tensor, gt_boxes: Tensor, gt_valid: Tensor,
                         num_grids: Sequence[int], scale_ranges: Sequence[Sequence[float]], pos_scale: float = 0.2,
                         mask_stride: int = 4, max_pos: int = 1024, pos_slots: int | None = None) -> SOLOv2Targets:
    """Assign grid cells and mask targets for a padded batch.

    Args:
        gt_masks: ``[B, M, H, W]`` uint8/bool instance masks on the canvas (H, W divisible by ``mask_stride``).
        gt_labels: ``[B, M]`` labels ``0..C-1`` (``-1`` for empty slots).
        gt_boxes: ``[B, M, 4]`` x1, y1, x2, y2 in canvas pixels.
        gt_valid: ``[B, M]`` which slots hold an instance.
        num_grids: grid size S per level.
        scale_ranges: ``(lower, upper)`` of ``sqrt(w * h)`` per level (both inclusive).
        pos_scale: centre-region size relative to the box half-size.
        mask_stride: stride of the mask features.
        max_pos: the most positive (instance, cell) slots per image: the top of the slot ladder.
        pos_slots: a fixed number of slots (no ladder, no host read); ``None``: the ladder.
    """
    b, m, h, w = gt_masks.shape
    if h % mask_stride or w % mask_stride:
        raise ValueError(f"mask canvas {h}x{w} is not a multiple of the mask stride {mask_stride}")
    device = gt_masks.device
    cy, cx, area = center_of_mass(gt_masks)
    boxes = gt_boxes.float()
    bw = (boxes[..., 2] - boxes[..., 0]).clamp(min=0)
    bh = (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    gt_scale = torch.sqrt(bw * bh)
    usable = gt_valid & (area > 0) & (gt_labels >= 0)
    half_w = 0.5 * bw * pos_scale
    half_h = 0.5 * bh * pos_scale
    # mmdet uses the mask-feature size times the stride as the image size; equal to (h, w) here.
    up_h = float((h // mask_stride) * mask_stride)
    up_w = float((w // mask_stride) * mask_stride)
    inst_rank = torch.arange(1, m + 1, device=device, dtype=torch.float32).view(1, m, 1)
    offsets = torch.tensor([-1, 0, 1], device=device, dtype=torch.float32)
    d_row = offsets.repeat_interleave(3).view(1, 1, 9)
    d_col = offsets.repeat(3).view(1, 1, 9)

    labels_levels, cells_levels, weights_levels = [], [], []
    cell_offset = 0
    for grid, (lower, upper) in zip(num_grids, scale_ranges):
        in_level = usable & (gt_scale >= lower) & (gt_scale <= upper)
        coord_h = _grid_index(cy, up_h, grid)
        coord_w = _grid_index(cx, up_w, grid)
        top = torch.maximum(_grid_index(cy - half_h, up_h, grid).clamp(min=0), coord_h - 1)
        down = torch.minimum(_grid_index(cy + half_h, up_h, grid).clamp(max=grid - 1), coord_h + 1)
        left = torch.maximum(_grid_index(cx - half_w, up_w, grid).clamp(min=0), coord_w - 1)
        right = torch.minimum(_grid_index(cx + half_w, up_w, grid).clamp(max=grid - 1), coord_w + 1)

        # Category targets: the last instance covering a cell sets its label.
        idx = torch.arange(grid, device=device, dtype=torch.float32)
        row_in = (idx.view(1, 1, grid) >= top.unsqueeze(-1)) & (idx.view(1, 1, grid) <= down.unsqueeze(-1))
        col_in = (idx.view(1, 1, grid) >= left.unsqueeze(-1)) & (idx.view(1, 1, grid) <= right.unsqueeze(-1))
        cover = (row_in.unsqueeze(-1) & col_in.unsqueeze(-2)).flatten(2) & in_level.unsqueeze(-1)  # [B, M, S*S]
        winner = (cover.float() * inst_rank).amax(dim=1) - 1  # [B, S*S], -1 where no instance
        win_label = torch.gather(gt_labels.clamp(min=0), 1, winner.clamp(min=0).long())
        labels_levels.append(torch.where(winner >= 0, win_label, torch.full_like(win_label, -1)))

        # Positive (instance, cell) pairs: the 3 x 3 neighbourhood of the centre cell, clipped to the region.
        rows = coord_h.unsqueeze(-1) + d_row
        cols = coord_w.unsqueeze(-1) + d_col
        ok = (rows >= top.unsqueeze(-1)) & (rows <= down.unsqueeze(-1))
        ok &= (cols >= left.unsqueeze(-1)) & (cols <= right.unsqueeze(-1)) & in_level.unsqueeze(-1)
        cell = (rows.clamp(0, grid - 1) * grid + cols.clamp(0, grid - 1)).long() + cell_offset
        cells_levels.append(cell.flatten(1))
        weights_levels.append(ok.float().flatten(1))
        cell_offset += grid * grid

    labels = torch.cat(labels_levels, dim=1)
    cells = torch.cat(cells_levels, dim=1)  # [B, L*M*9], ordered level, instance, offset
    weights = torch.cat(weights_levels, dim=1)
    inst = torch.arange(m, device=device).view(1, 1, m, 1).expand(b, len(num_grids), m, 9).reshape(b, -1)
    # Compact the positives into the slots (stable: keeps level, instance, offset order).
    num_pairs = weights.shape[1]
    if pos_slots is None:
        slots = positive_slots(int(weights.sum(1).max()) if b else 0, max_pos)  # one host read
    else:
        slots = int(pos_slots)
    order = torch.sort(weights, dim=1, descending=True, stable=True).indices
    # An image with more positives than slots keeps them in turns over its instances, centre cells first: each
    # instance's k-th pair before any instance's (k+1)-th. In level order the coarse levels (the largest
    # objects) came last and lost every pair first. Images that fit keep the level order.
    over = weights.sum(1, keepdim=True) > slots
    turns = _turn_order(weights, len(num_grids), m)
    order = torch.where(over, turns, order)
    if num_pairs < slots:
        order = torch.cat([order, order[:, :1].expand(b, slots - num_pairs)], dim=1)
    order = order[:, :slots]
    slot_ok = (torch.arange(slots, device=device) < num_pairs).float()
    keep_w = torch.gather(weights, 1, order) * slot_ok
    num_dropped = (weights.sum() - keep_w.sum()).round().long()
    mask_targets = downsample_masks(gt_masks, mask_stride)
    return SOLOv2Targets(labels=labels, pos_cells=torch.gather(cells, 1, order),
                         pos_instances=torch.gather(inst, 1, order), pos_weights=keep_w,
                         mask_targets=mask_targets, num_dropped=num_dropped)
