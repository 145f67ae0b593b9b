"""FCOS (Tian et al., 2019): R50-caffe FPN, inference only.

Faithful to mmdet's FCOS R50-caffe-FPN 1x. The Ascend ModelZoo FCOS offline inference guide (310P) deploys
``fcos_r50_caffe_fpn_1x_4gpu_20190516-a7cac5ff.pth``, mmdet v1's head *without* GroupNorm (mmdet v1
``configs/fcos/README.md``: GN "N", 35.7 AP; the guide's config, Ascend/ModelZoo-PyTorch
``ACL_PyTorch/contrib/cv/detection/Fcos/fcos_r50_caffe_fpn_4x4_1x_coco.py``, sets ``bbox_head``
``norm_cfg=None``): its stacked head convs have a bias and no norm (mmdet v1
``mmdet/models/anchor_heads/fcos_head.py``: ``ConvModule(..., norm_cfg=self.norm_cfg, bias=self.norm_cfg is
None)``). That is the default here (``head.norm=none``); ``head.norm=gn`` builds the GroupNorm(32) head of
``fcos_r50_caffe_fpn_gn_1x_4gpu_20190516-9f253a93.pth`` and of mmdet >= 2's ``fcos_r50-caffe_fpn_gn-head_1x``.
:meth:`FCOS.convert_state_dict` reads mmdet v1 / v2 / v3 files and refuses, in one line naming the setting, a
file whose head is the other one.

Architecture: caffe-style ResNet-50 (stride on the first 1x1 conv, frozen BN) -> FPN over C3..C5
(``start_level=1``) with two extra stride-2 convs on the P5 output (P6, P7; ReLU before the second)
-> shared head with 4 conv(+GN(32))+ReLU per branch; centerness on the classification branch (mmdet
v1, and mmdet >= 2 unless ``centerness_on_reg``); box distances ``exp(scale_l * x)`` in pixels. mmdet's
improved FCOS (``fcos_center-normbbox-centeronreg-giou_*``: ``norm_on_bbox=True``, i.e. distances
``relu(scale_l * x) * stride``, ``conv_bias=True`` with GN, another caffe mean) is not implemented: its files
are refused (:meth:`FCOS.check_checkpoint_input`, :meth:`FCOS.convert_state_dict`).

Pre-processing, as mmdet's test pipeline: BGR float image, keep-ratio resize so that it fits the 800x1333 input
(``rescale_size``; a portrait image 800 px high, where mmdet's online Resize would make it 800 px wide),
subtract the caffe mean ``[102.9801, 115.9465, 122.7717]`` (BGR), std 1, and the image at
the top left of the static 800x1333 canvas, zero padding bottom / right (mmdet's ``Pad``). The guide's
``fcos_pth_preprocess.py`` instead centres the resized image on the canvas (``pad_left = (1333 - w) // 2``,
``pad_top = (800 - h) // 2``) and its ``fcos_pth_postprocess.py`` subtracts that offset from the boxes again:
the same boxes in the original image, but the network sees the image at another place on the canvas. A
pytorch-style backbone (``style="pytorch"``) takes RGB normalised by the ImageNet mean and std instead
(:data:`PYTORCH_PREPROCESSING`).

Post-processing, as mmdet 3.3.0 ``BaseDenseHead._predict_by_feat_single`` and ``_bbox_post_process``
do it: points at the cell centres ``((x + 0.5) * s, (y + 0.5) * s)``; per level the ``nms_pre`` = 1000
best (point, class) pairs by ``sigmoid(cls)`` among those above ``score_thr`` = 0.05
(``filter_scores_and_topk``); boxes = point -/+ distances, clamped to the resized image
(``img_shape``, not the padded canvas); boxes mapped back to the original image; score
``sigmoid(cls) * sigmoid(centerness)``; boxes with a side ``<= min_bbox_size`` (0) dropped; per-class
NMS suppressing ``IoU > 0.5``; the best 100. The first half (everything up to the candidate list) is
:meth:`FCOS.export_forward`, a static graph; the rest is :func:`fcos_postprocess`, run on the host by
:meth:`FCOS.predict` and by every deploy backend. (mmdet before 2.18 and the ModelZoo guide's mmdet
commit kept the ``nms_pre`` best *points* by ``max_c(cls * centerness)`` instead; the difference is in
the low-score tail.)

Training is not implemented: this framework uses FCOS as a deployment model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from solo_npu.checkpoints.io import CheckpointError
from solo_npu.models.backbones.resnet import ResNet
from solo_npu.models.contract import Preprocessing, as_float_tensor
from solo_npu.models.necks.fpn import FPN, ConvModule, init_normal_convs
from solo_npu.models.ops.box_coding import distance2bbox
from solo_npu.models.ops.boxes import batched_nms
from solo_npu.models.ops.factories import arange_on
from solo_npu.models.ops.geometry import boxes_to_original
from solo_npu.models.ops.indexing import take_rows, topk_int32
from solo_npu.models.ops.priors import fcos_points

__all__ = ["FCOS", "FCOSHead", "HEAD_NORMS", "Scale", "build_fcos", "fcos_postprocess", "head_norm"]

FCOS_OUTPUT_NAMES = ("boxes", "cls_scores", "centerness")
# mmdet v1 head names -> mmdet >= 2 (ours); backbone and neck names are already ours.
_MMDET_V1_HEAD = {"bbox_head.fcos_cls.": "bbox_head.conv_cls.", "bbox_head.fcos_reg.": "bbox_head.conv_reg.",
                  "bbox_head.fcos_centerness.": "bbox_head.conv_centerness."}
HEAD_NORMS = ("none", "gn")  # model.head.norm: the stacked head convs without a norm (with a bias) or with GN
_HEAD_GN = re.compile(r"bbox_head\.(cls|reg)_convs\.\d+\.gn\.weight")
_HEAD_CONV_BIAS = re.compile(r"bbox_head\.(cls|reg)_convs\.\d+\.conv\.bias")
# Settings of mmdet's FCOSHead that change what the weights mean but not their names and shapes (mmdet
# mmdet/models/dense_heads/fcos_head.py forward_single: ``norm_on_bbox`` decodes ``relu(scale * x) * stride``
# instead of ``exp(scale * x)``; ``centerness_on_reg`` reads centerness from the regression branch), as the
# config text a checkpoint keeps writes them (mmcv / mmengine ``Config.pretty_text``: ``key=value`` in ``dict(...)``,
# ``'key': value`` in a mapping).
_CFG_FLAG = r"""['"]?{}['"]?\s*[=:]\s*True\b"""


def _head_layout(state: Mapping[str, Tensor]) -> str | None:
    """The stacked-conv layout of an FCOS head's weights: ``gn`` (GroupNorm, no conv bias), ``none`` (conv bias,
    no norm), ``gn+bias`` (both: mmdet's ``conv_bias=True``) or ``None`` (no stacked convs in the file)."""
    gn = any(_HEAD_GN.fullmatch(k) for k in state)
    bias = any(_HEAD_CONV_BIAS.fullmatch(k) for k in state)
    if gn and bias:
        return "gn+bias"
    return "gn" if gn else "none" if bias else None


def _trained_flags(config_text: Any) -> list[str]:
    """The FCOSHead flags ``norm_on_bbox`` / ``centerness_on_reg`` that a checkpoint's config text sets to True."""
    if not isinstance(config_text, str):
        return []
    return [flag for flag in ("norm_on_bbox", "centerness_on_reg")
            if re.search(_CFG_FLAG.format(flag), config_text) is not None]


# RGB normalised by the ImageNet mean and std, as mmdet's pytorch-style FCOS configs feed their ResNet
# (configs/fcos/fcos_r50_fpn_gn-head-center-normbbox-centeronreg-giou_*.py).
PYTORCH_PREPROCESSING = Preprocessing("keep_ratio", "pytorch", mean=(123.675, 116.28, 103.53),
                                      std=(58.395, 57.12, 57.375), pad_position="top_left")


def _trained_style(config_text: Any) -> str | None:
    """The ResNet style (``pytorch`` / ``caffe``) that a checkpoint's config text builds, or ``None`` when it says
    none (mmdet's ResNet default is pytorch, but a config without the key may not be a ResNet's)."""
    if not isinstance(config_text, str):
        return None
    found = re.search(r"""['"]?style['"]?\s*[=:]\s*['"](pytorch|caffe)['"]""", config_text)
    return found.group(1) if found else None


def head_norm(value: Any) -> str | None:
    """``model.head.norm`` (``none`` / ``null`` or ``gn``) as :class:`FCOSHead`'s ``norm`` (``None`` or ``"gn"``)."""
    name = "none" if value is None else str(value).strip().lower()
    if name not in HEAD_NORMS:
        raise ValueError(f"model.head.norm={value!r}: FCOS's head norm is one of {', '.join(HEAD_NORMS)}")
    return None if name == "none" else name


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
        norm: norm of the stacked convs: ``None`` (convs with a bias, the FCOS guide's checkpoint) or ``"gn"``.
        centerness_on_reg: predict centerness from the regression branch (mmdet's later variants).
    """

    def __init__(self, num_classes: int = 80, in_channels: int = 256, feat_channels: int = 256,
                 stacked_convs: int = 4, strides: Sequence[int] = (8, 16, 32, 64, 128), norm: str | None = None,
                 num_groups: int = 32, centerness_on_reg: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.strides = tuple(strides)
        self.norm = norm
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
        init_normal_convs(self)
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
        nms_pre: (point, class) candidates kept per level before NMS.
        score_thr, iou_threshold, max_per_img, min_bbox_size: mmdet's ``test_cfg``.
    """

    # The model's facts for deployment and checkpoint loading (see solo_npu/models/contract.py).
    display_name = "FCOS"
    trainable = False  # no training losses: forward raises NotImplementedError in training mode
    output_names = FCOS_OUTPUT_NAMES
    iou_types = ("bbox",)

    checkpoint_layouts = ("fcos",)
    classifier_prefixes = ("bbox_head.conv_cls.",)

    # mmdet's pipeline: keep-ratio fit, zero padding bottom / right; for the caffe-style ResNet of the FCOS guide BGR
    # minus the FCOS configs' caffe mean, std 1. A pytorch-style backbone gets PYTORCH_PREPROCESSING (__init__).
    preprocessing = Preprocessing("keep_ratio", "caffe", mean=(102.9801, 115.9465, 122.7717), std=(1.0, 1.0, 1.0),
                                  pad_position="top_left")

    @property
    def score_floor(self) -> float:
        return self.score_thr  # on the class score; the final score is it x centerness (<= 1)

    @property
    def max_detections(self) -> int:
        return self.max_per_img

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: FCOSHead, nms_pre: int = 1000,
                 score_thr: float = 0.05, iou_threshold: float = 0.5, max_per_img: int = 100,
                 min_bbox_size: float = 0.0) -> None:
        super().__init__()
        if nms_pre < 1:
            raise ValueError(f"FCOS needs nms_pre >= 1 (a static candidate count), got {nms_pre}")
        self.backbone, self.neck, self.bbox_head = backbone, neck, head
        if getattr(backbone, "style", "caffe") == "pytorch":
            self.preprocessing = PYTORCH_PREPROCESSING
        self.nms_pre, self.score_thr, self.iou_threshold = nms_pre, score_thr, iou_threshold
        self.max_per_img, self.min_bbox_size = max_per_img, min_bbox_size

    @property
    def num_classes(self) -> int:
        return self.bbox_head.num_classes

    def forward(self, images: Tensor, targets: Mapping[str, Any] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Inference only: returns :meth:`export_forward`. Training raises ``NotImplementedError``."""
        if targets is not None or self.training:
            raise NotImplementedError("FCOS is inference-only in solo-npu (no training losses)")
        return self.export_forward(images)

    def export_forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Static-shape candidates for TorchScript / ONNX: per level the ``nms_pre`` best (point, class)
        pairs by ``sigmoid(cls)`` (mmdet 3.3.0 ``filter_scores_and_topk`` without the threshold, which
        the host applies), one row per pair.

        Returns:
            ``boxes [B, N, 4]`` (canvas pixels, clamped to the canvas), ``cls_scores [B, N, C]`` (the
            pair's sigmoid score in its class column, 0 in the others) and ``centerness [B, N]``
            (sigmoid of the pair's point), with ``N = sum_l min(nms_pre, H_l * W_l * C)``.
        """
        feats = self.neck(self.backbone(images))
        cls_scores, bbox_preds, centernesses = self.bbox_head(feats)
        canvas_h, canvas_w = images.shape[-2:]
        sizes = [tuple(c.shape[-2:]) for c in cls_scores]
        # the points and classes follow the images' device, without a device constant in the export graph
        points = fcos_points(sizes, self.bbox_head.strides, like=images)
        batch = images.shape[0]
        num_classes = cls_scores[0].shape[1]
        classes = arange_on(images, num_classes, torch.int32)  # int32 index arithmetic: see ops/indexing.py
        all_boxes, all_scores, all_ctr = [], [], []
        for cls, reg, ctr, pts in zip(cls_scores, bbox_preds, centernesses, points):
            pair_scores = cls.flatten(2).transpose(1, 2).sigmoid().reshape(batch, -1)  # [B, HW*C]: point * C + class
            dist = reg.flatten(2).transpose(1, 2)  # [B, HW, 4]
            ctr = ctr.flatten(1).sigmoid()  # [B, HW]
            k = min(self.nms_pre, pair_scores.shape[1])
            top, pair = topk_int32(pair_scores, k, dim=1)  # [B, k], best first
            point = torch.div(pair, num_classes, rounding_mode="trunc")  # never negative: the floor division
            label = pair - point * num_classes
            all_scores.append((label[..., None] == classes).to(top.dtype) * top[..., None])
            dist = take_rows(dist, point)
            pts = pts.index_select(0, point.reshape(-1)).reshape(batch, k, 2)
            all_boxes.append(distance2bbox(pts, dist, max_shape=(canvas_h, canvas_w)))
            all_ctr.append(take_rows(ctr, point))
        return torch.cat(all_boxes, 1), torch.cat(all_scores, 1), torch.cat(all_ctr, 1)

    @torch.no_grad()
    def predict(self, images: Tensor, metas: Sequence[Mapping[str, Any]]) -> list[dict[str, Tensor]]:
        """Per-image ``boxes``, ``labels``, ``scores`` in original-image coordinates."""
        boxes, cls_scores, centerness = self.export_forward(images)
        return [fcos_postprocess(boxes[i], cls_scores[i], centerness[i], meta, self.score_thr, self.iou_threshold,
                                 self.max_per_img, self.min_bbox_size) for i, meta in enumerate(metas)]

    @staticmethod
    def checkpoint_layout(state: Mapping[str, Tensor], container: str | None = None) -> str | None:
        """mmdet files keep their weights under ``state_dict`` (ours under ``model``)."""
        return "fcos" if container == "state_dict" else None

    def postprocess(self, outputs: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Tensor]:
        """:func:`fcos_postprocess` of one image's :meth:`export_forward` outputs with this model's thresholds."""
        return fcos_postprocess(as_float_tensor(outputs["boxes"]), as_float_tensor(outputs["cls_scores"]),
                                as_float_tensor(outputs["centerness"]), meta, self.score_thr, self.iou_threshold,
                                self.max_per_img, self.min_bbox_size)

    @property
    def head_norm(self) -> str:
        """``model.head.norm`` of this model: ``gn`` or ``none``."""
        return self.bbox_head.norm or "none"

    def convert_state_dict(self, state: Mapping[str, Tensor], layout: str = "fcos",
                           num_classes: int | None = None) -> dict[str, Tensor]:
        """An mmdet v1 / v2 / v3 FCOS state dict (``fcos``) in this model's names: v1 head names renamed,
        the level scales as scalars.

        Raises:
            CheckpointError: the file's stacked head convs are the other layout than this model's
                ``model.head.norm`` (GroupNorm weights against ``none``, conv biases against ``gn``), or have both
                (mmdet's improved FCOS, ``conv_bias=True``), in one line naming the setting.
        """
        if layout != "fcos":
            raise ValueError(f"FCOS reads 'fcos' (mmdet) checkpoints, not {layout!r}")
        self._check_head_layout(state)
        out = {}
        for key, value in state.items():
            for old, new in _MMDET_V1_HEAD.items():
                if key.startswith(old):
                    key = new + key[len(old):]
                    break
            if re.fullmatch(r"bbox_head\.scales\.\d+\.scale", key) and value.numel() == 1:
                value = value.reshape(())
            out[key] = value
        return out

    def _check_head_layout(self, state: Mapping[str, Tensor]) -> None:
        found = _head_layout(state)
        if found is None or found == self.head_norm:
            return
        gn_key = next(k for k in state if _HEAD_GN.fullmatch(k)) if found != "none" else None
        bias_key = next(k for k in state if _HEAD_CONV_BIAS.fullmatch(k)) if found != "gn" else None
        if found == "gn+bias":
            raise CheckpointError(
                f"the checkpoint's FCOS head has GroupNorm and conv biases ({gn_key}, {bias_key}): mmdet's improved "
                "FCOS (conv_bias=True, trained with norm_on_bbox / centerness_on_reg), which this FCOS does not "
                "implement; use an FCOS checkpoint with model.head.norm=gn (GroupNorm, no conv bias) or none")
        if found == "gn":
            raise CheckpointError(
                f"the checkpoint's FCOS head has GroupNorm after its stacked convs ({gn_key}; e.g. "
                "fcos_r50_caffe_fpn_gn_1x_4gpu_20190516-9f253a93.pth) but the model has model.head.norm=none: add "
                "model.head.norm=gn")
        raise CheckpointError(
            f"the checkpoint's FCOS head has no norm, its stacked convs have biases ({bias_key}; e.g. the FCOS "
            "guide's fcos_r50_caffe_fpn_1x_4gpu_20190516-a7cac5ff.pth) but the model has model.head.norm=gn: add "
            "model.head.norm=none")

    def check_checkpoint_input(self, layout: str | None, normalize: Mapping[str, Any] | None = None,
                               config_text: Any = None) -> None:
        """CheckpointError when the config text an mmdet file keeps (``meta.config`` / ``meta.cfg``, copied into
        converted files) trained another head than this one: ``norm_on_bbox=True`` (distances
        ``relu(scale * x) * stride``, which this FCOS does not decode) or ``centerness_on_reg=True`` on a model
        built without it. ``layout`` and ``normalize``: part of the model contract (FCOS has its own
        pre-processing, not the data config's)."""
        flags = _trained_flags(config_text)
        trained_style = _trained_style(config_text)
        style = getattr(self.backbone, "style", "caffe")
        if trained_style is not None and trained_style != style:
            raise CheckpointError(
                f"the checkpoint's config trained FCOS on a {trained_style}-style ResNet (style='{trained_style}'"
                f"{', RGB input normalised by the ImageNet mean and std' if trained_style == 'pytorch' else ''}) but "
                f"the model has a {style}-style one fed its input: add model.style={trained_style}")
        if "norm_on_bbox" in flags:
            raise CheckpointError(
                f"the checkpoint's config trained FCOS with {'=True, '.join(flags)}=True (mmdet's improved FCOS: "
                "box distances relu(scale * x) * stride, caffe mean [103.53, 116.28, 123.675]); this FCOS decodes "
                "exp(scale * x) (mmdet's norm_on_bbox=False) and would give wrong boxes: use an FCOS checkpoint "
                "trained without norm_on_bbox")
        if "centerness_on_reg" in flags and not self.bbox_head.centerness_on_reg:
            raise CheckpointError("the checkpoint's config trained FCOS with centerness_on_reg=True (centerness "
                                  "from the regression branch) but the model has centerness_on_reg=false: add "
                                  "model.centerness_on_reg=true")


def fcos_postprocess(boxes: Tensor, cls_scores: Tensor, centerness: Tensor, meta: Mapping[str, Any],
                     score_thr: float = 0.05, iou_threshold: float = 0.5, max_per_img: int = 100,
                     min_bbox_size: float = 0.0) -> dict[str, Tensor]:
    """Host half of FCOS inference for one image (mmdet 3.3.0 order).

    Every (row, class) with ``cls_scores > score_thr`` is a candidate; its box is clamped to the resized
    image (``meta["img_shape"]`` at ``meta["pad"]`` in the canvas) and mapped to the original image;
    its score is ``cls_score * centerness``; boxes with a side ``<= min_bbox_size`` are dropped; per-class
    NMS (``IoU > iou_threshold`` suppresses); the ``max_per_img`` best.

    Args:
        boxes: ``[N, 4]`` canvas boxes; cls_scores: ``[N, C]``; centerness: ``[N]`` (outputs of
            :meth:`FCOS.export_forward` for one image, from any backend).
        meta: image meta dict.
    """
    boxes, cls_scores, centerness = (torch.as_tensor(t).float() for t in (boxes, cls_scores, centerness))
    if cls_scores.dim() != 2 or boxes.shape[0] != cls_scores.shape[0] or centerness.shape != boxes.shape[:1]:
        raise ValueError(f"fcos_postprocess expects boxes [N, 4], cls_scores [N, C] and centerness [N], got "
                         f"{tuple(boxes.shape)}, {tuple(cls_scores.shape)} and {tuple(centerness.shape)}")
    top, left = meta.get("pad", (0, 0))
    img_h, img_w = meta["img_shape"]
    box_idx, labels = (cls_scores > score_thr).nonzero(as_tuple=True)
    cand = boxes[box_idx]
    cand = torch.stack([cand[:, 0].clamp(left, left + img_w), cand[:, 1].clamp(top, top + img_h),
                        cand[:, 2].clamp(left, left + img_w), cand[:, 3].clamp(top, top + img_h)], dim=1)
    cand = boxes_to_original(cand, meta, clip=False)  # mmdet rescales without clipping
    scores = cls_scores[box_idx, labels] * centerness[box_idx]
    wh = cand[:, 2:] - cand[:, :2]
    sized = (wh > min_bbox_size).all(dim=1)
    cand, scores, labels = cand[sized], scores[sized], labels[sized]
    keep = batched_nms(cand, scores, labels, iou_threshold)[:max_per_img]
    return {"boxes": cand[keep], "labels": labels[keep].long(), "scores": scores[keep]}


def build_fcos(num_classes: int = 80, name: str = "fcos", depth: int = 50, style: str = "caffe",
               norm: str = "frozen_bn", fpn_channels: int = 256, feat_channels: int = 256, stacked_convs: int = 4,
               num_groups: int = 32, strides: Sequence[int] = (8, 16, 32, 64, 128), centerness_on_reg: bool = False,
               nms_pre: int = 1000, score_thr: float = 0.05, iou_threshold: float = 0.5,
               max_per_img: int = 100, min_bbox_size: float = 0.0, head: Mapping[str, Any] | None = None) -> FCOS:
    """FCOS R50-caffe-FPN (the FCOS guide's model by default); smaller ``depth`` / widths for tests.
    ``name`` is the config's label, kept as ``model.name``. ``norm`` is the backbone's.

    Args:
        head: ``{"norm": "none" | "gn"}`` (default ``none``, the guide's checkpoint): the norm of the stacked head
            convs (``num_groups`` groups for ``gn``); other keys go to :class:`FCOSHead`.
    """
    backbone = ResNet(depth=depth, style=style, norm=norm, frozen_stages=1, out_indices=(0, 1, 2, 3))
    neck = FPN(backbone.stage_channels, fpn_channels, num_outs=len(strides), start_level=1,
               add_extra_convs="on_output", relu_before_extra_convs=True)
    head_cfg = dict(head or {})
    head_cfg["norm"] = head_norm(head_cfg.get("norm", "none"))
    bbox_head = FCOSHead(num_classes, fpn_channels, feat_channels, stacked_convs, strides, num_groups=num_groups,
                         centerness_on_reg=centerness_on_reg, **head_cfg)
    model = FCOS(backbone, neck, bbox_head, nms_pre, score_thr, iou_threshold, max_per_img, min_bbox_size)
    model.name = name
    return model.eval()
