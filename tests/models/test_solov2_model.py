"""SOLOv2 model: head layout, losses, eager vs export agreement, TorchScript and ONNX export."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from solo_npu.models import build_model
from solo_npu.models.solov2 import SOLOv2, build_solov2_targets, masks_to_boxes, paste_masks
from solo_npu.models.solov2.postprocess import flatten_predictions
from solo_npu.runtime import torchscript_onnx_export_kwargs

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"


def tiny_model(num_classes: int = 3, seed: int = 0, lively: bool = True) -> SOLOv2:
    """The tiny config; ``lively`` re-draws head weights so that an untrained model yields many instances."""
    torch.manual_seed(seed)
    cfg = OmegaConf.load(CONF / "solov2_tiny.yaml")
    cfg.num_classes = num_classes
    model = build_model(cfg).eval()
    if lively:
        g = torch.Generator().manual_seed(seed)
        for mod in model.mask_head.modules():
            if isinstance(mod, nn.Conv2d):
                mod.weight.data.normal_(0, 0.15, generator=g)
        model.mask_head.conv_cls.bias.data.fill_(-1.0)
    return model


def _metas(b: int, canvas=(128, 160), img_shape=(120, 150), pad=(4, 5), ori=(90, 113)):
    return [dict(image_id=i, ori_shape=ori, img_shape=img_shape, pad=pad, canvas=canvas) for i in range(b)]


def test_head_layout_and_init():
    model = tiny_model(lively=False)
    cls_preds, kernel_preds, mask_feats = model.forward_head(torch.zeros(1, 3, 128, 160))
    assert [tuple(p.shape) for p in cls_preds] == [(1, 3, g, g) for g in (20, 16, 12, 8, 6)]
    assert [tuple(p.shape) for p in kernel_preds] == [(1, 16, g, g) for g in (20, 16, 12, 8, 6)]
    assert tuple(mask_feats.shape) == (1, 16, 32, 40)
    head = model.mask_head
    assert head.conv_cls.bias.detach().allclose(torch.full((3,), -math.log(99)))
    assert head.kernel_convs[0].conv.in_channels == 32 + 2 and head.cls_convs[0].conv.in_channels == 32
    assert head.kernel_convs[0].conv.bias is None and 0.005 < head.conv_kernel.weight.std() < 0.015
    keys = model.state_dict().keys()
    assert "mask_head.mask_feature_head.convs_all_levels.3.conv2.gn.weight" in keys
    assert "mask_head.mask_feature_head.conv_pred.conv.weight" in keys
    assert head.mask_feature_head.convs_all_levels[3].conv0.conv.in_channels == 32 + 2


def test_training_losses_and_gradients():
    model = tiny_model(lively=False).train()
    b, m = 2, 3
    masks = torch.zeros(b, m, 128, 160, dtype=torch.uint8)
    masks[0, 0, 20:60, 30:90] = 1
    masks[1, 0, 10:100, 10:150] = 1
    batch = dict(gt_masks=masks, gt_labels=torch.tensor([[0, -1, -1], [2, -1, -1]]),
                 gt_boxes=torch.tensor([[[30, 20, 90, 60.0]] + [[0, 0, 0, 0.0]] * 2,
                                        [[10, 10, 150, 100.0]] + [[0, 0, 0, 0.0]] * 2]),
                 gt_valid=torch.tensor([[True, False, False], [True, False, False]]))
    images = torch.randn(b, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    losses = model(images, batch)
    assert set(losses) == {"loss_cls", "loss_mask", "dropped_positives"} and float(losses["dropped_positives"]) == 0
    # Reference: per-positive loops over the same head outputs and targets.
    cls_preds, kernel_preds, feats = model.forward_head(images)
    t = build_solov2_targets(batch["gt_masks"], batch["gt_labels"], batch["gt_boxes"], batch["gt_valid"],
                             model.mask_head.num_grids, model.scale_ranges, 0.2, 4, model.max_pos)
    kernels = torch.cat([k.flatten(2) for k in kernel_preds], 2)
    logits = torch.cat([c.flatten(2) for c in cls_preds], 2)
    num_pos = int((t.labels >= 0).sum())
    dice_sum, focal_sum = 0.0, 0.0
    for i in range(b):
        for slot in range(t.pos_weights.shape[1]):
            if t.pos_weights[i, slot] == 0:
                continue
            kernel = kernels[i, :, t.pos_cells[i, slot]].view(1, -1, 1, 1)
            p = torch.sigmoid(torch.nn.functional.conv2d(feats[i:i + 1], kernel))[0, 0]
            tgt = t.mask_targets[i, t.pos_instances[i, slot]]
            dice_sum += 1 - 2 * (p * tgt).sum() / ((p * p).sum() + (tgt * tgt).sum() + 2e-3)
        # Focal loss from its definition: -alpha_t (1 - p_t)^2 log(p_t).
        y = (t.labels[i].unsqueeze(0) == torch.arange(3).unsqueeze(1)).float()  # [C, cells]
        p = torch.sigmoid(logits[i].double())
        pt = torch.where(y > 0, p, 1 - p)
        focal_sum += (-torch.where(y > 0, 0.25, 0.75) * (1 - pt) ** 2 * torch.log(pt)).sum().float()
    assert num_pos > 0
    torch.testing.assert_close(losses["loss_mask"], 3.0 * dice_sum / num_pos, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(losses["loss_cls"], focal_sum / (num_pos + 1), rtol=1e-4, atol=1e-5)
    (losses["loss_cls"] + losses["loss_mask"]).backward()
    assert model.mask_head.conv_kernel.weight.grad.abs().sum() > 0
    assert model.mask_head.conv_cls.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="targets"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="gt_masks"):
        model(torch.randn(b, 3, 96, 160), batch)


def test_mask_loss_over_cells_or_over_pairs_where_instances_share_cells():
    """Two instances whose centre regions cover the same cells: each such cell holds two (instance, cell) pairs.
    ``cells`` divides the dice sum by the positive cells (mmdetection's SOLOV2Head), ``pairs`` by the pairs (SOLO's
    ``torch.cat(loss_ins).mean()``); the focal loss is the same in both."""
    model = tiny_model(lively=False).train()
    masks = torch.zeros(1, 2, 128, 160, dtype=torch.uint8)
    masks[0, 0, 20:80, 30:100] = 1
    masks[0, 1, 24:84, 34:104] = 1  # nearly the same box: same level, same centre cells
    batch = dict(gt_masks=masks, gt_labels=torch.tensor([[0, 1]]),
                 gt_boxes=torch.tensor([[[30, 20, 100, 80.0], [34, 24, 104, 84.0]]]),
                 gt_valid=torch.tensor([[True, True]]))
    images = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(1))
    t = build_solov2_targets(batch["gt_masks"], batch["gt_labels"], batch["gt_boxes"], batch["gt_valid"],
                             model.mask_head.num_grids, model.scale_ranges, 0.2, 4, model.max_pos)
    cells, pairs = int((t.labels >= 0).sum()), int(t.pos_weights.sum())
    assert pairs > cells > 0
    cls_preds, kernel_preds, feats = model.forward_head(images)
    kernels = torch.cat([k.flatten(2) for k in kernel_preds], 2)
    dice_sum = 0.0
    for slot in range(t.pos_weights.shape[1]):
        if t.pos_weights[0, slot] > 0:
            p = torch.sigmoid(torch.nn.functional.conv2d(feats, kernels[0, :, t.pos_cells[0, slot]].view(1, -1, 1, 1)))
            tgt = t.mask_targets[0, t.pos_instances[0, slot]]
            dice_sum += 1 - 2 * (p[0, 0] * tgt).sum() / ((p * p).sum() + (tgt * tgt).sum() + 2e-3)
    by_cells = model(images, batch)
    model.loss_mask_norm = "pairs"
    by_pairs = model(images, batch)
    torch.testing.assert_close(by_cells["loss_mask"], 3.0 * dice_sum / cells, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(by_pairs["loss_mask"], 3.0 * dice_sum / pairs, rtol=1e-4, atol=1e-5)
    assert torch.equal(by_cells["loss_cls"], by_pairs["loss_cls"])


@pytest.mark.parametrize("batch", [1, 4])
def test_eager_and_export_modes_agree(batch):
    model = tiny_model()
    g = torch.Generator().manual_seed(batch)
    images = torch.randn(batch, 3, 128, 160, generator=g)
    metas = _metas(batch)
    eager = model.predict(images, metas)
    masks, labels, scores = model.export_forward(images)
    assert masks.shape == (batch, 20, 32, 40) and labels.dtype == torch.int32 and scores.shape == (batch, 20)
    for i, res in enumerate(eager):
        n = len(res["scores"])
        assert n > 0 and (scores[i, n:] == 0).all()
        torch.testing.assert_close(res["scores"], scores[i, :n], rtol=0, atol=1e-5)
        assert torch.equal(res["labels"], labels[i, :n].long())
        pasted = paste_masks(masks[i, :n], metas[i], 0.5)
        assert res["masks"].shape == (n, 90, 113) and torch.equal(res["masks"], pasted)
        assert torch.equal(res["boxes"], masks_to_boxes(pasted))
    # Batch independence: image 0 alone gives the same outputs. The convolution kernels chosen for
    # batch 1 and batch 4 round differently (up to ~1e-5 on CPUs without AVX-512), hence 1e-4 here.
    single = model.export_forward(images[:1])
    torch.testing.assert_close(single[2], scores[:1], rtol=0, atol=1e-4)
    torch.testing.assert_close(single[0], masks[:1], rtol=0, atol=1e-4)


def test_exported_model_keeps_max_per_img_as_eager_predict(caplog):
    """test.max_per_img below export_topk: the graph still returns export_topk slots, and the host half keeps the
    first max_per_img as eager predict does (deployed AP and train.py's were scored on different caps before)."""
    model = tiny_model()
    images = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(3))
    meta = _metas(1)[0]
    full = model.predict(images, [meta])[0]
    assert len(full["scores"]) > 5
    model.test_cfg.max_per_img = 5
    eager = model.predict(images, [meta])[0]
    with torch.no_grad():
        masks, labels, scores = model.export_forward(images)
    host = model.postprocess({"masks": masks[0].numpy(), "labels": labels[0].numpy(), "scores": scores[0].numpy()},
                             meta)
    assert len(eager["scores"]) == len(host["scores"]) == 5
    torch.testing.assert_close(host["scores"], eager["scores"], rtol=0, atol=1e-5)
    assert torch.equal(host["labels"], eager["labels"]) and torch.equal(host["masks"], eager["masks"])
    cfg = OmegaConf.load(CONF / "solov2_tiny.yaml")
    cfg.num_classes, cfg.test.export_topk, cfg.test.max_per_img = 3, 10, 50
    with caplog.at_level("WARNING"):
        build_model(cfg)
    assert "model.test.export_topk=10 < max_per_img=50: an exported model returns at most 10 instances" in caplog.text


