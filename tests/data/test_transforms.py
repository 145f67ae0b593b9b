"""Transforms: keep-ratio resize, flip, normalisation styles, canvas padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from solo_npu.data.transforms import (
    Normalize,
    RandomFlip,
    Resize,
    canvas_size,
    pad_offset,
    rescale_size,
    resize_nearest,
)


def _sample(h: int = 40, w: int = 60) -> dict:
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = np.arange(w, dtype=np.uint8)[None, :]
    masks = np.zeros((2, h, w), np.uint8)
    masks[0, 5:15, 10:30] = 1
    masks[1, 20:40, 50:60] = 1
    boxes = np.array([[10, 5, 30, 15], [50, 20, 60, 40]], np.float32)
    meta = {"ori_shape": (h, w), "img_shape": (h, w), "scale_factor": (1.0, 1.0), "flip": False}
    return {"image": image, "masks": masks, "boxes": boxes, "labels": np.array([0, 2]), "meta": meta}


def test_rescale_size_matches_keep_ratio_rule():
    assert rescale_size(480, 640, (1333, 800)) == (800, 1067)  # short side binds: 800/480
    assert rescale_size(300, 1000, (1333, 800)) == (400, 1333)  # long side binds: 1333/1000
    assert rescale_size(640, 480, (800, 1333)) == (1067, 800)  # portrait; (long, short) order is free
    assert rescale_size(427, 640, (1216, 800)) == (800, 1199)


@pytest.mark.parametrize("h, w", [(1, 3000), (3000, 1), (2, 5000)])
def test_a_very_thin_image_keeps_a_side_of_at_least_one_pixel(h, w):
    """A 1x3000 image at (1333, 800) scales by 0.44: its short side rounded to 0 and cv2.resize raised."""
    assert min(rescale_size(h, w, (1333, 800))) == 1
    sample = _sample(h, w)
    sample["masks"], sample["boxes"] = None, np.zeros((0, 4), np.float32)
    out = Resize((1333, 800))(sample, np.random.default_rng(0))
    assert min(out["image"].shape[:2]) == 1 and max(out["image"].shape[:2]) == 1333


def test_resize_scales_masks_boxes_and_records_factors():
    s = Resize((120, 80))(_sample(), np.random.default_rng(0))
    assert s["image"].shape == (80, 120, 3) and s["masks"].shape == (2, 80, 120)
    assert s["meta"]["img_shape"] == (80, 120) and s["meta"]["scale_factor"] == (2.0, 2.0)
    np.testing.assert_allclose(s["boxes"], [[20, 10, 60, 30], [100, 40, 120, 80]])
    # nearest resize by an exact factor 2 keeps the mask areas x4 and the boxes tight
    assert s["masks"].reshape(2, -1).sum(1).tolist() == [4 * 200, 4 * 200]
    ys, xs = np.nonzero(s["masks"][0])
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (20, 10, 60, 30)


def test_multiscale_short_side_is_drawn_from_list_and_seeded():
    resize = Resize((1000, 80), multiscale_short=[20, 30, 40])
    shorts = {resize(_sample(), np.random.default_rng(k))["meta"]["img_shape"][0] for k in range(20)}
    assert shorts == {20, 30, 40}
    a = resize(_sample(), np.random.default_rng([0, 3, 7]))["meta"]["img_shape"]
    b = resize(_sample(), np.random.default_rng([0, 3, 7]))["meta"]["img_shape"]
    assert a == b


def test_resize_nearest_is_exact_on_integer_factors():
    m = np.random.default_rng(0).integers(0, 2, (3, 5, 7)).astype(np.uint8)
    up = resize_nearest(m, 10, 21)
    np.testing.assert_array_equal(up, m.repeat(2, axis=1).repeat(3, axis=2))
    np.testing.assert_array_equal(resize_nearest(up, 5, 7), m)


def test_flip_mirrors_image_masks_and_boxes():
    s = RandomFlip(1.0)(_sample(), np.random.default_rng(0))
    assert s["meta"]["flip"] is True
    assert s["image"][0, 0, 0] == 59 and s["image"][0, -1, 0] == 0
    np.testing.assert_allclose(s["boxes"], [[30, 5, 50, 15], [0, 20, 10, 40]])
    for mask, box in zip(s["masks"], s["boxes"]):
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == tuple(box.astype(int))
    kept = RandomFlip(0.0)(_sample(), np.random.default_rng(0))
    assert kept["meta"]["flip"] is False and kept["boxes"][0, 0] == 10


def test_pytorch_and_caffe_normalisation_values():
    image = np.array([[[10, 100, 200]]], np.uint8)
    torch_style = Normalize("pytorch")({"image": image.copy()})["image"]
    expected = (np.array([10, 100, 200]) - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    assert torch_style.shape == (3, 1, 1) and torch_style.dtype == torch.float32
    np.testing.assert_allclose(torch_style[:, 0, 0].numpy(), expected, rtol=1e-6)
    caffe = Normalize("caffe")({"image": image.copy()})["image"]
    # BGR order, BGR means, std 1
    np.testing.assert_allclose(caffe[:, 0, 0].numpy(), [200 - 103.53, 100 - 116.28, 10 - 123.675], rtol=1e-6)
    with pytest.raises(ValueError, match="style"):
        Normalize("tf")


def test_canvas_and_padding_offsets():
    assert canvas_size([(70, 100), (90, 65)], "divisor", 32) == (96, 128)
    assert canvas_size([(70, 100)], "fixed", canvas=[128, 160]) == (128, 160)
    with pytest.raises(ValueError, match="does not fit"):
        canvas_size([(200, 100)], "fixed", canvas=[128, 160])
    assert pad_offset((70, 100), (128, 160), "top_left") == (0, 0)
    assert pad_offset((70, 100), (128, 160), "centre") == (29, 30)
    assert pad_offset((71, 101), (128, 160), "center") == (28, 29)
    with pytest.raises(ValueError, match="position"):
        pad_offset((1, 1), (2, 2), "middle")


@pytest.mark.parametrize("style", ["pytorch", "caffe"])
def test_normalisation_equals_the_float32_formula_bit_for_bit(style):
    """The CHW tensor equals numpy's ``(image[..., order].astype(float32) - mean) / std`` transposed, exactly."""
    image = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    norm = Normalize(style)
    out = norm({"image": image.copy()})["image"]
    order = [0, 1, 2] if style == "pytorch" else [2, 1, 0]
    mean = np.array([123.675, 116.28, 103.53] if style == "pytorch" else [103.53, 116.28, 123.675], np.float32)
    std = np.array([58.395, 57.12, 57.375] if style == "pytorch" else [1.0, 1.0, 1.0], np.float32)
    expected = ((image[..., order].astype(np.float32) - mean) / std).transpose(2, 0, 1)
    assert out.shape == (3, 37, 53) and out.is_contiguous()
    assert np.array_equal(out.numpy(), expected)


def test_flip_and_resize_equal_their_numpy_definitions():
    rng = np.random.default_rng(2)
    s = _sample(33, 47)
    s["image"] = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    s["masks"] = rng.integers(0, 2, (4, 33, 47), dtype=np.uint8)
    flipped = RandomFlip(1.0)({**s, "meta": dict(s["meta"])}, np.random.default_rng(0))
    assert np.array_equal(flipped["image"], s["image"][:, ::-1]) and flipped["image"].flags.c_contiguous
    assert np.array_equal(flipped["masks"], s["masks"][:, :, ::-1])
    # Nearest with pixel-centre sampling: destination pixel i reads source floor((i + 0.5) * src / dst).
    out = resize_nearest(s["masks"], 50, 29)
    rows = [min(int((i + 0.5) * 33 / 50), 32) for i in range(50)]
    cols = [min(int((j + 0.5) * 47 / 29), 46) for j in range(29)]
    assert np.array_equal(out, s["masks"][:, rows][:, :, cols])
