"""FCOS: reference-checkpoint loading, head wiring, export parity and post-processing."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from solo_npu.checkpoints.convert import read_checkpoint
from solo_npu.deploy.adapters import ExportWrapper
from solo_npu.deploy.export import export_onnx, export_torchscript
from solo_npu.models.fcos import FCOS, build_fcos, fcos_postprocess
from solo_npu.models.ops import box_iou

TINY = dict(depth=18, fpn_channels=16, feat_channels=16, stacked_convs=2, num_groups=4, nms_pre=40)


def tiny_fcos(seed: int = 0, **kw) -> FCOS:
    torch.manual_seed(seed)
    model = build_fcos(**{**TINY, **kw})
    with torch.no_grad():  # make some scores clear the 0.05 threshold
        model.bbox_head.conv_cls.bias.fill_(-1.0)
        for p in model.bbox_head.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def to_mmdet_v1(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    names = {"conv_cls": "fcos_cls", "conv_reg": "fcos_reg", "conv_centerness": "fcos_centerness"}
    out = {}
    for k, v in state.items():
        for new, old in names.items():
            k = k.replace(f"bbox_head.{new}.", f"bbox_head.{old}.")
        out[k] = v
    # v1 checkpoints keep BN's num_batches_tracked; frozen BN must accept and drop it
    out.update({k.replace("running_mean", "num_batches_tracked"): torch.tensor(0)
                for k in list(out) if k.endswith("bn1.running_mean")})
    return {"meta": {"mmdet_version": "0.6.0"}, "state_dict": out}


@pytest.mark.parametrize("layout", ["mmdet_v1", "mmdet_v3"])
def test_mmdet_checkpoint_loads_strict_and_reproduces_outputs(layout: str) -> None:
    src, dst = tiny_fcos(0), tiny_fcos(1)
    if layout == "mmdet_v1":
        ckpt = to_mmdet_v1(src.state_dict())
        assert any(k.startswith("bbox_head.fcos_centerness.") for k in ckpt["state_dict"])
    else:  # mmdet 3.x already uses conv_cls / conv_reg / conv_centerness; scales stored with shape [1] here
        state = dict(src.state_dict())
        state.update({k: v.reshape(1) for k, v in state.items() if k.endswith(".scale")})
        ckpt = {"meta": {}, "state_dict": state}
    state, _, layout = read_checkpoint(ckpt, dst)  # auto: mmdet's state_dict container
    assert layout == "fcos"
    result = dst.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 3, 64, 96)
    for a, b in zip(src.export_forward(x), dst.export_forward(x)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("norm", ["none", "gn"])
def test_full_size_model_accepts_reference_key_set(norm: str) -> None:
    model = build_fcos(head={"norm": norm})  # R50-caffe FPN, the guide's head (none) or the GN head; construction only
    ckpt = to_mmdet_v1(model.state_dict())["state_dict"]
    keys = set(ckpt)
    assert {"bbox_head.fcos_cls.weight", "bbox_head.scales.4.scale", "neck.fpn_convs.4.conv.weight",
            "backbone.layer4.2.bn3.running_var", "bbox_head.cls_convs.3.conv.weight"} <= keys
    # mmdet v1 fcos_head.py: ConvModule(..., norm_cfg=self.norm_cfg, bias=self.norm_cfg is None)
    assert ("bbox_head.cls_convs.3.gn.weight" in keys) == (norm == "gn")
    assert ("bbox_head.cls_convs.0.conv.bias" in keys) == (norm == "none")
    assert ckpt["bbox_head.fcos_cls.weight"].shape == (80, 256, 3, 3)
    assert ckpt["neck.lateral_convs.0.conv.weight"].shape == (256, 512, 1, 1)  # start_level=1: C3
    assert model.backbone.layer2[0].conv1.stride == (2, 2)  # caffe style: stride on the 1x1 conv
    model.load_state_dict(read_checkpoint(ckpt, model, "fcos")[0], strict=True)


def test_centerness_reads_the_classification_branch() -> None:
    model = tiny_fcos()
    x = torch.randn(1, 3, 64, 64)
    _, _, ctr = model.export_forward(x)
    with torch.no_grad():
        model.bbox_head.reg_convs[-1].conv.weight.mul_(3.0)
    _, _, ctr_reg = model.export_forward(x)
    with torch.no_grad():
        model.bbox_head.cls_convs[-1].conv.weight.mul_(3.0)
    _, _, ctr_cls = model.export_forward(x)
    torch.testing.assert_close(ctr, ctr_reg)  # unchanged by the regression branch
    assert (ctr - ctr_cls).abs().max() > 1e-4


def test_export_forward_shapes_and_candidate_count() -> None:
    model = tiny_fcos()
    boxes, scores, ctr = model.export_forward(torch.randn(2, 3, 64, 96))
    # levels 8x12, 4x6, 2x3, 1x2, 1x1 hold 7680 ... 80 (point, class) pairs; nms_pre=40 of each
    assert boxes.shape == (2, 200, 4) and scores.shape == (2, 200, 80) and ctr.shape == (2, 200)
    assert boxes[..., 0::2].max() <= 96 and boxes[..., 1::2].max() <= 64 and boxes.min() >= 0


def test_candidates_match_mmdet_filter_scores_and_topk() -> None:
    """Per level: the nms_pre best (point, class) pairs by sigmoid(cls) (mmdet 3.3.0
    ``filter_scores_and_topk``), box = point -/+ exp(scale * reg) distances, centerness of the point."""
    model = tiny_fcos()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        boxes, scores, ctr = model.export_forward(x)
        cls_l, reg_l, ctr_l = model.bbox_head(model.neck(model.backbone(x)))
    offset = 0
    for level, (cls, reg, cen) in enumerate(zip(cls_l, reg_l, ctr_l)):
        stride = model.bbox_head.strides[level]
        h, w = cls.shape[-2:]
        s = cls[0].permute(1, 2, 0).reshape(-1).sigmoid()  # pair = point * 80 + class
        c = cen[0].reshape(-1).sigmoid()
        d = reg[0].permute(1, 2, 0).reshape(-1, 4)
        top, pair = s.sort(descending=True)
        top, pair = top[:40], pair[:40]
        keep, label = pair // 80, pair % 80
        ys, xs = keep // w, keep % w
        px, py = (xs + 0.5) * stride, (ys + 0.5) * stride
        ref = torch.stack([px - d[keep, 0], py - d[keep, 1], px + d[keep, 2], py + d[keep, 3]], 1)
        ref = torch.stack([ref[:, 0].clamp(0, 96), ref[:, 1].clamp(0, 64), ref[:, 2].clamp(0, 96),
                           ref[:, 3].clamp(0, 64)], 1)
        torch.testing.assert_close(boxes[0, offset:offset + 40], ref)
        torch.testing.assert_close(scores[0, offset:offset + 40].gather(1, label[:, None])[:, 0], top)
        torch.testing.assert_close(scores[0, offset:offset + 40].sum(1), top)  # 0 in the other columns
        torch.testing.assert_close(ctr[0, offset:offset + 40], c[keep])
        offset += 40
    assert offset == boxes.shape[1]


@pytest.mark.parametrize("batch", [1, 2])
def test_eager_torchscript_onnxruntime_parity(batch: int, tmp_path) -> None:
    model = tiny_fcos()
    wrapper = ExportWrapper(model, FCOS.output_names).eval()
    x = torch.randn(batch, 3, 64, 96)
    with torch.no_grad():
        eager = wrapper(x)
    ts = torch.jit.load(str(export_torchscript(wrapper, x, tmp_path / "m.ts")))
    onnx_path = export_onnx(wrapper, x, tmp_path / "m.onnx", FCOS.output_names, opset=11)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_out = sess.run(list(FCOS.output_names), {"input": x.numpy()})
    with torch.no_grad():
        ts_out = ts(x)
    for e, t, o in zip(eager, ts_out, ort_out):
        torch.testing.assert_close(t, e)
        np.testing.assert_allclose(o, e.numpy(), rtol=1e-4, atol=1e-4)


def test_predict_equals_postprocess_of_export_and_maps_to_original() -> None:
    model = tiny_fcos()
    x = torch.randn(1, 3, 64, 96)
    meta = {"ori_shape": (32, 40), "img_shape": (64, 80), "pad": (0, 0), "canvas": (64, 96),
            "scale_factor": (2.0, 2.0), "flip": False}
    pred = model.predict(x, [meta])[0]
    assert 0 < len(pred["scores"]) <= 100
    assert pred["boxes"][:, 0::2].max() <= 40 and pred["boxes"][:, 1::2].max() <= 32
    boxes, scores, ctr = model.export_forward(x)
    again = fcos_postprocess(boxes[0].detach().numpy(), scores[0].detach().numpy(), ctr[0].detach().numpy(), meta)
    for k in ("boxes", "scores", "labels"):
        torch.testing.assert_close(pred[k], again[k])


def test_postprocess_thresholds_raw_score_and_ranks_with_centerness() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [30, 30, 40, 40]], dtype=torch.float32)
    cls = torch.tensor([[0.9, 0.0], [0.6, 0.0], [0.04, 0.5]])
    ctr = torch.tensor([0.1, 0.9, 1.0])
    meta = {"ori_shape": (100, 100), "img_shape": (100, 100), "pad": (0, 0), "scale_factor": (1.0, 1.0)}
    out = fcos_postprocess(boxes, cls, ctr, meta)
    # box 1 (0.54) outranks box 0 (0.09) and suppresses it; box 2 class 0 is under the raw threshold
    assert out["labels"].tolist() == [0, 1]
    torch.testing.assert_close(out["scores"], torch.tensor([0.54, 0.5]))
    assert box_iou(out["boxes"][:1], boxes[1:2]).item() == pytest.approx(1.0)


def test_training_is_not_supported() -> None:
    model = tiny_fcos().train()
    with pytest.raises(NotImplementedError, match="inference-only"):
        model(torch.randn(1, 3, 32, 32), {"gt_boxes": torch.zeros(1, 1, 4)})