def test_predict_matches_reference_order_when_crowded():
    model = tiny_model()
    images = torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(5))
    cfg = model.test_cfg
    cfg.max_per_img = cfg.nms_pre  # compare every instance Matrix NMS keeps
    scores, _ = flatten_predictions(*model.forward_head(images)[:2])
    assert ((scores > cfg.score_thr).flatten(1).sum(1) > 2 * cfg.nms_pre).all()  # crowded: ~640 pairs, nms_pre 200
    exact = model.predict(images, _metas(2))
    cfg.bound_before_conv = False
    reference = model.predict(images, _metas(2))
    for a, b in zip(exact, reference):
        assert len(a["scores"]) == len(b["scores"]) > 0
        torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-5)
        assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["masks"], b["masks"])
    assert model.inexact_images == 0


def test_exact_limit_is_logged(caplog):
    model = tiny_model()
    model.test_cfg.exact_limit = 64
    images = torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(5))
    with caplog.at_level("WARNING"):
        model.predict(images, _metas(1))
    assert model.inexact_images == 1 and "exact_limit=64" in caplog.text


def test_export_exact_flag_output():
    model = tiny_model()
    model.export_exact_flag = True
    images = torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(5))
    eager = model.predict(images, _metas(2))
    flags = {}
    for budget in (model.test_cfg.nms_pre, model.mask_head.num_cells * model.num_classes):
        model.test_cfg.pre_budget = budget
        masks, labels, scores, exact = model.export_forward(images)
        assert exact.dtype == torch.bool and exact.shape == (2,)
        flags[budget] = exact.tolist()
        for i, res in enumerate(eager):
            if exact[i]:
                n = len(res["scores"])
                torch.testing.assert_close(res["scores"], scores[i, :n], rtol=0, atol=1e-5)
                assert torch.equal(res["labels"], labels[i, :n].long())
    # ~640 pairs above score_thr: nms_pre of them cannot be proven; all of them always are.
    assert flags == {model.test_cfg.nms_pre: [False, False], model.mask_head.num_cells * 3: [True, True]}


