"""FCOS (Tian et al., 2019): R50-caffe FPN with a GroupNorm head, inference only.

Faithful to mmdet's ``fcos_r50_caffe_fpn_gn-head_1x`` (the model of seed 002, checkpoint
``fcos_r50_caffe_fpn_1x_4gpu_20190516-a7cac5ff.pth``; load it with
:func:`solo_npu.checkpoints.convert_detectors.convert_fcos_state_dict`).

Architecture: caffe-style ResNet-50 (stride on the first 1x1 conv, frozen BN) -> FPN over C3..C5
(``start_level=1``) with two extra stride-2 convs on the P5 output (P6, P7; ReLU before the second)
-> shared head with 4 conv+GN(32)+ReLU per branch; centerness on the classification branch (mmdet
v1, and mmdet >= 2 unless ``centerness_on_reg``); box distances ``exp(scale_l * x)`` in pixels.

Pre-processing (seed 002): BGR float image, keep-ratio resize so that it fits 1333x800
(``rescale_size``), subtract the caffe mean ``[102.9801, 115.9465, 122.7717]`` (BGR), std 1,
zero-pad bottom/right to the static 800x1333 canvas.

Post-processing (mmdet ``get_bboxes`` + ``multiclass_nms``): per level the ``nms_pre`` = 1000 points
with the best ``max_c(sigmoid(cls) * centerness)``; boxes = point -/+ distances, clamped to the
canvas; every (box, class) with ``sigmoid(cls) > 0.05`` is a candidate ranked by
``sigmoid(cls) * centerness``; per-class NMS at IoU 0.5; best 100; boxes mapped back to the
original image. The first half (everything up to the candidate list) is :meth:`FCOS.export_forward`,
a static graph; the NMS half is :func:`fcos_postprocess`, run on the host by :meth:`FCOS.predict`
and by every deploy backend.

Training is not implemented: this framework uses FCOS as a deployment model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from solo_npu.models.backbones.resnet import ResNet
from solo_npu.models.necks.fpn import FPN, ConvModule
from solo_npu.models.ops.box_coding import distance2bbox
from solo_npu.models.ops.boxes import multiclass_nms
from solo_npu.models.ops.geometry import boxes_to_original
from solo_npu.models.ops.priors import fcos_points

__all__ = ["FCOS", "FCOSHead", "Scale", "build_fcos", "fcos_postprocess"]

FCOS_OUTPUT_NAMES = ("boxes", "cls_scores", "centerness")


class Scale(nn.Module):
    """A learnable scalar multiplier (``scales.i.scale`` in mmdet checkpoints)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class FCOSHead(nn.Module):
    """FCOS head with mmdet >= 2 parameter names (``cls_convs``, ``reg_convs``, ``conv_cls``,
    ``conv_reg``, ``conv_centerness``, ``scales``).

    Args:
        num_classes: foreground classes (sigmoid outputs).
        in_channels: FPN channels.
        feat_channels: channels of the stacked convs.
        stacked_convs: convs per branch.
        strides: FPN level strides.
        norm: norm of the stacked convs (``"gn"`` or ``None``).
        centerness_on_reg: predict centerness from the regression branch (mmdet's later variants).
    """

    def __init__(self, num_classes: int = 80, in_channels: int = 256, feat_channels: int = 256,
                 stacked_convs: int = 4, strides: Sequence[int] = (8, 16, 32, 64, 128), norm: str | None = "gn",
                 num_groups: int = 32, centerness_on_reg: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.strides = tuple(strides)
        self.centerness_on_reg = centerness_on_reg

        def branch() -> nn.ModuleList:
            return nn.ModuleList(
                ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3, padding=1, norm=norm,
                           num_groups=num_groups) for i in range(stacked_convs))

        self.cls_convs = branch()
        self.reg_convs = branch()
        self.conv_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.conv_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.conv_centerness = nn.Conv2d(feat_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.conv_cls.bias, -4.59511985)  # prior probability 0.01

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per level: class logits ``[B, C, H, W]``, distances ``[B, 4, H, W]`` (pixels, > 0) and
        centerness logits ``[B, 1, H, W]``."""
        cls_scores, bbox_preds, centernesses = [], [], []
        for x, scale in zip(feats, self.scales):
            cls_feat, reg_feat = x, x
            for conv in self.cls_convs:
                cls_feat = conv(cls_feat)
            for conv in self.reg_convs:
                reg_feat = conv(reg_feat)
            cls_scores.append(self.conv_cls(cls_feat))
            bbox_preds.append(torch.exp(scale(self.conv_reg(reg_feat)).float()))
            centernesses.append(self.conv_centerness(reg_feat if self.centerness_on_reg else cls_feat))
        return cls_scores, bbox_preds, centernesses


class FCOS(nn.Module):
    """Backbone + FPN + :class:`FCOSHead` with a static export graph and host-side NMS.

    Args:
        backbone: returns C2..C5.
        neck: FPN producing one map per head stride.
        head: the FCOS head.
        nms_pre: candidates kept per level before NMS.
        score_thr, iou_threshold, max_per_img: multi-class NMS settings.
    """

    output_names = FCOS_OUTPUT_NAMES

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: FCOSHead, nms_pre: int = 1000,
                 score_thr: float = 0.05, iou_threshold: float = 0.5, max_per_img: int = 100) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.bbox_head = head
        self.nms_pre = nms_pre
        self.score_thr = score_thr
        self.iou_threshold = iou_threshold
        self.max_per_img = max_per_img

    def forward(self, images: Tensor, targets: Mapping[str, Any] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Inference only: returns :meth:`export_forward`. Training raises ``NotImplementedError``."""
        if targets is not None or self.training:
            raise NotImplementedError("FCOS is inference-only in solo-npu (no training losses)")
        return self.export_forward(images)

    def export_forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Static-shape candidates for TorchScript / ONNX.

        Returns:
            ``boxes [B, N, 4]`` (canvas pixels, clamped to the canvas), ``cls_scores [B, N, C]``
            (sigmoid) and ``centerness [B, N]`` (sigmoid), with ``N = sum_l min(nms_pre, H_l * W_l)``.
        """
        feats = self.neck(self.backbone(images))
        cls_scores, bbox_preds, centernesses = self.bbox_head(feats)
        canvas_h, canvas_w = images.shape[-2:]
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        points = fcos_points(sizes, self.bbox_head.strides, device=images.device)
        batch = images.shape[0]
        all_boxes, all_scores, all_ctr = [], [], []
        for cls, reg, ctr, pts in zip(cls_scores, bbox_preds, centernesses, points):
            scores = cls.flatten(2).transpose(1, 2).sigmoid()  # [B, HW, C]
            dist = reg.flatten(2).transpose(1, 2)  # [B, HW, 4]
            ctr = ctr.flatten(1).sigmoid()  # [B, HW]
            k = min(self.nms_pre, scores.shape[1])
            if k < scores.shape[1]:
                rank = (scores * ctr[..., None]).amax(dim=-1)
                idx = rank.topk(k, dim=1).indices  # [B, k]
                scores = scores.gather(1, idx[..., None].expand(-1, -1, scores.shape[-1]))
                dist = dist.gather(1, idx[..., None].expand(-1, -1, 4))
                ctr = ctr.gather(1, idx)
                pts = pts[idx.reshape(-1)].reshape(batch, k, 2)
            else:
                pts = pts[None].expand(batch, -1, -1)
            all_boxes.append(distance2bbox(pts, dist, max_shape=(canvas_h, canvas_w)))
            all_scores.append(scores)
            all_ctr.append(ctr)
        return torch.cat(all_boxes, 1), torch.cat(all_scores, 1), torch.cat(all_ctr, 1)

    @torch.no_grad()
    def predict(self, images: Tensor, metas: Sequence[Mapping[str, Any]]) -> list[dict[str, Tensor]]:
        """Per-image ``boxes``, ``labels``, ``scores`` in original-image coordinates."""
        boxes, cls_scores, centerness = self.export_forward(images)
        return [fcos_postprocess(boxes[i], cls_scores[i], centerness[i], meta, self.score_thr, self.iou_threshold,
                                 self.max_per_img) for i, meta in enumerate(metas)]


def fcos_postprocess(boxes: Tensor, cls_scores: Tensor, centerness: Tensor, meta: Mapping[str, Any],
                     score_thr: float = 0.05, iou_threshold: float = 0.5,
                     max_per_img: int = 100) -> dict[str, Tensor]:
    """Host half of FCOS inference for one image: multi-class NMS and mapping to the original image.

    Args:
        boxes: ``[N, 4]`` canvas boxes; cls_scores: ``[N, C]``; centerness: ``[N]`` (outputs of
            :meth:`FCOS.export_forward` for one image, from any backend).
        meta: image meta dict.
    """
    boxes, cls_scores, centerness = (torch.as_tensor(t).float() for t in (boxes, cls_scores, centerness))
    kept_boxes, scores, labels = multiclass_nms(boxes, cls_scores, score_thr, iou_threshold, max_per_img,
                                                score_factors=centerness)
    return {"boxes": boxes_to_original(kept_boxes, meta), "labels": labels.long(), "scores": scores.float()}


def build_fcos(num_classes: int = 80, name: str = "fcos", depth: int = 50, style: str = "caffe",
               norm: str = "frozen_bn", fpn_channels: int = 256, feat_channels: int = 256, stacked_convs: int = 4,
               num_groups: int = 32, strides: Sequence[int] = (8, 16, 32, 64, 128), centerness_on_reg: bool = False,
               nms_pre: int = 1000, score_thr: float = 0.05, iou_threshold: float = 0.5,
               max_per_img: int = 100) -> FCOS:
    """FCOS R50-caffe-FPN GN-head (seed 002 defaults); smaller ``depth`` / widths for tests.
    ``name`` is the config's label, kept as ``model.name``."""
    backbone = ResNet(depth=depth, style=style, norm=norm, frozen_stages=1, out_indices=(0, 1, 2, 3))
    neck = FPN(backbone.stage_channels, fpn_channels, num_outs=len(strides), start_level=1,
               add_extra_convs="on_output", relu_before_extra_convs=True)
    head = FCOSHead(num_classes, fpn_channels, feat_channels, stacked_convs, strides, "gn", num_groups,
                    centerness_on_reg)
    model = FCOS(backbone, neck, head, nms_pre, score_thr, iou_threshold, max_per_img)
    model.name = name
    return model.eval()
