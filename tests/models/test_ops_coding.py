"""Box coding, centerness, priors / default boxes and canvas -> original mapping."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from solo_npu.models.ops import (
    bbox2distance,
    boxes_to_original,
    centerness_target,
    decode_center_size,
    distance2bbox,
    encode_center_size,
    fcos_points,
    ssd_default_boxes,
    yolact_priors,
)


def test_distance_roundtrip_and_clamp() -> None:
    points = torch.tensor([[10.0, 20.0], [50.0, 5.0]])
    boxes = torch.tensor([[4.0, 12.0, 30.0, 22.0], [40.0, 0.0, 70.0, 9.0]])
    dist = bbox2distance(points, boxes)
    torch.testing.assert_close(dist, torch.tensor([[6.0, 8.0, 20.0, 2.0], [10.0, 5.0, 20.0, 4.0]]))
    torch.testing.assert_close(distance2bbox(points, dist), boxes)
    clamped = distance2bbox(points, dist, max_shape=(8, 60))
    torch.testing.assert_close(clamped[1], torch.tensor([40.0, 0.0, 60.0, 8.0]))


def test_centerness_target_values() -> None:
    dist = torch.tensor([[1.0, 2.0, 3.0, 2.0], [5.0, 5.0, 5.0, 5.0], [0.0, 1.0, 2.0, 1.0]])
    expected = torch.tensor([math.sqrt(1 / 3 * 1.0), 1.0, 0.0])
    torch.testing.assert_close(centerness_target(dist), expected)


def test_center_size_decode_matches_mlperf_formula_and_roundtrips() -> None:
    g = torch.Generator().manual_seed(0)
    priors = torch.cat([torch.rand(20, 2, generator=g), torch.rand(20, 2, generator=g) * 0.3 + 0.05], dim=1)
    loc = torch.randn(20, 4, generator=g)
    boxes = decode_center_size(loc, priors, (0.1, 0.2))
    # MLPerf Encoder.scale_back_batch, written out
    cx = 0.1 * loc[:, 0] * priors[:, 2] + priors[:, 0]
    cy = 0.1 * loc[:, 1] * priors[:, 3] + priors[:, 1]
    w = torch.exp(0.2 * loc[:, 2]) * priors[:, 2]
    h = torch.exp(0.2 * loc[:, 3]) * priors[:, 3]
    torch.testing.assert_close(boxes, torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1))
    torch.testing.assert_close(encode_center_size(boxes, priors, (0.1, 0.2)), loc, rtol=1e-4, atol=1e-4)


def naive_mlperf_dboxes() -> torch.Tensor:
    fig, feats, steps = 300, [38, 19, 10, 5, 3, 1], [8, 16, 32, 64, 100, 300]
    scales, ars = [21, 45, 99, 153, 207, 261, 315], [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    out = []
    for idx, sfeat in enumerate(feats):
        fk = fig / steps[idx]
        sk1, sk2 = scales[idx] / fig, scales[idx + 1] / fig
        sk3 = math.sqrt(sk1 * sk2)
        sizes = [(sk1, sk1), (sk3, sk3)]
        for a in ars[idx]:
            sizes += [(sk1 * math.sqrt(a), sk1 / math.sqrt(a)), (sk1 / math.sqrt(a), sk1 * math.sqrt(a))]
        for w, h in sizes:
            for i, j in itertools.product(range(sfeat), repeat=2):
                out.append(((j + 0.5) / fk, (i + 0.5) / fk, w, h))
    return torch.tensor(out).clamp(0, 1)


def test_ssd_default_boxes_count_and_layout() -> None:
    dboxes = ssd_default_boxes()
    assert dboxes.shape == (8732, 4)
    torch.testing.assert_close(dboxes, naive_mlperf_dboxes())


def reference_make_priors(sizes, scales, ars, max_size, preapply_sqrt, use_pixel_scales, use_square_anchors):
    """yolact_edge/yolact.py ``PredictionModule.make_priors`` (873fceb, lines 262-301), written as loops."""
    out = []
    for (h, w), s in zip(sizes, scales):
        for j, i in itertools.product(range(h), range(w)):
            for ar in ars:
                if not preapply_sqrt:
                    ar = math.sqrt(ar)
                if use_pixel_scales:
                    pw, ph = s * ar / max_size, s / ar / max_size
                else:
                    pw, ph = s * ar / w, s / ar / h
                if use_square_anchors:
                    ph = pw
                out.append([(i + 0.5) / w, (j + 0.5) / h, pw, ph])
    return torch.tensor(out, dtype=torch.float32)


@pytest.mark.parametrize("switches", list(itertools.product([False, True], repeat=3)))
def test_yolact_priors_match_reference_loops(switches: tuple[bool, bool, bool]) -> None:
    sizes, scales, ars, max_size = [(3, 4), (2, 2)], [24, 48], [1, 0.5, 2], 64
    sqrt_, pixel, square = switches
    ref = reference_make_priors(sizes, scales, ars, max_size, sqrt_, pixel, square)
    out = yolact_priors(sizes, scales, ars, max_size, preapply_sqrt=sqrt_, use_pixel_scales=pixel,
                        use_square_anchors=square)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_fcos_points_offsets() -> None:
    pts = fcos_points([(2, 3)], [8])[0]
    assert pts.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]


def test_boxes_to_original_undoes_pad_scale_and_flip() -> None:
    meta = {"ori_shape": (100, 200), "img_shape": (50, 100), "pad": (5, 10), "scale_factor": (0.5, 0.5),
            "flip": False}
    canvas = torch.tensor([[10.0, 5.0, 60.0, 30.0], [0.0, 0.0, 200.0, 200.0]])
    out = boxes_to_original(canvas, meta)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 100.0, 50.0], [0.0, 0.0, 200.0, 100.0]]))
    flipped = boxes_to_original(torch.tensor([[10.0, 5.0, 30.0, 25.0]]), {**meta, "flip": True})
    torch.testing.assert_close(flipped, torch.tensor([[160.0, 0.0, 200.0, 40.0]]))