def test_paste_masks_crops_padding_and_resizes():
    canvas, pad, img_shape, ori = (64, 96), (8, 16), (48, 72), (24, 36)
    low = torch.zeros(1, 16, 24)
    # Object covering the image's left half on the canvas: columns 16..52, rows 8..56 -> low-res /4.
    low[0, 2:14, 4:13] = 1.0
    out = paste_masks(low, dict(ori_shape=ori, img_shape=img_shape, pad=pad, canvas=canvas), 0.5)
    assert out.shape == (1, 24, 36) and out.dtype == torch.bool
    assert out[0, :, :17].all() and not out[0, :, 20:].any()
    x1, y1, x2, y2 = masks_to_boxes(out)[0].tolist()
    assert (x1, y1, y2) == (0.0, 0.0, 24.0) and 17.0 <= x2 <= 19.0
    assert paste_masks(torch.zeros(0, 16, 24), dict(ori_shape=ori, img_shape=img_shape), 0.5).shape == (0, 24, 36)


@pytest.mark.parametrize("img_shape,pad,ori", [((52, 90), (6, 3), (35, 61)), ((64, 96), (0, 0), (64, 96)),
                                               ((40, 80), (24, 16), (90, 180))])
@pytest.mark.parametrize("block", [32, 7])
def test_paste_masks_matches_full_canvas_reference(img_shape, pad, ori, block):
    probs = torch.rand(5, 16, 24, generator=torch.Generator().manual_seed(1))
    meta = dict(ori_shape=ori, img_shape=img_shape, pad=pad, canvas=(64, 96))
    up = torch.nn.functional.interpolate(probs[None], size=(64, 96), mode="bilinear", align_corners=False)
    up = up[..., pad[0]:pad[0] + img_shape[0], pad[1]:pad[1] + img_shape[1]]
    ref = torch.nn.functional.interpolate(up, size=ori, mode="bilinear", align_corners=False)[0]
    for regions in (True, False):  # per-mask blocks (CPU default) and whole masks (accelerators)
        out = paste_masks(probs, meta, 0.5, regions=regions, block=block)
        # The composed taps round differently from the two resizes (~1e-7): only pixels that close to
        # the threshold may differ.
        differ = out != (ref > 0.5)
        assert not differ.any() or (ref[differ] - 0.5).abs().max().item() < 1e-5
        assert out.sum() > 0.2 * out.numel()


