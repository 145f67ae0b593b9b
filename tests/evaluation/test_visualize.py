"""draw_instances / save_image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from solo_npu.utils.visualize import draw_instances, palette, save_image


def test_overlay_colours_only_kept_instances_and_round_trips(tmp_path):
    image = np.full((64, 96, 3), 100, np.uint8)
    masks = torch.zeros(2, 64, 96, dtype=torch.bool)
    masks[0, 30:50, 10:40] = True
    masks[1, 5:20, 60:90] = True
    out = draw_instances(image, masks, torch.tensor([1, 2]), torch.tensor([0.9, 0.1]), ["a", "b", "c"],
                         score_thr=0.3)
    assert out.shape == image.shape and out.dtype == np.uint8 and not np.shares_memory(out, image)
    expected = np.round(0.5 * 100 + 0.5 * palette(3)[1].astype(np.float32)).astype(np.uint8)
    np.testing.assert_array_equal(out[45, 25], expected)  # inside instance 0, away from contour and text
    assert (out[8:18, 65:85] == 100).all()  # instance 1 is below the threshold
    assert (out[55:, :] == 100).all()
    path = save_image(tmp_path / "vis" / "x.png", out)
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), out)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="uint8"):
        draw_instances(np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 4)), [], [], None)
    with pytest.raises(ValueError, match="do not match"):
        draw_instances(np.zeros((4, 4, 3), np.uint8), np.zeros((1, 5, 4)), [0], [1.0], None)
    assert draw_instances(np.zeros((4, 4, 3), np.uint8), np.zeros((0, 4, 4)), [], [], None).sum() == 0


def test_ground_truth_beside_prediction_enlarges_masks_exactly():
    from solo_npu.utils.visualize import ground_truth_beside_prediction, upscale_factor

    assert upscale_factor(128, 160, 512) == 4 and upscale_factor(600, 800, 512) == 1
    image = np.full((32, 40, 3), 100, np.uint8)
    gt_mask = np.zeros((1, 32, 40), bool)
    gt_mask[0, 20:30, 5:15] = True  # lower left
    pred_mask = np.zeros((1, 32, 40), bool)
    pred_mask[0, 20:30, 25:35] = True  # lower right
    out = ground_truth_beside_prediction(image, {"masks": gt_mask, "labels": np.array([0])},
                                         {"masks": pred_mask, "labels": np.array([1]), "scores": np.array([0.8])},
                                         ["a", "b"], min_side=128)
    f, bar, gap = 4, 22, 6  # 32 -> 128: factor 4; a caption bar above each panel, a gap between them
    assert out.shape == (bar + 32 * f, 2 * 40 * f + gap, 3)
    left, right = out[bar:, : 40 * f], out[bar:, 40 * f + gap:]
    gt_colour = np.round(0.5 * 100 + 0.5 * palette(2)[0].astype(np.float32)).astype(np.uint8)
    pred_colour = np.round(0.5 * 100 + 0.5 * palette(2)[1].astype(np.float32)).astype(np.uint8)
    np.testing.assert_array_equal(left[26 * f, 10 * f], gt_colour)  # inside the enlarged ground truth
    np.testing.assert_array_equal(right[26 * f, 30 * f], pred_colour)  # inside the enlarged prediction
    assert (left[26 * f, 30 * f] == 100).all() and (right[26 * f, 10 * f] == 100).all()
    assert (left[2 * f:18 * f, 20 * f:38 * f] == 100).all()  # nothing drawn away from the instances


def test_failed_image_write_keeps_the_previous_image(tmp_path, monkeypatch):
    path = tmp_path / "pred" / "000001.png"
    save_image(path, np.zeros((8, 8, 3), np.uint8))
    before = path.read_bytes()
    monkeypatch.setattr(cv2, "imwrite", lambda name, image: False)  # what cv2 does on a full disk
    with pytest.raises(OSError, match=f"could not write image {path}"):
        save_image(path, np.full((8, 8, 3), 255, np.uint8))
    assert path.read_bytes() == before and [p.name for p in path.parent.iterdir()] == ["000001.png"]


def test_labels_stay_inside_the_image():
    """An instance at the right edge: its label is moved left into the image instead of running off it."""
    image = np.zeros((60, 200, 3), np.uint8)
    masks = np.zeros((1, 60, 200), bool)
    masks[0, 30:50, 195:] = True
    out = draw_instances(image, masks, [0], [0.9], ["a long class name"], score_thr=0.3)
    (tw, th), base = cv2.getTextSize("a long class name 0.90", cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
    label = out[30 - th - base:30, 200 - tw:195]
    assert label.any(axis=2).mean() > 0.5  # the filled label box lies in the image, left of the mask


def test_boxes_are_drawn_for_a_model_without_masks():
    image = np.full((64, 96, 3), 100, np.uint8)
    out = draw_instances(image, None, [1], [0.9], ["a", "b"], boxes=np.array([[10.0, 20.0, 60.0, 50.0]]))
    colour = palette(2)[1]
    np.testing.assert_array_equal(out[35, 10], colour)  # the left edge of the box
    np.testing.assert_array_equal(out[50, 35], colour)  # the bottom edge
    assert (out[30:45, 20:50] == 100).all()  # the inside is not filled
    with pytest.raises(ValueError, match="masks or boxes"):
        draw_instances(image, None, [1], [0.9], None)


def test_ground_truth_beside_prediction_refuses_masks_of_another_shape():
    """Masks of a 32x40 image drawn on a 40x32 one (an image read turned) are an error, not reshaped."""
    from solo_npu.utils.visualize import ground_truth_beside_prediction

    image = np.full((40, 32, 3), 100, np.uint8)
    masks = np.zeros((1, 32, 40), bool)
    with pytest.raises(ValueError, match="do not match"):
        ground_truth_beside_prediction(image, {"masks": masks, "labels": np.array([0])},
                                       {"masks": np.zeros((0, 40, 32), bool), "labels": np.zeros(0),
                                        "scores": np.zeros(0)}, min_side=64)


def test_upscale_factor_keeps_the_long_side_bounded():
    from solo_npu.utils.visualize import upscale_factor

    assert upscale_factor(50, 50, 512) == 11
    assert upscale_factor(1, 3000, 512) == 1  # 512 x 1536000 px would not be an image anyone can open
    assert upscale_factor(4, 1000, 512) == 4  # up to a long side of 4096
