"""SSD-ResNet34: MLPerf v0.7 checkpoint loading, output layout, export parity and MLPerf decoding."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from solo_npu.checkpoints import CheckpointError, save_checkpoint
from solo_npu.checkpoints.convert import load_model_weights, read_checkpoint
from solo_npu.deploy.adapters import ExportWrapper
from solo_npu.deploy.export import export_onnx, export_torchscript
from solo_npu.models.ops import box_iou, ssd_default_boxes
from solo_npu.models.ssd_resnet34 import SSDResNet34, build_ssd_resnet34, default_boxes_for, ssd_postprocess

SMALL = dict(out_channels=(16, 16, 16, 8, 8, 8), mid_channels=(8, 8, 8, 8, 8))


class TinyTrunk(nn.Sequential):
    """A stride-8 stand-in for the ResNet-34 trunk (38x38 at 300x300), for fast parity tests."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(),
                         nn.Conv2d(8, channels, 3, 2, 1), nn.ReLU())


def tiny_ssd(seed: int = 0) -> SSDResNet34:
    torch.manual_seed(seed)
    return SSDResNet34(TinyTrunk(), **SMALL).eval()


def test_full_model_outputs_match_the_seed_layout() -> None:
    model = build_ssd_resnet34()
    assert model.backbone.layer3[0].conv1.stride == (1, 1) and model.backbone.layer3[0].downsample[0].stride == (1, 1)
    with torch.no_grad():
        ploc, plabel = model.export_forward(torch.randn(1, 3, 300, 300))
    assert ploc.shape == (1, 4, 8732) and plabel.shape == (1, 81, 8732)
    assert model.dboxes.shape == (8732, 4)


def to_nvidia_v07(model: SSDResNet34) -> dict:
    """Our state dict in NVIDIA's MLPerf v0.7 names: trunk as model.N, fused mbox convs (classes first)."""
    trunk = {"conv1": "0", "bn1": "1", "layer1": "3", "layer2": "4", "layer3": "5"}
    state, out = model.state_dict(), {}
    for k, v in state.items():
        if k.startswith("backbone."):
            head, rest = k[len("backbone."):].split(".", 1)
            out[f"module.model.{trunk[head]}.{rest}"] = v
        elif k.startswith(("loc.", "conf.")):
            continue
        else:
            out[f"module.{k}"] = v
    for i in range(6):
        for kind in ("weight", "bias"):
            out[f"module.mbox.{i}.{kind}"] = torch.cat([state[f"conf.{i}.{kind}"], state[f"loc.{i}.{kind}"]])
    return {"model": out, "epoch": 20}


def to_feature_extractor_names(model: SSDResNet34) -> dict:
    """Separate loc / conf heads and a trunk under feature_extractor.feature_extractor.{0,1,4,5,6}."""
    trunk = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6"}
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("backbone."):
            head, rest = k[len("backbone."):].split(".", 1)
            k = f"feature_extractor.feature_extractor.{trunk[head]}.{rest}"
        out[k] = v
    return out


@pytest.mark.parametrize("layout", ["nvidia_v07", "feature_extractor"])
def test_reference_checkpoint_loads_strict_and_reproduces_outputs(layout: str) -> None:
    widths = dict(out_channels=(256, 16, 16, 8, 8, 8), mid_channels=(8, 8, 8, 8, 8))
    torch.manual_seed(0)
    src = build_ssd_resnet34(depth=18, **widths)
    torch.manual_seed(1)
    dst = build_ssd_resnet34(depth=18, **widths)
    if layout == "nvidia_v07":
        ckpt = to_nvidia_v07(src)
        assert ckpt["model"]["module.mbox.1.weight"].shape == (6 * 85, 16, 3, 3)
    else:
        ckpt = to_feature_extractor_names(src)
    state, _, layout = read_checkpoint(ckpt, dst)  # auto: keys that are not the model's
    assert layout == "ssd_resnet34"
    result = dst.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        for a, b in zip(src.export_forward(x), dst.export_forward(x)):
            torch.testing.assert_close(a, b)


def test_load_model_weights_from_file_and_bad_checkpoints(tmp_path) -> None:
    model = tiny_ssd(0)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = save_checkpoint({"model": state, "epoch": 3}, tmp_path / "iter.pt")
    other = tiny_ssd(1)
    report = load_model_weights(other, path, "ssd_resnet34")
    assert report["missing"] == report["unexpected"] == []
    torch.testing.assert_close(other.conf[2].weight, model.conf[2].weight)
    bad = {"mbox.0.weight": torch.zeros(10, 16, 3, 3)}
    with pytest.raises(CheckpointError, match="mbox.0.weight has 10 output channels, expected 340"):
        read_checkpoint(bad, other, "ssd_resnet34")
    with pytest.raises(CheckpointError, match="SSDResNet34 does not read 'retinanet'"):
        load_model_weights(other, path, "retinanet")


@pytest.mark.parametrize("batch", [1, 2])
def test_eager_torchscript_onnxruntime_parity(batch: int, tmp_path) -> None:
    model = tiny_ssd()
    wrapper = ExportWrapper(model, model.output_names).eval()
    x = torch.randn(batch, 3, 300, 300)
    with torch.no_grad():
        eager = wrapper(x)
        ts_out = torch.jit.load(str(export_torchscript(wrapper, x, tmp_path / "m.ts")))(x)
    path = export_onnx(wrapper, x, tmp_path / "m.onnx", model.output_names, opset=11)
    ort_out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    assert eager[0].shape == (batch, 4, 8732) and eager[1].shape == (batch, 81, 8732)
    for e, t, o in zip(eager, ts_out, ort_out):
        torch.testing.assert_close(t, e)
        np.testing.assert_allclose(o, e.numpy(), rtol=1e-4, atol=1e-4)


