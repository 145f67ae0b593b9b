"""SOLOv2 target assignment: hand-built cases and parity with a per-instance loop written here."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from solo_npu.models.solov2.targets import build_solov2_targets, downsample_masks, positive_slots

GRIDS = (20, 16, 12, 8, 6)
RANGES = ((1, 16), (8, 32), (16, 64), (32, 128), (64, 2048))


def _batch(boxes_per_image: list[list[tuple[int, int, int, int]]], labels: list[list[int]], h: int, w: int, m: int):
    b = len(boxes_per_image)
    masks = torch.zeros(b, m, h, w, dtype=torch.uint8)
    boxes = torch.zeros(b, m, 4)
    gl = torch.full((b, m), -1, dtype=torch.long)
    valid = torch.zeros(b, m, dtype=torch.bool)
    for i, (bs, ls) in enumerate(zip(boxes_per_image, labels)):
        for j, ((x1, y1, x2, y2), lab) in enumerate(zip(bs, ls)):
            masks[i, j, y1:y2, x1:x2] = 1
            boxes[i, j] = torch.tensor([x1, y1, x2, y2], dtype=torch.float32)
            gl[i, j] = lab
            valid[i, j] = True
    return masks, gl, boxes, valid


def reference_targets(masks, labels, boxes, valid, grids, ranges, pos_scale=0.2, stride=4):
    """mmdet's per-instance loop for one image: (labels per level, list of (global cell, instance))."""
    h, w = masks.shape[-2:]
    out_labels, pairs, offset = [], [], 0
    for grid, (lo, hi) in zip(grids, ranges):
        lab = torch.full((grid, grid), -1, dtype=torch.long)
        for j in range(masks.shape[0]):
            if not valid[j] or masks[j].sum() == 0:
                continue
            x1, y1, x2, y2 = boxes[j].tolist()
            if not lo <= math.sqrt((x2 - x1) * (y2 - y1)) <= hi:
                continue
            ys, xs = torch.nonzero(masks[j], as_tuple=True)
            cy, cx = ys.float().mean().item(), xs.float().mean().item()
            ph, pw = 0.5 * (y2 - y1) * pos_scale, 0.5 * (x2 - x1) * pos_scale
            ch, cw = int(cy / h * grid), int(cx / w * grid)
            top = max(max(0, int((cy - ph) / h * grid)), ch - 1)
            down = min(min(grid - 1, int((cy + ph) / h * grid)), ch + 1)
            left = max(max(0, int((cx - pw) / w * grid)), cw - 1)
            right = min(min(grid - 1, int((cx + pw) / w * grid)), cw + 1)
            lab[top:down + 1, left:right + 1] = labels[j]
            pairs += [(offset + r * grid + c, j) for r in range(top, down + 1) for c in range(left, right + 1)]
        out_labels.append(lab.flatten())
        offset += grid * grid
    return torch.cat(out_labels), pairs


def _pairs(t, i):
    keep = t.pos_weights[i] > 0
    return sorted(zip(t.pos_cells[i][keep].tolist(), t.pos_instances[i][keep].tolist()))


def test_square_lands_in_expected_levels_and_cells():
    # A 40 x 40 square centred at (63.5, 63.5) on a 128 x 128 canvas: sqrt(area) = 40 -> levels 2 and 3.
    masks, labels, boxes, valid = _batch([[(44, 44, 84, 84)]], [[2]], 128, 128, 3)
    t = build_solov2_targets(masks, labels, boxes, valid, GRIDS, RANGES, pos_scale=0.2, max_pos=32)
    off = [0, 400, 656, 800, 864]
    # Level 2 (12 x 12): centre cell 63.5 / 128 * 12 = 5.95 -> 5; region (63.5 +- 4) -> rows/cols 5..6.
    exp2 = {off[2] + r * 12 + c for r in (5, 6) for c in (5, 6)}
    # Level 3 (8 x 8): centre 3.97 -> 3; region 3.72..4.22 -> 3..4.
    exp3 = {off[3] + r * 8 + c for r in (3, 4) for c in (3, 4)}
    assert {c for c, _ in _pairs(t, 0)} == exp2 | exp3
    assert set(torch.nonzero(t.labels[0] >= 0).flatten().tolist()) == exp2 | exp3
    assert (t.labels[0][sorted(exp2 | exp3)] == 2).all()
    assert t.pos_weights.sum() == 8 and t.num_dropped == 0
    assert t.mask_targets.shape == (1, 3, 32, 32) and t.mask_targets[0, 0].sum() == 100


