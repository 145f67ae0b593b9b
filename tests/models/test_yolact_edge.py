"""YolactEdge: checkpoint loading, FPN / head layout, Fast-NMS export parity and mask assembly."""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from solo_npu.checkpoints.convert import read_checkpoint
from solo_npu.deploy.adapters import ExportWrapper
from solo_npu.deploy.export import export_onnx, export_torchscript
from solo_npu.models.yolact_edge import YolactEdge, build_yolact_edge, crop_masks, yolact_postprocess

TINY = dict(depth=18, fpn_channels=16, proto_channels=8, mask_dim=4, max_size=96, conf_thresh=0.0125, top_k=16,
            max_num_detections=12)


def tiny_yolact(seed: int = 0, **kw) -> YolactEdge:
    torch.manual_seed(seed)
    return build_yolact_edge(**{**TINY, **kw})


def to_yolact_edge_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names -> yolact_edge's (backbone.layers.N, fpn_phase_1 / fpn_phase_2), plus a video-only key."""
    out = {}
    for k, v in state.items():
        m = re.match(r"backbone\.layer(\d)\.(.*)", k)
        if m:
            k = f"backbone.layers.{int(m.group(1)) - 1}.{m.group(2)}"
        k = k.replace("fpn.lat_layers.", "fpn_phase_1.lat_layers.").replace("fpn.", "fpn_phase_2.")
        out[k] = v
    out["flow_net.conv1.0.0.weight"] = torch.zeros(1)  # dropped by the converter
    return out


def test_yolact_edge_checkpoint_loads_strict_and_reproduces_outputs() -> None:
    src, dst = tiny_yolact(0), tiny_yolact(1)
    ckpt = to_yolact_edge_names(src.state_dict())
    assert "fpn_phase_2.downsample_layers.1.weight" in ckpt and "backbone.layers.3.1.conv2.weight" in ckpt
    state, _, layout = read_checkpoint(ckpt, dst)  # auto: keys that are not the model's
    assert layout == "yolact_edge"
    result = dst.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        for a, b in zip(src.dense_forward(x), dst.dense_forward(x)):
            torch.testing.assert_close(a, b)


def test_full_size_layout_matches_the_seed() -> None:
    model = build_yolact_edge()
    state = model.state_dict()
    assert state["prediction_layers.0.conf_layer.weight"].shape == (3 * 81, 256, 3, 3)
    assert state["prediction_layers.0.mask_layer.weight"].shape == (3 * 32, 256, 3, 3)
    assert state["fpn.lat_layers.0.weight"].shape == (256, 2048, 1, 1)  # stored top level first
    assert state["proto_net.10.weight"].shape == (32, 256, 1, 1)
    assert state["semantic_seg_conv.weight"].shape == (80, 256, 1, 1)
    assert {"proto_net.0.weight", "proto_net.2.weight", "proto_net.4.weight", "proto_net.8.weight"} <= set(state)
    feats = model.fpn([torch.zeros(1, c, s, s) for c, s in ((512, 69), (1024, 35), (2048, 18))])
    assert [f.shape[-1] for f in feats] == [69, 35, 18, 9, 5]  # the seed's five 256-channel outputs
    assert model.proto_net(torch.zeros(1, 256, 69, 69)).shape == (1, 32, 138, 138)


def test_detections_export_equals_host_fast_nms() -> None:
    model = tiny_yolact()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        boxes, scores, labels, coeffs, proto = model.export_forward(x)
        _, conf, dense_coeffs, dense_proto = model.dense_forward(x)
    assert boxes.shape == (2, 12, 4) and labels.dtype == torch.int32 and proto.shape == (2, 24, 24, 4)
    torch.testing.assert_close(proto, dense_proto)
    valid = scores > 0
    assert valid.any()
    # every kept detection's score is its class probability, from a prior above the confidence threshold
    for b in range(2):
        for k in torch.nonzero(valid[b]).squeeze(1).tolist():
            prior = int(torch.nonzero((dense_coeffs[b] == coeffs[b, k]).all(dim=1))[0])
            assert scores[b, k] == pytest.approx(float(conf[b, prior, 1 + labels[b, k]]))
            assert conf[b, prior, 1:].max() > 0.0125