@pytest.mark.parametrize("canvas,low", [((62, 94), (16, 24)), ((61, 93), (16, 24)), ((64, 96), (16, 24))])
def test_paste_masks_upsamples_by_the_stride_on_any_canvas(canvas, low):
    # A canvas that is not a multiple of 4 gives stride-4 features of ceil(canvas / 4) cells. The reference
    # upsamples them x4 (a 64x96 map for a 62x94 canvas), then crops the image and resizes (mmdet's
    # SOLOv2Head: interpolate to featmap_size * 4, [:h, :w], interpolate to ori_shape); a resize to the
    # canvas itself would stretch the masks by up to 1.5 px.
    probs = torch.rand(4, *low, generator=torch.Generator().manual_seed(3))
    pad, img_shape, ori = (1, 2), (58, 88), (116, 176)
    meta = dict(ori_shape=ori, img_shape=img_shape, pad=pad, canvas=canvas)
    up = torch.nn.functional.interpolate(probs[None], scale_factor=4, mode="bilinear", align_corners=False)
    up = up[..., pad[0]:pad[0] + img_shape[0], pad[1]:pad[1] + img_shape[1]]
    ref = torch.nn.functional.interpolate(up, size=ori, mode="bilinear", align_corners=False)[0]
    for regions in (True, False):
        out = paste_masks(probs, meta, 0.5, regions=regions)
        differ = out != (ref > 0.5)
        assert not differ.any() or (ref[differ] - 0.5).abs().max().item() < 1e-5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paste_masks_skips_nothing_outside_the_tapped_region(seed):
    # Small objects on an empty background, so that the per-mask spans are much smaller than the image.
    g = torch.Generator().manual_seed(seed)
    probs = torch.zeros(6, 20, 30)
    for i in range(6):
        y, x = torch.randint(0, 16, (1,), generator=g).item(), torch.randint(0, 26, (1,), generator=g).item()
        probs[i, y:y + 4, x:x + 4] = torch.rand(4, 4, generator=g) * 0.6 + 0.3
    probs[5] = 0.0  # nothing above the threshold: an empty mask
    meta = dict(ori_shape=(57, 101), img_shape=(75, 113), pad=(2, 5), canvas=(80, 120))
    up = torch.nn.functional.interpolate(probs[None], size=(80, 120), mode="bilinear", align_corners=False)
    up = up[..., 2:77, 5:118]
    ref = torch.nn.functional.interpolate(up, size=(57, 101), mode="bilinear", align_corners=False)[0]
    out = paste_masks(probs, meta, 0.5)
    differ = out != (ref > 0.5)
    assert not differ.any() or (ref[differ] - 0.5).abs().max().item() < 1e-5
    assert out[:5].flatten(1).any(1).all() and not out[5].any()
    assert torch.equal(paste_masks(probs, meta, 0.5, regions=False), out)  # the accelerator path