def test_instance_outside_all_scale_ranges_gets_nothing():
    masks, labels, boxes, valid = _batch([[(10, 10, 14, 14)]], [[1]], 64, 64, 2)
    t = build_solov2_targets(masks, labels, boxes, valid, GRIDS, ((8, 16), (16, 32), (32, 64), (64, 128), (128, 256)))
    assert t.pos_weights.sum() == 0 and (t.labels == -1).all()


def test_parity_with_per_instance_loop():
    g = torch.Generator().manual_seed(3)
    h, w, m = 96, 128, 6
    boxes_all, labels_all = [], []
    for _ in range(3):
        bs, ls = [], []
        for _ in range(int(torch.randint(2, m + 1, (1,), generator=g))):
            x1, y1 = int(torch.randint(0, w - 8, (1,), generator=g)), int(torch.randint(0, h - 8, (1,), generator=g))
            x2 = x1 + int(torch.randint(4, w - x1 + 1, (1,), generator=g))
            y2 = y1 + int(torch.randint(4, h - y1 + 1, (1,), generator=g))
            bs.append((x1, y1, min(x2, w), min(y2, h)))
            ls.append(int(torch.randint(0, 3, (1,), generator=g)))
        boxes_all.append(bs)
        labels_all.append(ls)
    masks, labels, boxes, valid = _batch(boxes_all, labels_all, h, w, m)
    masks[0, 0] = 0  # an empty mask is skipped
    t = build_solov2_targets(masks, labels, boxes, valid, GRIDS, RANGES, pos_scale=0.2, max_pos=256)
    for i in range(3):
        ref_labels, ref_pairs = reference_targets(masks[i], labels[i], boxes[i], valid[i], GRIDS, RANGES)
        assert torch.equal(t.labels[i], ref_labels)
        assert _pairs(t, i) == sorted(ref_pairs)
    assert t.num_dropped == 0


def test_max_pos_truncation_is_counted():
    masks, labels, boxes, valid = _batch([[(0, 0, 64, 64), (10, 10, 50, 50)]], [[0, 1]], 64, 64, 2)
    full = build_solov2_targets(masks, labels, boxes, valid, GRIDS, RANGES, pos_scale=1.0, max_pos=64)
    n = int(full.pos_weights.sum())
    cut = build_solov2_targets(masks, labels, boxes, valid, GRIDS, RANGES, pos_scale=1.0, max_pos=n - 3)
    assert n > 3 and int(cut.pos_weights.sum()) == n - 3 and int(cut.num_dropped) == 3


def test_downsample_masks_matches_bilinear_threshold():
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(3, 64, 96, generator=g) > 0.6).to(torch.uint8)
    masks[1, 8:40, 20:70] = 1
    ref = F.interpolate(masks[None].float(), size=(16, 24), mode="bilinear", align_corners=False)[0] >= 0.5
    assert torch.equal(downsample_masks(masks, 4), ref.float())


def test_positive_slots_ladder():
    assert [positive_slots(n, 1024) for n in (0, 1, 64, 65, 129, 300, 512, 513, 1024)] == [
        64, 64, 64, 128, 256, 512, 512, 1024, 1024]
    assert positive_slots(5000, 1024) == 1024  # beyond the top: the top (the rest is counted as dropped)
    assert [positive_slots(n, 300) for n in (100, 257, 299, 301)] == [128, 300, 300, 300]


