"""FixedShapeCollate: canvas, padding offsets, slots and validity, truncation to the largest instances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from solo_npu.data.collate import FixedShapeCollate, pad_instance_slots


def _sample(h: int, w: int, areas: list[int], image_id: int = 1) -> dict:
    n = len(areas)
    masks = np.zeros((n, h, w), np.uint8)
    boxes = np.zeros((n, 4), np.float32)
    for k, a in enumerate(areas):  # a row of `a` pixels starting at row k
        masks[k, k, :a] = 1
        boxes[k] = [0, k, a, k + 1]
    return {
        "image": torch.full((3, h, w), float(image_id)),
        "masks": masks, "boxes": boxes, "labels": np.arange(n, dtype=np.int64),
        "meta": {"image_id": image_id, "file_name": f"{image_id}.png", "ori_shape": (h, w), "img_shape": (h, w),
                 "scale_factor": (1.0, 1.0), "flip": False},
    }


def test_divisor_canvas_top_left_shapes_and_validity():
    batch = FixedShapeCollate(max_instances=4, mode="divisor", size_divisor=16)(
        [_sample(20, 30, [5, 7], 1), _sample(33, 10, [3], 2)])
    assert batch["images"].shape == (2, 3, 48, 32)
    assert batch["gt_masks"].shape == (2, 4, 48, 32) and batch["gt_masks"].dtype == torch.uint8
    assert batch["gt_valid"].tolist() == [[True, True, False, False], [True, False, False, False]]
    assert batch["gt_labels"].tolist() == [[0, 1, -1, -1], [0, -1, -1, -1]]
    assert batch["images"][0, :, :20, :30].eq(1).all() and batch["images"][0, :, 20:].eq(0).all()
    assert batch["gt_masks"][0, 1].sum() == 7 and batch["gt_masks"][1, 1:].sum() == 0
    assert [m["pad"] for m in batch["metas"]] == [(0, 0), (0, 0)]
    assert batch["metas"][1]["canvas"] == (48, 32) and batch["metas"][1]["image_id"] == 2


def test_fixed_centred_canvas_shifts_image_masks_and_boxes():
    batch = FixedShapeCollate(max_instances=3, mode="fixed", canvas=[40, 50], position="centre")(
        [_sample(20, 30, [5])])
    top, left = batch["metas"][0]["pad"]
    assert (top, left) == (10, 10)
    assert batch["images"][0, 0, 10:30, 10:40].eq(1).all() and batch["images"][0].sum() == 3 * 20 * 30
    ys, xs = torch.nonzero(batch["gt_masks"][0, 0], as_tuple=True)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (10, 10, 15, 11)
    assert batch["gt_boxes"][0, 0].tolist() == [10, 10, 15, 11]


def test_more_instances_than_slots_keeps_the_largest():
    collate = FixedShapeCollate(max_instances=2)
    batch = collate([_sample(8, 16, [3, 9, 1, 6])])
    assert batch["gt_labels"][0].tolist() == [1, 3]  # areas 9 and 6, original order kept
    assert batch["gt_masks"][0].sum((1, 2)).tolist() == [9, 6]
    assert collate.num_truncated == 1


def test_without_masks_the_gt_masks_key_is_absent_and_bad_config_fails():
    s = _sample(8, 8, [2])
    s["masks"] = None
    assert "gt_masks" not in FixedShapeCollate(2)([s])
    with pytest.raises(ValueError, match="position"):
        FixedShapeCollate(2, position="middle")
    with pytest.raises(ValueError, match="canvas"):
        FixedShapeCollate(2, mode="fixed")([_sample(8, 8, [2])])


def test_ladder_slots_fit_the_batch_and_fixed_slots_are_padded_where_the_batch_lands():
    samples = [_sample(20, 30, [5, 7, 2], 1), _sample(20, 30, [4] * 9, 2)]  # 9 instances: rung 16
    fixed = FixedShapeCollate(max_instances=100, instance_slots="fixed", slot_ladder=[8, 16, 32])(samples)
    ladder = FixedShapeCollate(max_instances=100, instance_slots="ladder", slot_ladder=[8, 16, 32])(samples)
    # The loader carries the rung either way; a fixed batch says how many slots the model gets.
    assert ladder["gt_masks"].shape[1] == 16 and "instance_slots" not in ladder
    assert fixed["gt_masks"].shape[1] == 16 and fixed["instance_slots"] == 100
    padded = pad_instance_slots(fixed)
    assert padded["gt_masks"].shape == (2, 100, 32, 32) and padded["gt_boxes"].shape == (2, 100, 4)
    for key in ("gt_masks", "gt_labels", "gt_boxes", "gt_valid"):
        assert padded[key].shape[:2] == (2, 100) and padded[key].dtype == ladder[key].dtype, key
        assert torch.equal(padded[key][:, :16], ladder[key]), key
    # Every added slot is empty: no mask, label -1, a zero box, not valid.
    assert padded["gt_masks"][:, 16:].sum() == 0 and padded["gt_boxes"][:, 16:].abs().sum() == 0
    assert (padded["gt_labels"][:, 16:] == -1).all() and not padded["gt_valid"][:, 16:].any()
    assert [int(v.sum()) for v in padded["gt_valid"]] == [3, 9]
    assert torch.equal(padded["images"], ladder["images"]) and pad_instance_slots(ladder) is ladder


def test_ladder_rungs_small_batch_top_rung_and_bad_mode():
    collate = FixedShapeCollate(max_instances=20, instance_slots="ladder", slot_ladder=[4, 8, 64])
    assert collate([_sample(8, 8, [1])])["gt_valid"].shape == (1, 4)
    assert collate([_sample(8, 8, [1] * 5)])["gt_valid"].shape == (1, 8)
    top = collate([_sample(32, 32, [1] * 25)])  # beyond every rung: max_instances, largest kept, counted
    assert top["gt_valid"].shape == (1, 20) and top["gt_valid"].all() and collate.num_truncated == 1
    with pytest.raises(ValueError, match="instance_slots"):
        FixedShapeCollate(4, instance_slots="dynamic")