@pytest.mark.parametrize("batch", [1, 2])
def test_eager_torchscript_onnxruntime_parity(batch: int, tmp_path) -> None:
    model = tiny_yolact()
    names = model.output_names
    wrapper = ExportWrapper(model, names).eval()
    x = torch.randn(batch, 3, 96, 96)
    with torch.no_grad():
        eager = wrapper(x)
        ts_out = torch.jit.load(str(export_torchscript(wrapper, x, tmp_path / "m.ts")))(x)
    sess = ort.InferenceSession(str(export_onnx(wrapper, x, tmp_path / "m.onnx", names, opset=11)),
                                providers=["CPUExecutionProvider"])
    ort_out = sess.run(list(names), {"input": x.numpy()})
    for name, e, t, o in zip(names, eager, ts_out, ort_out):
        torch.testing.assert_close(t, e)
        if name == "labels":
            np.testing.assert_array_equal(o, e.numpy())
        else:
            np.testing.assert_allclose(o, e.numpy(), rtol=1e-4, atol=1e-4)


def naive_crop(mask: torch.Tensor, box: list[float], padding: int = 1) -> torch.Tensor:
    """YOLACT's sanitize_coordinates + crop for one mask, with loops."""
    h, w = mask.shape
    x1, x2 = sorted([box[0] * w, box[2] * w])
    y1, y2 = sorted([box[1] * h, box[3] * h])
    x1, y1 = max(x1 - padding, 0), max(y1 - padding, 0)
    x2, y2 = min(x2 + padding, w), min(y2 + padding, h)
    out = torch.zeros_like(mask)
    for r in range(h):
        for c in range(w):
            if x1 <= c < x2 and y1 <= r < y2:
                out[r, c] = mask[r, c]
    return out


def test_crop_masks_matches_reference_loops() -> None:
    masks = torch.rand(3, 8, 16)  # box corners on exact binary fractions: no float32 / float64 ties
    boxes = torch.tensor([[0.125, 0.25, 0.5, 0.75], [0.875, 0.75, 0.3125, 0.125], [0.0, 0.0, 1.0, 1.0]])
    out = crop_masks(masks, boxes)
    for i in range(3):
        torch.testing.assert_close(out[i], naive_crop(masks[i], boxes[i].tolist()))


def test_postprocess_assembles_prototype_masks() -> None:
    g = torch.Generator().manual_seed(0)
    proto = torch.rand(8, 8, 3, generator=g)
    coeffs = torch.randn(5, 3, generator=g)
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.25, 1.0, 1.0], [0.1, 0.1, 0.2, 0.2],
                          [0.5, 0.5, 0.51, 0.9], [0, 0, 0, 0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.0])  # last slot is padding
    labels = torch.tensor([3, 5, 7, 1, 0], dtype=torch.int32)
    meta = {"ori_shape": (20, 30), "img_shape": (16, 16), "pad": (0, 0), "canvas": (16, 16),
            "scale_factor": (0.8, 16 / 30)}
    out = yolact_postprocess(boxes, scores, labels, coeffs, proto, meta)
    assert out["masks"].shape == (3, 20, 30) and out["masks"].dtype == torch.bool
    assert out["labels"].tolist() == [3, 5, 7]  # box 4 is 15..15.3 px wide: empty once truncated
    # reference: sigmoid(proto @ c), crop at 8x8, one bilinear resize to 20x30, > 0.5
    ref = torch.sigmoid(proto @ coeffs[:3].t()).permute(2, 0, 1)
    ref = torch.stack([naive_crop(ref[i], boxes[i].tolist()) for i in range(3)])
    ref = F.interpolate(ref[None], size=(20, 30), mode="bilinear", align_corners=False)[0] > 0.5
    assert torch.equal(out["masks"], ref)
    # boxes scaled to the original size and truncated to integers
    torch.testing.assert_close(out["boxes"][1], torch.tensor([7.0, 5.0, 30.0, 20.0]))


def test_postprocess_without_detections_is_empty() -> None:
    meta = {"ori_shape": (20, 30), "img_shape": (16, 16), "pad": (0, 0), "canvas": (16, 16),
            "scale_factor": (0.8, 16 / 30)}
    out = yolact_postprocess(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), torch.zeros(3, 2),
                             torch.zeros(4, 4, 2), meta)
    assert out["masks"].shape == (0, 20, 30) and out["boxes"].shape == (0, 4) and out["labels"].numel() == 0


def test_training_is_not_supported() -> None:
    model = tiny_yolact().train()
    with pytest.raises(NotImplementedError, match="inference-only"):
        model(torch.randn(1, 3, 32, 32))