def test_slots_sized_to_the_batch_keep_every_pair():
    masks, labels, boxes, valid = _batch([[(0, 0, 64, 64), (10, 10, 50, 50)], [(5, 5, 30, 40)]], [[0, 1], [2]],
                                         64, 64, 2)
    fixed = build_solov2_targets(masks, labels, boxes, valid, GRIDS, RANGES, pos_scale=1.0, pos_slots=512)
    sized = build_solov2_targets(masks, labels, boxes, valid, GRIDS, RANGES, pos_scale=1.0, max_pos=1024)
    most = int(fixed.pos_weights.sum(1).max())
    assert 0 < most <= 64 and fixed.pos_weights.shape == (2, 512) and sized.pos_weights.shape == (2, 64)
    for i in range(2):
        assert _pairs(sized, i) == _pairs(fixed, i)
    assert torch.equal(sized.labels, fixed.labels) and int(sized.num_dropped) == 0 == int(fixed.num_dropped)
    pinned = build_solov2_targets(masks, labels, boxes, valid, GRIDS, RANGES, pos_scale=1.0, pos_slots=8)
    assert pinned.pos_weights.shape == (2, 8)
    assert int(pinned.num_dropped) == int(fixed.pos_weights.sum()) - int(pinned.pos_weights.sum()) > 0


def test_overflowing_slots_keep_every_instance_in_turns():
    """More positives than slots: every instance keeps pairs in turns, so the large objects of
    the coarse levels, listed last, are not the ones that lose all their pairs. Images that fit are unchanged."""
    small = [(8 + 20 * k, 8, 20 + 20 * k, 20) for k in range(3)]  # 12 px: level 0 (and 1 for none)
    large = [(0, 40, 120, 160), (130, 40, 250, 160), (0, 170, 250, 250)]  # > 64 px: levels 3-4
    masks, labels, boxes, valid = _batch([small + large], [[0, 1, 2, 0, 1, 2]], 256, 256, 6)
    full = build_solov2_targets(masks, labels, boxes, valid, GRIDS, RANGES, pos_scale=1.0, max_pos=1024)
    per_inst = torch.bincount(full.pos_instances[0][full.pos_weights[0] > 0], minlength=6)
    assert (per_inst > 1).all() and int(per_inst.sum()) > 12, per_inst
    cut = build_solov2_targets(masks, labels, boxes, valid, GRIDS, RANGES, pos_scale=1.0, pos_slots=12)
    kept = _pairs(cut, 0)
    assert set(kept) <= set(_pairs(full, 0)) and len(kept) == 12
    assert int(cut.num_dropped) == int(per_inst.sum()) - 12
    got = torch.bincount(torch.tensor([inst for _, inst in kept]), minlength=6)
    assert got.min() >= 1 and got.max() - got.min() <= 1, got  # in turns: 2 each
    # fitting images keep the level order (the slots of the full targets are unchanged)
    fits = build_solov2_targets(masks, labels, boxes, valid, GRIDS, RANGES, pos_scale=1.0, pos_slots=1024)
    n = int(full.pos_weights.sum())
    assert torch.equal(fits.pos_cells[0, :n], full.pos_cells[0, :n])


def test_turns_start_with_the_centre_cell():
    from solo_npu.models.solov2.targets import _turn_order

    weights = torch.zeros(1, 2 * 2 * 9)  # 2 levels, 2 instances, 9 offsets each
    weights[0, 0:9] = 1  # instance 0, level 0: every offset
    weights[0, 27:30] = 1  # instance 1, level 1: offsets 0-2 (no centre)
    order = _turn_order(weights, 2, 2)[0].tolist()
    assert order[:2] == [4, 28]  # instance 0's centre, instance 1's first pair (offset 1: centre, then the 4 sides)
    assert order[2:4] == [1, 27] and sorted(order[:12]) == sorted([*range(9), 27, 28, 29])