def naive_mlperf_decode(ploc: torch.Tensor, plabel: torch.Tensor, dboxes: torch.Tensor, criteria: float = 0.5,
                        max_output: int = 200, max_num: int = 200):
    """MLPerf Encoder.decode_single, with loops."""
    loc = ploc.t().clone()
    xy = loc[:, :2] * 0.1 * dboxes[:, 2:] + dboxes[:, :2]
    wh = torch.exp(loc[:, 2:] * 0.2) * dboxes[:, 2:]
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], 1)
    scores = torch.softmax(plabel.t(), dim=-1)
    dets = []
    for c in range(1, scores.shape[1]):
        idx = [i for i in range(boxes.shape[0]) if scores[i, c] > 0.05]
        idx = sorted(idx, key=lambda i: float(scores[i, c]))[-max_num:]
        while idx:
            best = idx[-1]
            dets.append((float(scores[best, c]), c - 1, best))
            iou = box_iou(boxes[idx], boxes[best:best + 1]).squeeze(1)
            idx = [i for i, v in zip(idx, iou.tolist()) if v < criteria]
    dets = sorted(dets, key=lambda d: d[0])[-max_output:][::-1]
    return boxes, dets


def test_postprocess_matches_mlperf_decode() -> None:
    g = torch.Generator().manual_seed(0)
    dboxes = ssd_default_boxes()[-40:]  # the coarse levels: large, overlapping priors
    ploc = torch.randn(4, 40, generator=g) * 0.5
    plabel = torch.randn(5, 40, generator=g) * 2
    meta = {"ori_shape": (200, 400), "img_shape": (300, 300), "pad": (0, 0), "canvas": (300, 300),
            "scale_factor": (1.5, 0.75)}
    out = ssd_postprocess(ploc, plabel, meta, dboxes, max_output=30)
    boxes, ref = naive_mlperf_decode(ploc, plabel, dboxes, max_output=30)
    assert len(ref) > 5 and out["labels"].tolist() == [r[1] for r in ref]
    torch.testing.assert_close(out["scores"], torch.tensor([r[0] for r in ref]))
    expected = boxes[[r[2] for r in ref]] * torch.tensor([400.0, 200.0, 400.0, 200.0])  # loc * (wtot, htot)
    torch.testing.assert_close(out["boxes"], expected)  # not clipped, like MLPerf


def test_default_boxes_for_other_square_sizes() -> None:
    assert torch.equal(default_boxes_for((300, 300)), ssd_default_boxes())
    boxes = default_boxes_for((320, 320))  # 40, 20, 10, 5, 3, 1 maps
    assert boxes.shape[0] == 40 * 40 * 4 + 20 * 20 * 6 + 10 * 10 * 6 + 5 * 5 * 6 + 9 * 4 + 4
    assert math.isclose(float(boxes[0, 2]), 21 / 300, rel_tol=1e-6)  # same relative scales
    with pytest.raises(ValueError, match="square"):
        default_boxes_for((300, 320))


def test_training_is_not_supported() -> None:
    with pytest.raises(NotImplementedError, match="inference-only"):
        tiny_ssd().train()(torch.randn(1, 3, 300, 300))


def test_default_boxes_at_other_sizes_sit_on_each_level_real_map() -> None:
    """At 600 the unpadded last two levels are 8x8 and 6x6 (not 3 and 1 scaled by 2): one box set per cell of
    each real map, centres ((j + 0.5) / side), none clamped to the image edge."""
    sides = [75, 38, 19, 10, 8, 6]
    model = SSDResNet34(TinyTrunk(), **SMALL, num_classes=3, fig_size=600).eval()
    with torch.no_grad():
        ploc, _ = model.export_forward(torch.zeros(1, 3, 600, 600))
    boxes = default_boxes_for((600, 600))
    assert ploc.shape[-1] == boxes.shape[0] == sum(s * s * a for s, a in zip(sides, (4, 6, 6, 6, 4, 4)))
    start = 0
    for side, anchors in zip(sides, (4, 6, 6, 6, 4, 4)):
        level = boxes[start:start + side * side * anchors]
        start += side * side * anchors
        expected = (torch.arange(side, dtype=torch.float32) + 0.5) / side
        torch.testing.assert_close(level[:, 0].unique(), expected)
        torch.testing.assert_close(level[:, 1].unique(), expected)
    assert float(boxes[:, :2].max()) < 1.0
    assert math.isclose(float(boxes[0, 2]), 21 / 300, rel_tol=1e-6)  # scales follow the input


def test_input_other_than_fig_size_is_refused() -> None:
    model = SSDResNet34(TinyTrunk(), **SMALL, num_classes=3)
    model.check_input_shape(300, 300)
    with pytest.raises(ValueError, match=r"built for a 300x300 input .* a 600x600 input needs model.fig_size=600"):
        model.check_input_shape(600, 600)
    with pytest.raises(ValueError, match="square input"):
        model.check_input_shape(300, 320)
    SSDResNet34(TinyTrunk(), **SMALL, num_classes=3, fig_size=600).check_input_shape(600, 600)
