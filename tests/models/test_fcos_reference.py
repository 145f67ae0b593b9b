"""FCOS against mmdet 3.3.0 (``fcos_r50-caffe_fpn_gn-head_1x_coco``), expected values from its definitions.

mmdet 3.3.0 files (line numbers of the released wheel):

* ``configs/fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py``: caffe mean ``[102.9801, 115.9465, 122.7717]``,
  std 1, BGR (lines 9-14); caffe-style R50, frozen BN, ``frozen_stages=1`` (15-26); FPN ``start_level=1``,
  ``add_extra_convs='on_output'``, ``num_outs=5``, ``relu_before_extra_convs=True`` (27-34); head strides
  ``[8, 16, 32, 64, 128]`` with the ``FCOSHead`` defaults ``norm_on_bbox=False``,
  ``centerness_on_reg=False``, ``center_sampling=False`` (35-41; ``fcos_head.py`` 76-79); ``test_cfg``
  ``nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5),
  max_per_img=100`` (52-57).
* ``models/task_modules/prior_generators/point_generator.py``: ``MlvlPointGenerator(strides, offset=0.5)``
  (103-107; built by ``anchor_free_head.py`` line 101 without an offset), ``shift_x = (arange(W) + offset)
  * stride`` (206-217), row-major ``meshgrid`` (120-131).
* ``models/dense_heads/fcos_head.py`` ``forward_single`` (180-189): ``scale(bbox_pred).float()``, then
  ``exp`` (``norm_on_bbox=False``: no ReLU, no stride factor).
* ``models/dense_heads/base_dense_head.py`` ``_predict_by_feat_single`` (365-428): per level
  ``sigmoid(cls)`` and ``sigmoid(centerness)``; ``filter_scores_and_topk`` (``models/utils/misc.py``
  332-341): every (point, class) pair with ``score > score_thr``, the ``nms_pre`` best pairs by that score;
  ``distance2bbox(points, distances, max_shape=img_shape)`` (``structures/bbox/transforms.py`` 169-181:
  ``x1 = x - l, y1 = y - t, x2 = x + r, y2 = y + b`` clamped to ``[0, w] x [0, h]`` of the resized
  image, not of the padded batch). ``_bbox_post_process`` (464-492): boxes divided by the scale factor,
  ``score = cls * centerness``, boxes with ``w <= min_bbox_size`` or ``h <= min_bbox_size`` dropped,
  ``batched_nms`` per class, the first ``max_per_img``.
* mmcv ``ops/csrc/pytorch/cpu/nms.cpp`` ``nms_cpu``: a box is suppressed when ``ovr > iou_threshold``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from solo_npu.models.fcos import FCOS, build_fcos, fcos_postprocess
from solo_npu.models.ops import fcos_points

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
TINY = dict(depth=18, fpn_channels=16, feat_channels=16, stacked_convs=2, num_groups=4, nms_pre=40)


def tiny_fcos(seed: int = 0, **kw) -> FCOS:
    torch.manual_seed(seed)
    model = build_fcos(**{**TINY, **kw})
    with torch.no_grad():  # spread the scores so that many pairs clear 0.05 and nms_pre binds
        model.bbox_head.conv_cls.bias.fill_(-1.5)
        for p in model.bbox_head.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.mark.parametrize("stride, size, index, point", [
    (8, (3, 4), 0, (4.0, 4.0)),          # (0 + 0.5) * 8
    (8, (3, 4), 3, (28.0, 4.0)),         # x = 3: (3 + 0.5) * 8; row-major
    (16, (4, 5), 13, (56.0, 40.0)),      # index 13 = row 2, column 3: (3.5 * 16, 2.5 * 16)
    (64, (2, 2), 3, (96.0, 96.0)),
    (128, (3, 2), 4, (64.0, 320.0)),     # row 2, column 0: (0.5 * 128, 2.5 * 128)
    (5, (2, 2), 3, (7.5, 7.5)),          # an odd stride: (1 + 0.5) * 5, not 1 * 5 + 5 // 2
])
def test_points_are_cell_centres(stride: int, size: tuple[int, int], index: int, point: tuple[float, float]) -> None:
    pts = fcos_points([size], [stride])[0]
    assert pts.shape == (size[0] * size[1], 2)
    assert tuple(pts[index].tolist()) == point


def test_regression_is_exp_of_scaled_conv_in_pixels() -> None:
    # norm_on_bbox=False: distance = exp(scale_l * conv); a bias of ln 2 with scale 1.5 gives 2 ** 1.5,
    # the same at every stride (no stride factor)
    model = tiny_fcos()
    head = model.bbox_head
    with torch.no_grad():
        head.conv_reg.weight.zero_()
        head.conv_reg.bias.copy_(torch.tensor([math.log(2.0), 0.0, math.log(3.0), -math.log(2.0)]))
        for scale in head.scales:
            scale.scale.fill_(1.5)
        _, reg, _ = head(model.neck(model.backbone(torch.randn(1, 3, 64, 96))))
    expected = torch.tensor([2 ** 1.5, 1.0, 3 ** 1.5, 2 ** -1.5])
    for level in reg:
        torch.testing.assert_close(level[0, :, 0, 0], expected)
        torch.testing.assert_close(level[0, :, -1, -1], expected)


def reference_predict(model: FCOS, image: torch.Tensor, meta: dict) -> dict[str, torch.Tensor]:
    """mmdet 3.3.0 ``_predict_by_feat_single`` + ``_bbox_post_process`` for one image, written as loops."""
    cfg = dict(nms_pre=model.nms_pre, score_thr=0.05, iou=0.5, max_per_img=100, min_bbox_size=0)
    with torch.no_grad():
        cls_l, reg_l, ctr_l = model.bbox_head(model.neck(model.backbone(image)))
    img_h, img_w = meta["img_shape"]
    cand = []  # (box, score, label, centerness)
    for cls, reg, ctr, stride in zip(cls_l, reg_l, ctr_l, model.bbox_head.strides):
        h, w = cls.shape[-2:]
        pairs = []
        for y in range(h):
            for x in range(w):
                for c in range(cls.shape[1]):
                    s = torch.sigmoid(cls[0, c, y, x]).item()
                    if s > cfg["score_thr"]:
                        pairs.append((s, y, x, c))
        pairs.sort(key=lambda p: -p[0])
        for s, y, x, c in pairs[:cfg["nms_pre"]]:
            px, py = (x + 0.5) * stride, (y + 0.5) * stride
            d = reg[0, :, y, x].tolist()
            box = [min(max(px - d[0], 0), img_w), min(max(py - d[1], 0), img_h),
                   min(max(px + d[2], 0), img_w), min(max(py + d[3], 0), img_h)]
            cand.append((box, s, c, torch.sigmoid(ctr[0, 0, y, x]).item()))
    sy, sx = meta["scale_factor"]
    dets = []
    for box, s, c, t in cand:
        box = [box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy]
        if box[2] - box[0] > cfg["min_bbox_size"] and box[3] - box[1] > cfg["min_bbox_size"]:
            dets.append((box, s * t, c))
    dets.sort(key=lambda d: -d[1])
    kept = []
    for box, s, c in dets:
        if all(o[2] != c or iou(o[0], box) <= cfg["iou"] for o in kept):
            kept.append((box, s, c))
    kept = kept[:cfg["max_per_img"]]
    return {"boxes": torch.tensor([k[0] for k in kept]), "scores": torch.tensor([k[1] for k in kept]),
            "labels": torch.tensor([k[2] for k in kept])}


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_predict_equals_mmdet_330_on_a_padded_image() -> None:
    model = tiny_fcos(num_classes=6)
    image = torch.randn(1, 3, 64, 96)
    image[..., 40:, :] = 0  # the resized image is 40 x 72 at the top left of the 64 x 96 canvas
    image[..., 72:] = 0
    meta = {"ori_shape": (20, 45), "img_shape": (40, 72), "pad": (0, 0), "canvas": (64, 96),
            "scale_factor": (2.0, 1.6), "flip": False}
    out = model.predict(image, [meta])[0]
    ref = reference_predict(model, image, meta)
    assert len(ref["scores"]) > 20  # NMS and the clamp both act
    assert out["labels"].tolist() == ref["labels"].tolist()
    torch.testing.assert_close(out["scores"], ref["scores"])
    torch.testing.assert_close(out["boxes"], ref["boxes"])


def test_candidates_are_the_best_pairs_by_classification_score() -> None:
    """Per level the ``nms_pre`` best (point, class) pairs by ``sigmoid(cls)``, not by ``cls * centerness``."""
    model = tiny_fcos(num_classes=6)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        _, scores, _ = model.export_forward(x)
        cls_l, _, _ = model.bbox_head(model.neck(model.backbone(x)))
    offset = 0
    for cls in cls_l:
        s = cls[0].permute(1, 2, 0).reshape(-1).sigmoid()  # pair index = point * C + class
        k = min(model.nms_pre, s.numel())
        level = scores[0, offset:offset + k]
        assert ((level > 0).sum(dim=1) == 1).all()  # one pair per candidate row
        torch.testing.assert_close(level.amax(dim=1), s.sort(descending=True).values[:k])
        offset += k
    assert offset == scores.shape[1]


def meta_of(img_shape: tuple[int, int], canvas: tuple[int, int] = (64, 96)) -> dict:
    return {"ori_shape": img_shape, "img_shape": img_shape, "pad": (0, 0), "canvas": canvas,
            "scale_factor": (1.0, 1.0), "flip": False}


def test_threshold_on_classification_score_ranking_on_the_product() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [40, 0, 50, 10]], dtype=torch.float32)
    cls = torch.tensor([[0.06, 0.0], [0.04, 0.0], [0.0, 0.5]])
    ctr = torch.tensor([0.1, 1.0, 0.5])
    out = fcos_postprocess(boxes, cls, ctr, meta_of((48, 80)))
    # 0.06 * 0.1 = 0.006 is kept (the threshold applies to sigmoid(cls)); 0.04 is not
    assert out["labels"].tolist() == [1, 0]
    torch.testing.assert_close(out["scores"], torch.tensor([0.25, 0.006]))


def test_boxes_are_clamped_to_the_resized_image_before_nms() -> None:
    # image 48 x 80 inside a 64 x 96 canvas. B reaches into the padding: unclamped IoU(A, B) =
    # 200 / 500 = 0.4, clamped at x = 80 B equals A and is suppressed.
    boxes = torch.tensor([[70, 0, 80, 20], [70, 0, 95, 20]], dtype=torch.float32)
    cls = torch.tensor([[0.9], [0.8]])
    out = fcos_postprocess(boxes, cls, torch.ones(2), meta_of((48, 80)))
    assert len(out["scores"]) == 1
    torch.testing.assert_close(out["boxes"], torch.tensor([[70.0, 0.0, 80.0, 20.0]]))


def test_boxes_of_zero_width_or_height_are_dropped() -> None:
    # min_bbox_size=0 keeps w > 0 and h > 0 only: a box inside the padding collapses onto x = 80
    boxes = torch.tensor([[85, 10, 95, 20], [10, 50, 20, 60], [10, 10, 20, 20]], dtype=torch.float32)
    cls = torch.tensor([[0.9], [0.8], [0.7]])
    out = fcos_postprocess(boxes, cls, torch.ones(3), meta_of((48, 80)))
    torch.testing.assert_close(out["boxes"], torch.tensor([[10.0, 10.0, 20.0, 20.0]]))


def test_nms_keeps_iou_equal_to_threshold_and_is_per_class() -> None:
    # B inside A with half its area: IoU = 0.5 exactly, not > 0.5, so both stay; C (IoU 1 with A)
    # goes in A's class and stays in another class
    boxes = torch.tensor([[0, 0, 8, 8], [0, 0, 8, 4], [0, 0, 8, 8], [0, 0, 8, 8]], dtype=torch.float32)
    cls = torch.tensor([[0.9, 0.0], [0.8, 0.0], [0.7, 0.0], [0.0, 0.6]])
    out = fcos_postprocess(boxes, cls, torch.ones(4), meta_of((48, 80)))
    assert out["labels"].tolist() == [0, 0, 1]
    torch.testing.assert_close(out["scores"], torch.tensor([0.9, 0.8, 0.6]))


def test_at_most_100_detections() -> None:
    xy = torch.arange(150, dtype=torch.float32)
    boxes = torch.stack([xy * 4 % 400, xy // 100 * 10, xy * 4 % 400 + 2, xy // 100 * 10 + 2], 1)  # disjoint
    cls = torch.linspace(0.2, 0.9, 150)[:, None]
    out = fcos_postprocess(boxes, cls, torch.ones(150), meta_of((48, 400), (48, 400)))
    assert len(out["scores"]) == 100
    torch.testing.assert_close(out["scores"], torch.linspace(0.2, 0.9, 150).flip(0)[:100])


def test_configured_constants_equal_mmdet() -> None:
    cfg = OmegaConf.load(CONF / "fcos.yaml")
    test_cfg = {"nms_pre": 1000, "min_bbox_size": 0, "score_thr": 0.05, "iou_threshold": 0.5, "max_per_img": 100}
    for key, value in test_cfg.items():
        assert cfg[key] == value, key
    assert set(cfg.deploy) == {"input_shape", "opset", "batch_sizes", "soc_version", "anchors"}  # said once
    assert list(cfg.strides) == [8, 16, 32, 64, 128] and cfg.num_classes == 80
    assert cfg.style == "caffe" and cfg.norm == "frozen_bn" and cfg.centerness_on_reg is False
    assert cfg.stacked_convs == 4 and cfg.feat_channels == 256 and cfg.num_groups == 32
    # the head norm is the deployed checkpoint's: the guide's a7cac5ff file has none (its config: norm_cfg=None);
    # mmdet 3.3.0's gn-head config above is head.norm=gn
    assert cfg.head.norm == "none" and build_fcos(**TINY, head={"norm": "gn"}).head_norm == "gn"
    pre = FCOS.preprocessing
    assert list(pre.mean) == [102.9801, 115.9465, 122.7717] and list(pre.std) == [1.0, 1.0, 1.0]
    assert pre.style == "caffe" and pre.resize == "keep_ratio" and list(cfg.deploy.input_shape) == [1, 3, 800, 1333]
    model = build_fcos(**TINY)
    assert (model.score_thr, model.iou_threshold, model.max_per_img, model.min_bbox_size) == (0.05, 0.5, 100, 0)
    assert build_fcos(depth=18, fpn_channels=8, feat_channels=8, stacked_convs=1, num_groups=4).nms_pre == 1000
    assert model.neck.start_level == 1 and model.neck.add_extra_convs == "on_output"
    assert model.neck.relu_before_extra_convs is True
