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
