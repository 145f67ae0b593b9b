"""SSD-ResNet34 against the MLPerf training reference (single_stage_detector, SSD300 / ResNet-34).

Every expected value below is written by hand from the reference's definitions, not from
``solo_npu.models.ops.priors`` or ``ssd_postprocess``:

* mlcommons/training ``single_stage_detector/ssd/utils.py`` (commit 04eb938):
  ``DefaultBoxes.__init__`` (about lines 213-250): ``fk = fig_size / steps``, ``sk1 = scales[i] / fig_size``,
  ``sk2 = scales[i + 1] / fig_size``, ``sk3 = sqrt(sk1 * sk2)``, sizes ``[(sk1, sk1), (sk3, sk3)]`` then
  ``(sk1 * sqrt(a), sk1 / sqrt(a))`` and its transpose for every ratio ``a``; ``for w, h in all_sizes:
  for i, j in product(range(sfeat), repeat=2): cx, cy = (j + 0.5) / fk, (i + 0.5) / fk``; then
  ``dboxes.clamp_(min=0, max=1)`` on all four columns.
  ``Encoder.scale_back_batch`` (about lines 117-150): ``xy = scale_xy * loc_xy * wh_d + xy_d``,
  ``wh = exp(scale_wh * loc_wh) * wh_d``, ltrb = centre -/+ ``0.5 * wh``, softmax over the classes.
  ``Encoder.decode_single`` (about lines 164-210): background (class 0) skipped, ``score > 0.05``,
  the ``max_num = 200`` best of a class, greedy NMS keeping ``iou < criteria``, then the
  ``max_output`` best over all classes.
* ``single_stage_detector/ssd/train.py`` (v0.7, commit 0968a48): ``dboxes300_coco`` (feature sizes
  ``[38, 19, 10, 5, 3, 1]``, steps ``[8, 16, 32, 64, 100, 300]``, scales ``[21, 45, 99, 153, 207, 261,
  315]``, ratios ``[[2], [2, 3], [2, 3], [2, 3], [2], [2]]``, ``DefaultBoxes`` defaults ``scale_xy=0.1``,
  ``scale_wh=0.2``); ``coco_eval``: ``overlap_threshold = 0.50``, ``nms_max_detections = 200``,
  ``nms_valid_thresh = 0.05``, boxes multiplied by the original ``wtot`` / ``htot`` without clipping.
* ``single_stage_detector/ssd/ssd300.py`` (commit 0a18eb3): ``num_defaults = [4, 6, 6, 6, 4, 4]``;
  ``bbox_view`` reshapes each head output with ``.view(batch, 4, -1)`` / ``.view(batch, label_num, -1)``.
* The Ascend ModelZoo SSD-ResNet34 offline inference guide post-processes the ``.om`` outputs with
  ``decode_batch(ploc, plabel, 0.50, 200)`` (Ascend/ModelZoo-PyTorch
  ``ACL_PyTorch/contrib/cv/detection/SSD-Resnet34/ssd_postprocess.py``), the same constants.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from solo_npu.models.ops import ssd_default_boxes
from solo_npu.models.ssd_resnet34 import SSDResNet34, build_ssd_resnet34, ssd_postprocess

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
R2, R3 = math.sqrt(2.0), math.sqrt(3.0)

# level offsets in the 8732 list: 38*38*4, +19*19*6, +10*10*6, +5*5*6, +3*3*4
OFF = (0, 5776, 7942, 8542, 8692, 8728)


def tiny_ssd() -> SSDResNet34:
    """Real extra blocks and heads on a stride-8 stand-in trunk (38x38 at 300x300)."""
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
    return SSDResNet34(trunk, out_channels=(16, 16, 16, 8, 8, 8), mid_channels=(8,) * 5).eval()


def test_default_box_count_is_8732() -> None:
    per_level = [38 * 38 * 4, 19 * 19 * 6, 10 * 10 * 6, 5 * 5 * 6, 3 * 3 * 4, 1 * 1 * 4]
    assert sum(per_level) == 8732
    assert [sum(per_level[:i]) for i in range(6)] == list(OFF)
    assert ssd_default_boxes().shape == (8732, 4)


# (index, (cx, cy, w, h)) for chosen positions; index = level offset + shape * S * S + i * S + j
# (i = row, j = column), each value from the DefaultBoxes definition above.
CHOSEN = [
    # level 0: S=38, fk=300/8=37.5, sk1=21/300, sk3=sqrt(21*45)/300
    (0, (0.5 / 37.5, 0.5 / 37.5, 21 / 300, 21 / 300)),
    (1 * 1444 + 2 * 38 + 5, (5.5 / 37.5, 2.5 / 37.5, math.sqrt(21 * 45) / 300, math.sqrt(21 * 45) / 300)),
    (2 * 1444 + 37 * 38 + 0, (0.5 / 37.5, 1.0, 21 / 300 * R2, 21 / 300 / R2)),  # cy = 37.5/37.5
    (3 * 1444 + 0 * 38 + 37, (1.0, 0.5 / 37.5, 21 / 300 / R2, 21 / 300 * R2)),
    # level 1: S=19, fk=18.75, sk1=45/300; shapes 4 and 5 are the ratio-3 pair
    (OFF[1] + 4 * 361 + 3 * 19 + 7, (7.5 / 18.75, 3.5 / 18.75, 45 / 300 * R3, 45 / 300 / R3)),
    (OFF[1] + 5 * 361 + 18 * 19 + 18, (18.5 / 18.75, 18.5 / 18.75, 45 / 300 / R3, 45 / 300 * R3)),
    # level 2: S=10, fk=9.375: the last row / column centre 9.5/9.375 > 1 is clamped to 1
    (OFF[2] + 0 * 100 + 9 * 10 + 8, (8.5 / 9.375, 1.0, 99 / 300, 99 / 300)),
    (OFF[2] + 0 * 100 + 9 * 10 + 9, (1.0, 1.0, 99 / 300, 99 / 300)),
    (OFF[2] + 1 * 100 + 0, (0.5 / 9.375, 0.5 / 9.375, math.sqrt(99 * 153) / 300, math.sqrt(99 * 153) / 300)),
    # level 3: S=5, fk=300/64=4.6875, sk1=153/300
    (OFF[3] + 4 * 25 + 2 * 5 + 1, (1.5 / 4.6875, 2.5 / 4.6875, 153 / 300 * R3, 153 / 300 / R3)),
    # level 4: S=3, fk=3, sk1=207/300
    (OFF[4] + 2 * 9 + 1 * 3 + 2, (2.5 / 3, 1.5 / 3, 207 / 300 * R2, 207 / 300 / R2)),
    # level 5: S=1, fk=1, sk1=261/300, sk2=315/300; 261/300*sqrt(2) = 1.2304 is clamped to 1
    (OFF[5] + 0, (0.5, 0.5, 261 / 300, 261 / 300)),
    (OFF[5] + 1, (0.5, 0.5, math.sqrt(261 * 315) / 300, math.sqrt(261 * 315) / 300)),
    (OFF[5] + 2, (0.5, 0.5, 1.0, 261 / 300 / R2)),
    (OFF[5] + 3, (0.5, 0.5, 261 / 300 / R2, 1.0)),
]


@pytest.mark.parametrize("index, expected", CHOSEN, ids=[str(i) for i, _ in CHOSEN])
def test_default_boxes_at_chosen_positions(index: int, expected: tuple[float, ...]) -> None:
    # the reference builds Python floats and converts them once with torch.tensor (float32)
    assert torch.equal(ssd_default_boxes()[index], torch.tensor(expected, dtype=torch.float32))


def test_default_box_values_written_out() -> None:
    boxes = ssd_default_boxes().double()
    assert float(boxes[1 * 1444 + 2 * 38 + 5, 2]) == pytest.approx(0.1024695, abs=1e-7)  # sqrt(945)/300
    assert float(boxes[OFF[5] + 1, 2]) == pytest.approx(0.9557719, abs=1e-7)  # sqrt(82215)/300
    assert float(boxes[OFF[5] + 2, 3]) == pytest.approx(0.6151829, abs=1e-7)  # 0.87/sqrt(2)
    assert float(boxes[OFF[4] + 2 * 9, 2]) == pytest.approx(0.9758074, abs=1e-7)  # 0.69*sqrt(2)


def test_clamp_reaches_only_the_level2_border_centres_and_level5_ratio_sides() -> None:
    boxes = ssd_default_boxes()
    assert boxes.min() > 0 and boxes.max() == 1
    ones = (boxes == 1).nonzero().tolist()
    expected = set()
    for shape in range(6):  # level 2: column 9 (cx) and row 9 (cy) of every shape
        for k in range(10):
            expected.add((OFF[2] + shape * 100 + k * 10 + 9, 0))
            expected.add((OFF[2] + shape * 100 + 9 * 10 + k, 1))
    for shape in range(4):  # level 0: (37 + 0.5) / 37.5 == 1 exactly, no clamp needed
        for k in range(38):
            expected.add((shape * 1444 + k * 38 + 37, 0))
            expected.add((shape * 1444 + 37 * 38 + k, 1))
    expected |= {(OFF[5] + 2, 2), (OFF[5] + 3, 3)}
    assert {tuple(x) for x in ones} == expected


def test_head_outputs_follow_the_reference_view() -> None:
    """``.view(B, 4, -1)`` of a ``[B, 4 * nd, H, W]`` map: channel ``c`` is coordinate ``c // nd`` of
    default-box shape ``c % nd``, and the prior index inside the level is ``shape * H * W + position``."""
    model = tiny_ssd()
    with torch.no_grad():
        for loc, conf in zip(model.loc, model.conf):
            for conv in (loc, conf):
                conv.weight.zero_()
                conv.bias.copy_(torch.arange(conv.out_channels, dtype=torch.float32))
        ploc, plabel = model.export_forward(torch.zeros(1, 3, 300, 300))
    sizes = (38, 19, 10, 5, 3, 1)
    for level, (s, nd) in enumerate(zip(sizes, model.num_defaults)):
        for shape in range(nd):
            for pos in (0, s * s - 1):
                prior = OFF[level] + shape * s * s + pos
                assert ploc[0, :, prior].tolist() == [coord * nd + shape for coord in range(4)]
                assert plabel[0, :, prior].tolist() == [cls * nd + shape for cls in range(81)]


META = {"ori_shape": (100, 200), "img_shape": (300, 300), "pad": (0, 0), "canvas": (300, 300),
        "scale_factor": (3.0, 1.5)}


def test_decode_of_hand_picked_offsets() -> None:
    # prior (0.5, 0.5, 0.2, 0.4) with loc (1, -2, 5 ln 2, 0): cx = 0.5 + 0.1 * 1 * 0.2 = 0.52,
    # cy = 0.5 + 0.1 * -2 * 0.4 = 0.42, w = 0.2 * exp(0.2 * 5 ln 2) = 0.4, h = 0.4 * exp(0) = 0.4
    # -> ltrb (0.32, 0.22, 0.72, 0.62); times (wtot, htot) = (200, 100): (64, 22, 144, 62).
    # prior (0.25, 0.75, 0.4, 0.2) with loc (0, 0, -5 ln 2, 5 ln 2): w = 0.2, h = 0.4
    # -> ltrb (0.15, 0.55, 0.35, 0.95) -> (30, 55, 70, 95).
    dboxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.4, 0.2]])
    ln2 = math.log(2.0)
    ploc = torch.tensor([[1.0, -2.0, 5 * ln2, 0.0], [0.0, 0.0, -5 * ln2, 5 * ln2]]).t()
    plabel = torch.tensor([[0.0, 3.0], [0.0, 1.0]]).t()  # background logit 0, one class
    out = ssd_postprocess(ploc, plabel, META, dboxes)
    assert out["labels"].tolist() == [0, 0]
    torch.testing.assert_close(out["scores"], torch.tensor([math.exp(3) / (1 + math.exp(3)),
                                                            math.exp(1) / (1 + math.exp(1))]))
    torch.testing.assert_close(out["boxes"], torch.tensor([[64.0, 22.0, 144.0, 62.0], [30.0, 55.0, 70.0, 95.0]]))


def test_decode_is_not_clipped_to_the_image() -> None:
    dboxes = torch.tensor([[0.05, 0.5, 0.2, 0.2]])  # ltrb (-0.05, 0.4, 0.15, 0.6)
    out = ssd_postprocess(torch.zeros(4, 1), torch.tensor([[0.0], [2.0]]), META, dboxes)
    torch.testing.assert_close(out["boxes"], torch.tensor([[-10.0, 40.0, 30.0, 60.0]]))


def _boxes(ltrb: list[list[float]]) -> torch.Tensor:
    b = torch.tensor(ltrb)
    return torch.cat([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], 1)


def test_nms_suppresses_at_iou_equal_to_criteria_and_only_within_a_class() -> None:
    # A = (0.25, 0.25, 0.75, 0.75), B = (0.375, 0.25, 0.625, 0.75) inside A with half its area:
    # IoU = 0.125 / 0.25 = 0.5 exactly; the reference keeps only ``iou < 0.5``, so B goes.
    dboxes = _boxes([[0.25, 0.25, 0.75, 0.75], [0.375, 0.25, 0.625, 0.75], [0.0, 0.0, 0.125, 0.125]])
    logits = torch.tensor([[0.0, 3.0, -9.0], [0.0, 2.0, -9.0], [0.0, 1.0, -9.0]]).t()  # bg, c1, c2
    out = ssd_postprocess(torch.zeros(4, 3), logits, META, dboxes)
    torch.testing.assert_close(out["boxes"], torch.tensor([[50.0, 25.0, 150.0, 75.0], [0.0, 0.0, 25.0, 12.5]]))
    # the same two boxes in different classes do not suppress each other
    logits = torch.tensor([[0.0, 3.0, -9.0], [0.0, -9.0, 2.0], [0.0, 1.0, -9.0]]).t()
    out = ssd_postprocess(torch.zeros(4, 3), logits, META, dboxes)
    assert out["labels"].tolist() == [0, 1, 0]


def test_score_threshold_is_strict_and_background_is_never_a_detection() -> None:
    dboxes = _boxes([[0.0, 0.0, 0.1, 0.1], [0.5, 0.5, 0.6, 0.6]])
    # softmax over (bg, c1): p(c1) = 1 / (1 + e^-l); l = ln(0.06/0.94) -> 0.06, ln(0.04/0.96) -> 0.04
    lo, hi = math.log(0.04 / 0.96), math.log(0.06 / 0.94)
    out = ssd_postprocess(torch.zeros(4, 2), torch.tensor([[0.0, hi], [0.0, lo]]).t(), META, dboxes)
    assert out["labels"].tolist() == [0]
    assert out["scores"].tolist() == pytest.approx([0.06], abs=1e-6)
    assert out["boxes"][0, 0].item() == 0.0  # the first box


def _grid_case():
    # 256 disjoint default boxes; class 1 scores on 250 of them, class 2 on the last 6
    cells = [[(j + 0.25) / 16, (i + 0.25) / 16, (j + 0.75) / 16, (i + 0.75) / 16]
             for i in range(16) for j in range(16)]
    dboxes = _boxes(cells)
    logits = torch.full((3, 256), -9.0)
    logits[0] = 0.0
    logits[1, :250] = torch.linspace(-2.0, 2.0, 250)
    logits[2, 250:] = 4.0
    return dboxes, logits


def test_at_most_200_candidates_per_class_enter_nms() -> None:
    dboxes, logits = _grid_case()
    # decode_single(max_output=1000, max_num=200): the best 200 of class 1, all 6 of class 2
    out = ssd_postprocess(torch.zeros(4, 256), logits, META, dboxes, max_output=1000)
    labels = out["labels"].tolist()
    assert labels.count(0) == 200 and labels.count(1) == 6
    probs = logits.t().softmax(-1)[:250, 1]
    kept = out["scores"][out["labels"] == 0]
    torch.testing.assert_close(kept, probs.sort(descending=True).values[:200])


def test_at_most_200_detections_per_image() -> None:
    dboxes, logits = _grid_case()
    out = ssd_postprocess(torch.zeros(4, 256), logits, META, dboxes)  # max_output defaults to 200
    assert len(out["scores"]) == 200
    assert out["labels"].tolist()[:6] == [1] * 6  # the class-2 scores are the highest
    probs = logits.t().softmax(-1)[:250, 1].sort(descending=True).values
    torch.testing.assert_close(out["scores"][6:], probs[:194])


def test_configured_constants_equal_the_reference() -> None:
    cfg = OmegaConf.load(CONF / "ssd_resnet34.yaml")
    reference = {"score_thr": 0.05, "iou_threshold": 0.5, "max_per_class": 200, "max_output": 200}
    for key, value in reference.items():
        assert cfg[key] == value, key
    assert set(cfg.deploy) == {"input_shape", "opset", "batch_sizes", "soc_version", "scored_images",
                               "anchors"}  # said once
    assert cfg.deploy.scored_images == "annotated"  # as the guide's ssd_preprocess.py and MLPerf score
    assert cfg.fig_size == 300 and cfg.num_classes == 80
    assert list(cfg.out_channels) == [256, 512, 512, 256, 256, 256]  # ssd300.py out_chan
    assert list(cfg.mid_channels) == [256, 256, 128, 128, 128]  # _build_additional_features
    pre = SSDResNet34.preprocessing  # transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    assert pre.style == "pytorch" and pre.resize == "stretch" and list(cfg.deploy.input_shape) == [1, 3, 300, 300]
    torch.testing.assert_close(torch.tensor(list(pre.mean)), torch.tensor([0.485, 0.456, 0.406]) * 255)
    torch.testing.assert_close(torch.tensor(list(pre.std)), torch.tensor([0.229, 0.224, 0.225]) * 255)
    model = build_ssd_resnet34(depth=18, out_channels=(256, 8, 8, 8, 8, 8), mid_channels=(8,) * 5)
    assert (model.score_thr, model.iou_threshold, model.max_per_class, model.max_output) == (0.05, 0.5, 200, 200)
    assert model.num_defaults == (4, 6, 6, 6, 4, 4) and model.label_num == 81
    assert isinstance(model, SSDResNet34)
