"""The generic adapter on the detectors and their configs: config -> model / adapter, pre-processing, and
postprocess parity with each model's eager ``predict``."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from solo_npu.deploy.adapters import ModelAdapter, StretchResize
from solo_npu.models import build_model, split_model_config
from solo_npu.models.fcos import FCOS
from solo_npu.models.ssd_resnet34 import SSDResNet34
from solo_npu.models.yolact_edge import YolactEdge, build_yolact_edge

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"


@pytest.mark.parametrize("name, model_type, shape, outputs, iou_types, anchor_key", [
    ("fcos", FCOS, [1, 3, 800, 1333], ("boxes", "cls_scores", "centerness"), ("bbox",), "bbox_AP"),
    ("yolact_edge", YolactEdge, [1, 3, 550, 550], ("boxes", "scores", "labels", "coeffs", "proto"),
     ("segm", "bbox"), "segm_AP"),
    ("ssd_resnet34", SSDResNet34, [1, 3, 300, 300], ("ploc", "plabel"), ("bbox",), "bbox_AP"),
])
def test_model_configs_build_model_and_adapter(name, model_type, shape, outputs, iou_types, anchor_key) -> None:
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert cfg.num_classes == 80 and list(cfg.deploy.input_shape) == shape
    small = OmegaConf.merge(cfg, {"depth": 18} if name != "ssd_resnet34" else {})
    model = build_model(small)
    assert isinstance(model, model_type) and model.name == cfg.name and not model.training
    adapter = ModelAdapter(model, split_model_config(cfg)[1]["anchors"])
    assert adapter.output_names == outputs and adapter.iou_types == iou_types  # the seed guides' outputs
    assert adapter.anchors and anchor_key in adapter.anchors[0]


def test_seed_anchor_figures() -> None:
    fcos = OmegaConf.load(CONF / "fcos.yaml").deploy.anchors
    assert [a.fps for a in fcos] == [42.6, 49.8] and fcos[0].bbox_AP == 0.359
    yolact = OmegaConf.load(CONF / "yolact_edge.yaml").deploy.anchors
    assert yolact[0].fps == 270.35 and yolact[0].segm_AP == 0.2796
    ssd = OmegaConf.load(CONF / "ssd_resnet34.yaml").deploy.anchors
    assert {a.batch: a.fps for a in ssd}[8] == 1406.4 and ssd[0].bbox_AP == 0.230


def sample(h: int, w: int, rgb: tuple[int, int, int]) -> dict:
    image = np.empty((h, w, 3), np.uint8)
    image[:] = rgb
    return {"image": image, "boxes": np.array([[0, 0, w, h]], np.float32), "labels": np.zeros(1, np.int64),
            "meta": {"ori_shape": (h, w)}}


def test_transforms_follow_each_reference_pipeline() -> None:
    out = ModelAdapter(YolactEdge).transforms((64, 64))(sample(30, 50, (124, 117, 104)), None)
    assert out["image"].shape == (3, 64, 64) and out["meta"]["img_shape"] == (64, 64)
    assert out["meta"]["scale_factor"] == pytest.approx((64 / 30, 64 / 50))
    np.testing.assert_allclose(out["image"][:, 0, 0], [(124 - 123.68) / 58.40, (117 - 116.78) / 57.12,
                                                       (104 - 103.94) / 57.38], rtol=1e-4, atol=1e-6)
    out = ModelAdapter(FCOS).transforms((64, 96))(sample(40, 40, (10, 20, 30)), None)
    assert out["meta"]["img_shape"] == (64, 64)  # keep ratio, fitted into the canvas
    np.testing.assert_allclose(out["image"][:, 0, 0], [30 - 102.9801, 20 - 115.9465, 10 - 122.7717], rtol=1e-5)
    out = ModelAdapter(SSDResNet34).transforms((32, 32))(sample(10, 20, (0, 0, 0)), None)
    np.testing.assert_allclose(out["image"][:, 0, 0], [-123.675 / 58.395, -116.28 / 57.12, -103.53 / 57.375],
                               rtol=1e-5)
    resized = StretchResize((20, 40))(sample(10, 10, (0, 0, 0)), None)
    np.testing.assert_allclose(resized["boxes"], [[0, 0, 40, 20]])


def detailed_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A uint8 RGB image with detail at every scale (noise summed over octaves), where resampling filters differ."""
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), np.float64)
    for step in (1, 2, 4, 8, 16):
        noise = rng.standard_normal((h // step + 2, w // step + 2, 3))
        image += cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC) * step ** 0.5
    return np.clip(128 + 60 * (image - image.mean()) / image.std(), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("h0, w0", [(480, 640), (427, 640), (200, 250)])  # shrink (both, one side) and enlarge
def test_ssd_resize_is_torchvision_resize_of_a_pil_image(h0: int, w0: int) -> None:
    """The SSD-ResNet34 guide's ssd_preprocess.py (Ascend/ModelZoo-PyTorch ACL_PyTorch/contrib/cv/detection/
    SSD-Resnet34): ``Image.open(path).convert("RGB")``, ``transforms.Resize((300, 300))``, ``ToTensor()``,
    ``Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])``. torchvision's resize of a PIL image with an
    (h, w) size is ``img.resize(size[::-1], Image.BILINEAR)`` (pytorch/vision torchvision/transforms/
    functional.py); ToTensor divides the uint8 values by 255. Written here with Pillow and numpy alone."""
    image = detailed_image(h0, w0)
    pil = np.asarray(Image.fromarray(image).resize((300, 300), Image.BILINEAR), dtype=np.float64) / 255.0
    expected = ((pil - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)
    item = {"image": image.copy(), "boxes": np.array([[10, 20, 110, 220]], np.float32), "masks": None,
            "meta": {"ori_shape": (h0, w0)}}
    out = ModelAdapter(SSDResNet34).transforms((300, 300))(item, None)
    np.testing.assert_allclose(out["image"].numpy(), expected, rtol=0, atol=2e-5)
    assert out["meta"]["img_shape"] == (300, 300)
    assert out["meta"]["scale_factor"] == pytest.approx((300 / h0, 300 / w0))
    np.testing.assert_allclose(out["boxes"], [[10 * 300 / w0, 20 * 300 / h0, 110 * 300 / w0, 220 * 300 / h0]],
                               rtol=1e-6)
    if h0 > 300:  # shrinking: cv2.INTER_LINEAR (no antialiasing) is not what the guide feeds the model
        linear = cv2.resize(image, (300, 300), interpolation=cv2.INTER_LINEAR).astype(np.float64) / 255.0
        linear = ((linear - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)
        assert np.abs(linear - expected).mean() > 0.02


def test_yolact_edge_keeps_the_cv2_stretch() -> None:
    image = detailed_image(480, 640)
    for model in (YolactEdge, FCOS):  # FCOS: keep-ratio, not a stretch; YolactEdge: cv2.INTER_LINEAR as before
        assert getattr(model, "stretch_interpolation", "cv2_linear") == "cv2_linear"
    out = StretchResize((64, 80))({"image": image.copy(), "meta": {}}, None)
    # YOLACT's BaseTransform: ConvertFromInts (astype float32), then Resize (cv2.resize, INTER_LINEAR)
    # (yolact utils/augmentations.py); on the uint8 image cv2 rounds every pixel to an integer.
    reference = cv2.resize(image.astype(np.float32), (80, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out["image"], reference)
    assert not np.array_equal(reference, cv2.resize(image, (80, 64), interpolation=cv2.INTER_LINEAR))
    steps = ModelAdapter(YolactEdge).transforms((64, 64)).transforms
    assert isinstance(steps[0], StretchResize) and steps[0].interpolation == "cv2_linear"
    assert ModelAdapter(SSDResNet34).transforms((64, 64)).transforms[0].interpolation == "pil_bilinear"
    with pytest.raises(ValueError, match="interpolation"):
        StretchResize((8, 8), "area")


def meta_for(h0: int, w0: int, size: int) -> dict:
    return {"ori_shape": (h0, w0), "img_shape": (size, size), "pad": (0, 0), "canvas": (size, size),
            "scale_factor": (size / h0, size / w0), "flip": False}


def test_yolact_adapter_modes_agree_with_predict() -> None:
    torch.manual_seed(0)
    model = build_yolact_edge(depth=18, fpn_channels=16, proto_channels=8, mask_dim=4, max_size=64,
                              conf_thresh=0.0125, top_k=16, max_num_detections=12)
    x = torch.randn(1, 3, 64, 64)
    meta = meta_for(48, 80, 64)
    with torch.no_grad():
        expected = model.predict(x, [meta])[0]
        det = dict(zip(model.output_names, (t[0].numpy() for t in model.export_forward(x))))
        model.export_mode = "heads"
        heads = dict(zip(model.output_names, (t[0].numpy() for t in model.export_forward(x))))
    assert len(expected["scores"]) > 0
    for mode, outputs in (("detections", det), ("heads", heads)):
        model.export_mode = mode  # the model's own thresholds serve both modes
        got = ModelAdapter(model).postprocess(outputs, meta)
        for key in ("boxes", "scores", "labels", "masks"):
            torch.testing.assert_close(got[key], expected[key])
    model.export_mode = "detections"
    stats = ModelAdapter(model).compare(det, {**det, "scores": det["scores"] + 1e-3})
    assert stats["scores_max_abs"] == pytest.approx(1e-3, rel=1e-3) and stats["labels_mismatch"] == 0


def test_ssd_adapter_agrees_with_predict() -> None:
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 8, 1), torch.nn.ReLU())
    model = SSDResNet34(trunk, (16, 16, 16, 8, 8, 8), (8, 8, 8, 8, 8), num_classes=3, max_output=30).eval()
    x = torch.randn(1, 3, 300, 300)
    meta = meta_for(200, 250, 300)
    with torch.no_grad():
        expected = model.predict(x, [meta])[0]
        ploc, plabel = model.export_forward(x)
    got = ModelAdapter(model).postprocess({"ploc": ploc[0].numpy(), "plabel": plabel[0].numpy()}, meta)
    assert len(expected["scores"]) == 30
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(got[key], expected[key])