def test_masks_to_boxes():
    m = torch.zeros(2, 10, 12, dtype=torch.bool)
    m[0, 2:5, 3:9] = True
    assert masks_to_boxes(m).tolist() == [[3.0, 2.0, 9.0, 5.0], [0.0, 0.0, 0.0, 0.0]]


def test_export_traces_and_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = tiny_model()
    images = torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(7))

    class Export(nn.Module):
        def __init__(self, m: SOLOv2) -> None:
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.export_forward(x)

    wrapper = Export(model).eval()
    with torch.no_grad():
        expected = wrapper(images)
        traced = torch.jit.trace(wrapper, images, check_trace=False)
        for a, b in zip(traced(images), expected):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        path = tmp_path / "solov2.onnx"
        torch.onnx.export(wrapper, (images,), str(path), opset_version=17, input_names=["input"],
                          output_names=["masks", "labels", "scores"], **torchscript_onnx_export_kwargs())
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    masks, labels, scores = sess.run(None, {"input": images.numpy()})
    assert labels.dtype == np.int32 and masks.shape == tuple(expected[0].shape)
    # points NMS without a MaxPool compared for equality with its input (see test_points_nms_*)
    import onnx

    graph = onnx.load(str(path)).graph
    pools = [{a.name: list(a.ints) for a in node.attribute} for node in graph.node if node.op_type == "MaxPool"]
    assert pools and not [a for a in pools if a.get("strides") == [1, 1]]  # the stem's and FPN's (stride 2) only
    # and every output keeps a static shape (ATC needs them; deploy reads the .om's outputs by them)
    assert [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output] == [
        list(expected[0].shape), list(expected[1].shape), list(expected[2].shape)]
    np.testing.assert_allclose(scores, expected[2].numpy(), atol=1e-4)
    np.testing.assert_array_equal(labels, expected[1].numpy())
    np.testing.assert_allclose(masks, expected[0].numpy(), atol=1e-4)


def test_points_nms_keeps_the_reference_cells_ties_included():
    """mmdet's / SOLO's points_nms keeps a cell where max_pool2d(heat, 2, stride=1, padding=1)[..., :-1, :-1] ==
    heat. The comparison with the neighbours gives the same cells, ties and edges included; the exported graph then
    holds no MaxPool, whose fp16-only kernel (CANN <= 8.0) against an fp32 score kept almost no cell under ATC's
    mixed precision: only about 0.01% of fp32 sigmoid values survive a round trip through fp16."""
    from solo_npu.models.solov2.postprocess import points_nms

    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        side = int(torch.randint(1, 41, (1,), generator=g))
        heat = torch.rand(2, 3, side, side, generator=g)
        if trial % 2:
            heat = (heat * 8).round() / 8  # many equal neighbours
        pooled = torch.nn.functional.max_pool2d(heat, kernel_size=2, stride=1, padding=1)[..., :-1, :-1]
        assert torch.equal(points_nms(heat), heat * (pooled == heat).to(heat.dtype)), trial
    scores = torch.rand(10000, generator=g).sigmoid()
    assert float((scores.half().float() == scores).float().mean()) < 0.01


def test_host_half_leaves_out_non_finite_scores(caplog):
    """A backend that overflowed may return NaN scores: torch.sort puts NaN first, so the NaN entry was kept (and
    written as a bare NaN into the results json) and the lowest real detection dropped."""
    model = tiny_model()
    masks = torch.zeros(4, 32, 40)
    masks[:, 4:20, 4:30] = 0.9
    outputs = {"masks": masks.numpy(), "labels": np.array([0, 1, 2, 0], dtype=np.int32),
               "scores": np.array([0.9, np.nan, 0.5, 0.0], dtype=np.float32)}
    with caplog.at_level("WARNING"):
        out = model.postprocess(outputs, _metas(1)[0])
    assert out["scores"].tolist() == pytest.approx([0.9, 0.5]) and out["labels"].tolist() == [0, 2]
    assert "1 non-finite scores from the backend are left out" in caplog.text


def test_a_misspelled_focal_loss_key_is_refused():
    """model.head.loss_cls is merged into the focal loss's gamma / alpha / weight: a key it does not have (gama)
    was accepted and the loss kept gamma 2.0."""
    cfg = OmegaConf.load(CONF / "solov2_tiny.yaml")
    cfg.num_classes = 3
    cfg.head.loss_cls = {"gama": 5.0}
    with pytest.raises(ValueError, match="model.head.loss_cls has no key 'gama': the focal loss takes gamma, alpha, "
                                         "weight"):
        build_model(cfg)
    cfg.head.loss_cls = {"gamma": 1.5}
    assert build_model(cfg).loss_cls_cfg == {"gamma": 1.5, "alpha": 0.25, "weight": 1.0}
