"""YolactEdge (Liu et al., 2021) R50-FPN image model, inference only.

Faithful to ``yolact_edge_resnet50_config`` (the model of the Ascend ModelZoo YolactEdge
inference guide (310P), checkpoint ``yolact_edge_resnet50_54_800000.pth``;
:meth:`YolactEdge.convert_state_dict` reads it). The video
parts of YolactEdge (flow network, partial backbone, feature warping) do not change single-image
outputs and are not built.

Architecture: ResNet-50 (pytorch style, BN frozen) C3..C5 -> YOLACT FPN (1x1 laterals, bilinear
top-down upsampling, 3x3 output convs + ReLU, two stride-2 3x3 "downsample" convs for P6/P7) ->
protonet on P3 (3 x conv3x3+ReLU, bilinear x2, conv3x3+ReLU, conv1x1 to 32, ReLU) giving
138x138x32 prototypes at 550x550, and one prediction head shared by all 5 levels (conv3x3+ReLU,
then 3x3 convs for 4 box offsets, 81 class logits and 32 tanh mask coefficients per prior).

Priors (``make_priors`` with the R50 config's ``preapply_sqrt=False``, ``use_pixel_scales=True``,
``use_square_anchors=True``): 3 per position, all square, with sides ``scale * sqrt(ar) / 550`` for
``ar`` in (1, 1/2, 2) - i.e. ``scale * (1, 0.7071, 1.4142) / 550`` - and one scale per level
(24, 48, 96, 192, 384 on P3..P7); 19248 priors at 550x550. Boxes are decoded with variances (0.1, 0.2).

Pre-processing (YOLACT's ``BaseTransform``, which its COCO evaluation uses): resize to 550x550 ignoring the aspect
ratio (``cv2.resize`` INTER_LINEAR on float32), ``(img_bgr - [103.94, 116.78, 123.68]) / [57.38, 57.12, 58.40]``,
then RGB order; i.e. RGB mean ``[123.68, 116.78, 103.94]`` and std ``[58.40, 57.12, 57.38]``. No padding.

Post-processing (YOLACT ``Detect`` + ``postprocess``): softmax over 81 classes; priors whose best
foreground score is <= 0.05 are dropped; Fast NMS per class (top 200, IoU 0.5); the best 100 overall;
masks = sigmoid(prototypes @ coefficients), cropped to the box at prototype resolution (1 px margin),
resized bilinearly to the original image and thresholded at 0.5; boxes scaled to the original image
and truncated to integers; detections whose integer box is empty are dropped (as YOLACT's COCO json).
Export modes (:meth:`YolactEdge.export_forward`; the host half is :func:`yolact_postprocess`):

* ``"detections"`` (default): everything up to Fast NMS in the static graph, the mask assembly on the host.
* ``"heads"``: the decoded dense head outputs; Fast NMS on the host.
* ``"features"``: the six outputs of the Ascend ModelZoo YolactEdge inference guide (310P):
  ``output0..output4`` the five 256-channel FPN maps (69/35/18/9/5 at 550x550, NCHW) and ``output5``
  the prototypes ``[B, 138, 138, 32]``, all float32. The host runs the shared prediction head, the
  priors, decoding and Fast NMS from the same checkpoint (:meth:`YolactEdge.detect_from_features`), then
  the mask assembly; the detections equal the ``"detections"`` mode's.

Training is not implemented: this framework uses YolactEdge as a deployment model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from solo_npu.models.backbones.resnet import ResNet
from solo_npu.models.contract import Preprocessing, as_float_tensor, compare_raw_outputs
from solo_npu.models.ops.boxes import fast_nms
from solo_npu.models.ops.factories import to_device_of
from solo_npu.models.ops.geometry import boxes_to_original
from solo_npu.models.ops.indexing import take_rows
from solo_npu.models.ops.priors import yolact_priors

__all__ = ["EXPORT_OUTPUT_NAMES", "FEATURE_OUTPUT_NAMES", "PredictionHead", "ProtoNet", "YolactEdge", "YolactFPN",
           "build_yolact_edge", "yolact_decode", "yolact_detect", "yolact_postprocess"]

DETECTION_OUTPUT_NAMES = ("boxes", "scores", "labels", "coeffs", "proto")
HEAD_OUTPUT_NAMES = ("boxes", "conf", "coeffs", "proto")
# The ModelZoo guide's graph: five FPN levels (P3..P7) then the prototypes, named output0..output5.
FEATURE_OUTPUT_NAMES = tuple(f"output{i}" for i in range(6))
EXPORT_OUTPUT_NAMES = {"detections": DETECTION_OUTPUT_NAMES, "heads": HEAD_OUTPUT_NAMES,
                       "features": FEATURE_OUTPUT_NAMES}
# Modules of the released checkpoints that single images do not use (video and training parts).
_UNUSED_MODULES = ("flow_net.", "flow_net_pre_convs.", "spa.", "partial_backbone.", "class_existence_fc.")


class YolactFPN(nn.Module):
    """YOLACT's FPN. Lateral and output convs are stored top level first (``lat_layers[0]`` reads C5),
    as in the released checkpoints."""

    def __init__(self, in_channels: Sequence[int], num_features: int = 256, num_downsample: int = 2) -> None:
        super().__init__()
        self.lat_layers = nn.ModuleList(nn.Conv2d(c, num_features, 1) for c in reversed(in_channels))
        self.pred_layers = nn.ModuleList(nn.Conv2d(num_features, num_features, 3, padding=1) for _ in in_channels)
        self.downsample_layers = nn.ModuleList(nn.Conv2d(num_features, num_features, 3, padding=1, stride=2)
                                               for _ in range(num_downsample))

    def forward(self, convouts: Sequence[Tensor]) -> list[Tensor]:
        n = len(convouts)
        outs: list[Tensor] = [convouts[0]] * n
        x = None
        for i, lat in enumerate(self.lat_layers):
            j = n - 1 - i
            lateral = lat(convouts[j])
            if x is not None:
                x = F.interpolate(x, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
                lateral = x + lateral
            x = lateral
            outs[j] = x
        for i, pred in enumerate(self.pred_layers):
            j = n - 1 - i
            outs[j] = F.relu(pred(outs[j]))
        for down in self.downsample_layers:
            outs.append(down(outs[-1]))
        return outs


class _Upsample2x(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class ProtoNet(nn.Sequential):
    """Prototype branch; module indices match the checkpoint's ``proto_net.{0,2,4,8,10}``."""

    def __init__(self, in_channels: int = 256, channels: int = 256, num_prototypes: int = 32) -> None:
        layers: list[nn.Module] = []
        cin = in_channels
        for _ in range(3):
            layers += [nn.Conv2d(cin, channels, 3, padding=1), nn.ReLU(inplace=True)]
            cin = channels
        layers += [_Upsample2x(), nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 3, padding=1),
                   nn.ReLU(inplace=True), nn.Conv2d(channels, num_prototypes, 1)]
        super().__init__(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(super().forward(x))


class PredictionHead(nn.Module):
    """Shared per-level head: ``upfeature`` then box / class / coefficient convs."""

    def __init__(self, in_channels: int = 256, num_priors: int = 3, num_classes: int = 81, mask_dim: int = 32) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.mask_dim = mask_dim
        self.upfeature = nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU(inplace=True))
        self.bbox_layer = nn.Conv2d(in_channels, num_priors * 4, 3, padding=1)
        self.conf_layer = nn.Conv2d(in_channels, num_priors * num_classes, 3, padding=1)
        self.mask_layer = nn.Conv2d(in_channels, num_priors * mask_dim, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``loc [B, HWA, 4]``, ``conf [B, HWA, num_classes]`` logits, ``coeffs [B, HWA, mask_dim]`` (tanh)."""
        x = self.upfeature(x)
        b = x.shape[0]
        loc = self.bbox_layer(x).permute(0, 2, 3, 1).reshape(b, -1, 4)
        conf = self.conf_layer(x).permute(0, 2, 3, 1).reshape(b, -1, self.num_classes)
        coeffs = torch.tanh(self.mask_layer(x).permute(0, 2, 3, 1).reshape(b, -1, self.mask_dim))
        return loc, conf, coeffs


class YolactEdge(nn.Module):
    """YolactEdge image model with parameter names of the released checkpoints.

    Args:
        backbone: returns C3, C4, C5.
        fpn: :class:`YolactFPN`.
        num_classes: foreground classes (the head predicts ``num_classes + 1`` with background 0).
        export_mode: ``"detections"`` (Fast NMS in the graph), ``"heads"`` (dense decoded outputs) or
            ``"features"`` (FPN maps and prototypes; the prediction head on the host).
        preapply_sqrt, use_pixel_scales, use_square_anchors: prior settings (see
            :func:`~solo_npu.models.ops.priors.yolact_priors`).
    """

    # The model's facts for deployment and checkpoint loading (see solo_npu/models/contract.py).
    display_name = "YolactEdge"
    trainable = False  # no training losses: forward raises NotImplementedError in training mode
    iou_types = ("segm", "bbox")

    # YOLACT BaseTransform: stretch to the input, RGB, MEANS / STD (given in BGR there); no padding
    preprocessing = Preprocessing("stretch", "pytorch", mean=(123.68, 116.78, 103.94), std=(58.40, 57.12, 57.38),
                                  pad_position="top_left")
    checkpoint_layouts = ("yolact_edge",)

    @property
    def score_floor(self) -> float:
        return self.conf_thresh  # on a prior's best class score, which its detections' scores do not exceed

    @property
    def max_detections(self) -> int:
        return self.max_num_detections

    def __init__(self, backbone: nn.Module, fpn: YolactFPN, proto_net: ProtoNet, head: PredictionHead,
                 num_classes: int = 80, scales: Sequence[float] = (24, 48, 96, 192, 384),
                 aspect_ratios: Sequence[float] = (1.0, 0.5, 2.0), max_size: int = 550, conf_thresh: float = 0.05,
                 nms_thresh: float = 0.5, top_k: int = 200, max_num_detections: int = 100, mask_thr: float = 0.5,
                 export_mode: str = "detections", preapply_sqrt: bool = False, use_pixel_scales: bool = True,
                 use_square_anchors: bool = True) -> None:
        super().__init__()
        if export_mode not in EXPORT_OUTPUT_NAMES:
            raise ValueError(f"export_mode must be one of {sorted(EXPORT_OUTPUT_NAMES)}, got {export_mode!r}")
        self.backbone = backbone
        self.fpn = fpn
        self.proto_net = proto_net
        self.prediction_layers = nn.ModuleList([head])
        self.semantic_seg_conv = nn.Conv2d(head.upfeature[0].in_channels, num_classes, 1)  # training-only branch
        self.num_classes, self.export_mode = num_classes, export_mode
        # prior settings
        self.scales, self.aspect_ratios, self.max_size = tuple(scales), tuple(aspect_ratios), max_size
        self.preapply_sqrt, self.use_pixel_scales = preapply_sqrt, use_pixel_scales
        self.use_square_anchors = use_square_anchors
        # Fast NMS and mask settings
        self.conf_thresh, self.nms_thresh, self.top_k = conf_thresh, nms_thresh, top_k
        self.max_num_detections, self.mask_thr = max_num_detections, mask_thr

    @property
    def output_names(self) -> tuple[str, ...]:
        return EXPORT_OUTPUT_NAMES[self.export_mode]

    def forward(self, images: Tensor, targets: Mapping[str, Any] | None = None) -> tuple[Tensor, ...]:
        """Inference only: returns :meth:`export_forward`. Training raises ``NotImplementedError``."""
        if targets is not None or self.training:
            raise NotImplementedError("YolactEdge is inference-only in solo-npu (no training losses)")
        return self.export_forward(images)

    def dense_forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Decoded dense outputs: ``boxes [B, N, 4]`` (x1y1x2y2 relative to the canvas), ``conf [B, N, C+1]``
        (softmax), ``coeffs [B, N, 32]`` and ``proto [B, Hp, Wp, 32]``."""
        feats, proto = self.features(images)
        return (*self.decode_heads(feats), proto)

    def features(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        """The five FPN maps ``[B, 256, H_l, W_l]`` and the prototypes ``[B, Hp, Wp, 32]``."""
        feats = self.fpn(self.backbone(images))
        return feats, self.proto_net(feats[0]).permute(0, 2, 3, 1).contiguous()

    def decode_heads(self, feats: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """The shared prediction head on every level, decoded against the priors: ``boxes [B, N, 4]``,
        softmax ``conf [B, N, C+1]``, ``coeffs [B, N, 32]``. Variances (0.1, 0.2) as YOLACT's
        ``box_utils.decode``."""
        head = self.prediction_layers[0]
        locs, confs, coeffs = zip(*(head(f) for f in feats))
        # to_device_of: the export graph takes the device from the features (no device constant)
        priors = to_device_of(self.priors([tuple(f.shape[-2:]) for f in feats]), feats[0])
        return yolact_decode(torch.cat(locs, 1), priors), torch.cat(confs, 1).softmax(dim=-1), torch.cat(coeffs, 1)

    def detect(self, boxes: Tensor, conf: Tensor, coeffs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Fast NMS on decoded dense outputs: ``boxes [B, K, 4]``, ``scores [B, K]``, ``labels [B, K]`` (int32),
        ``coeffs [B, K, 32]``; empty slots have score 0."""
        det_boxes, scores, labels, index = yolact_detect(boxes, conf, self.conf_thresh, self.nms_thresh, self.top_k,
                                                         self.max_num_detections)
        det_coeffs = take_rows(coeffs, index)
        return det_boxes, scores, labels.int(), det_coeffs

    @torch.no_grad()
    def detect_from_features(self, feats: Sequence[Tensor], proto: Tensor) -> tuple[Tensor, ...]:
        """Host half of the ``"features"`` export: the ``"detections"`` outputs from the FPN maps and
        prototypes (``output0..output5``)."""
        return (*self.detect(*self.decode_heads(feats)), proto)

    def check_input_shape(self, height: int, width: int) -> None:
        """Pixel-sized priors are sides of ``scale / max_size`` of the input, and YolactEdge's ``max_size`` is its
        input side (yolact_edge/yolact.py make_priors: ``w = scale * ar / cfg.max_size``; the image is resized to
        ``max_size`` x ``max_size``): another input needs ``max_size`` set to it, or every prior is off by their
        ratio."""
        if not self.use_pixel_scales or (height, width) == (self.max_size, self.max_size):
            return
        if height != width:
            raise ValueError(f"YolactEdge takes a square input (its priors are sized in pixels of one side, "
                             f"model.max_size={self.max_size}), not {height}x{width}")
        raise ValueError(f"YolactEdge sizes its priors in pixels of model.max_size={self.max_size}, its input side: "
                         f"a {height}x{width} input needs model.max_size={height} as well")

    def priors(self, conv_sizes: Sequence[tuple[int, int]]) -> Tensor:
        """Priors ``[N, 4]`` (cx, cy, w, h) for the levels' ``(H, W)``, with this model's prior settings."""
        return yolact_priors(conv_sizes, self.scales, self.aspect_ratios, self.max_size,
                             preapply_sqrt=self.preapply_sqrt, use_pixel_scales=self.use_pixel_scales,
                             use_square_anchors=self.use_square_anchors)

    def export_forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """Static-shape outputs for TorchScript / ONNX (see :attr:`output_names`).

        ``"detections"``: ``boxes [B, K, 4]`` (relative x1y1x2y2), ``scores [B, K]``, ``labels [B, K]``
        (int32, 0-based foreground), ``coeffs [B, K, 32]``, ``proto [B, Hp, Wp, 32]`` with K =
        ``max_num_detections``; empty slots have score 0.
        """
        if self.export_mode == "features":
            feats, proto = self.features(images)
            return (*feats, proto)
        boxes, conf, coeffs, proto = self.dense_forward(images)
        if self.export_mode == "heads":
            return boxes, conf, coeffs, proto
        return (*self.detect(boxes, conf, coeffs), proto)

    @torch.no_grad()
    def predict(self, images: Tensor, metas: Sequence[Mapping[str, Any]]) -> list[dict[str, Tensor]]:
        """Per-image ``boxes``, ``labels``, ``scores`` and ``masks`` (bool) in original-image coordinates."""
        boxes, conf, coeffs, proto = self.dense_forward(images)
        det_boxes, scores, labels, det_coeffs = self.detect(boxes, conf, coeffs)
        return [yolact_postprocess(det_boxes[i], scores[i], labels[i], det_coeffs[i], proto[i], meta, self.mask_thr)
                for i, meta in enumerate(metas)]

    def postprocess(self, outputs: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Tensor]:
        """Host half for one image of any export mode: ``"features"`` runs the prediction head, decoding and
        Fast NMS of this model, ``"heads"`` Fast NMS; then :func:`yolact_postprocess`."""
        if self.export_mode == "features":
            device = next(self.parameters()).device
            feats = [as_float_tensor(outputs[name])[None].to(device) for name in FEATURE_OUTPUT_NAMES[:-1]]
            proto = as_float_tensor(outputs[FEATURE_OUTPUT_NAMES[-1]])[None].to(device)
            boxes, scores, labels, coeffs, proto = (t[0].cpu() for t in self.detect_from_features(feats, proto))
            return yolact_postprocess(boxes, scores, labels, coeffs, proto, meta, self.mask_thr)
        proto = as_float_tensor(outputs["proto"])
        if self.export_mode == "heads":
            boxes, scores, labels, index = yolact_detect(
                as_float_tensor(outputs["boxes"])[None], as_float_tensor(outputs["conf"])[None], self.conf_thresh,
                self.nms_thresh, self.top_k, self.max_num_detections)
            coeffs = as_float_tensor(outputs["coeffs"]).index_select(0, index[0])
            return yolact_postprocess(boxes[0], scores[0], labels[0], coeffs, proto, meta, self.mask_thr)
        return yolact_postprocess(as_float_tensor(outputs["boxes"]), as_float_tensor(outputs["scores"]),
                                  torch.as_tensor(np.asarray(outputs["labels"]).astype(np.int64)),
                                  as_float_tensor(outputs["coeffs"]), proto, meta, self.mask_thr)

    def compare_outputs(self, reference: Mapping[str, np.ndarray],
                        candidate: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Dense and feature modes: every output. Detection mode: only the slots the reference fills (score > 0)."""
        if self.export_mode != "detections":
            return compare_raw_outputs(self.output_names, reference, candidate)
        valid = np.asarray(reference["scores"]) > 0
        stats = {"valid": float(valid.sum())}
        for name in ("boxes", "scores", "coeffs"):
            diff = np.abs(np.asarray(reference[name], np.float64) - np.asarray(candidate[name], np.float64))
            diff = diff.reshape(*valid.shape, -1).max(axis=-1)
            stats[f"{name}_max_abs"] = float(np.where(valid, diff, 0).max(initial=0.0))
        labels_diff = np.asarray(reference["labels"]) != np.asarray(candidate["labels"])
        stats["labels_mismatch"] = float((labels_diff & valid).sum())
        stats["proto_max_abs"] = float(np.abs(np.asarray(reference["proto"], np.float64) -
                                              np.asarray(candidate["proto"], np.float64)).max(initial=0.0))
        return stats

    def convert_state_dict(self, state: Mapping[str, Tensor], layout: str = "yolact_edge",
                           num_classes: int | None = None) -> dict[str, Tensor]:
        """A YolactEdge (or YOLACT) state dict (``yolact_edge``) in this model's names: ``backbone.layers.N``
        -> ``backbone.layer{N+1}``, ``fpn_phase_1`` / ``fpn_phase_2`` (or YOLACT's ``fpn``) -> ``fpn``;
        the video-only modules and extra FPN downsample layers dropped."""
        if layout != "yolact_edge":
            raise ValueError(f"YolactEdge reads 'yolact_edge' checkpoints, not {layout!r}")
        has_layers = any(k.startswith("backbone.layers.") for k in state)
        num_downsample = len(self.fpn.downsample_layers)
        out = {}
        for key, value in state.items():
            if key.startswith(_UNUSED_MODULES):
                continue
            if has_layers and re.match(r"backbone\.layer\d", key):
                continue  # stale pre-"layers" copies, dropped by the reference loader as well
            m = re.match(r"backbone\.layers\.(\d+)\.(.*)", key)
            if m:
                key = f"backbone.layer{int(m.group(1)) + 1}.{m.group(2)}"
            key = key.replace("fpn_phase_1.", "fpn.").replace("fpn_phase_2.", "fpn.")
            m = re.match(r"fpn\.downsample_layers\.(\d+)\.", key)
            if m and int(m.group(1)) >= num_downsample:
                continue
            out[key] = value
        return out


def yolact_decode(loc: Tensor, priors: Tensor, variances: tuple[float, float] = (0.1, 0.2)) -> Tensor:
    """YOLACT ``box_utils.decode``: centre-size offsets ``loc [..., N, 4]`` against ``priors [N, 4]`` ->
    x1y1x2y2. The far corner is ``x1 + w`` (not ``cx + w / 2``), in the reference's order of float operations."""
    centers = priors[..., :2] + loc[..., :2] * variances[0] * priors[..., 2:]
    sizes = priors[..., 2:] * torch.exp(loc[..., 2:] * variances[1])
    corner = centers - sizes / 2
    return torch.cat([corner, corner + sizes], dim=-1)


def yolact_detect(boxes: Tensor, conf: Tensor, conf_thresh: float = 0.05, nms_thresh: float = 0.5, top_k: int = 200,
                  max_num: int = 100) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """YOLACT ``Detect`` with static shapes: drop priors whose best foreground score <= ``conf_thresh``
    (by zeroing their scores), then batched :func:`fast_nms`.

    Args:
        boxes: ``[B, N, 4]``; conf: ``[B, N, C+1]`` softmax scores, background at index 0.

    Returns:
        ``(boxes [B, K, 4], scores [B, K], labels [B, K], index [B, K])``.
    """
    fg = conf[..., 1:]
    valid = fg.amax(dim=-1, keepdim=True) > conf_thresh
    fg = torch.where(valid, fg, torch.zeros_like(fg))
    return fast_nms(boxes, fg.transpose(1, 2), nms_thresh, top_k, max_num)


def _sanitize(c1: Tensor, c2: Tensor, size: int, padding: float) -> tuple[Tensor, Tensor]:
    lo = torch.minimum(c1, c2) * size
    hi = torch.maximum(c1, c2) * size
    return (lo - padding).clamp(min=0), (hi + padding).clamp(max=size)


def crop_masks(masks: Tensor, boxes: Tensor, padding: float = 1.0) -> Tensor:
    """Zero ``masks [K, H, W]`` outside ``boxes [K, 4]`` (relative x1y1x2y2), with ``padding`` pixels of margin."""
    _, h, w = masks.shape
    x1, x2 = _sanitize(boxes[:, 0], boxes[:, 2], w, padding)
    y1, y2 = _sanitize(boxes[:, 1], boxes[:, 3], h, padding)
    cols = torch.arange(w, device=masks.device, dtype=masks.dtype)[None, None, :]
    rows = torch.arange(h, device=masks.device, dtype=masks.dtype)[None, :, None]
    keep = ((cols >= x1[:, None, None]) & (cols < x2[:, None, None]) &
            (rows >= y1[:, None, None]) & (rows < y2[:, None, None]))
    return masks * keep.to(masks.dtype)


def yolact_postprocess(boxes: Tensor, scores: Tensor, labels: Tensor, coeffs: Tensor, proto: Tensor,
                       meta: Mapping[str, Any], mask_thr: float = 0.5) -> dict[str, Tensor]:
    """Host half of YolactEdge inference for one image (outputs of the ``"detections"`` export).

    Args:
        boxes: ``[K, 4]`` relative to the canvas; scores, labels: ``[K]``; coeffs: ``[K, 32]``;
            proto: ``[Hp, Wp, 32]``. Slots with score <= 0 are empty.
        meta: image meta dict.
    """
    boxes, scores, coeffs, proto = (torch.as_tensor(t).float() for t in (boxes, scores, coeffs, proto))
    labels = torch.as_tensor(labels).long()
    keep = scores > 0
    boxes, scores, labels, coeffs = boxes[keep], scores[keep], labels[keep], coeffs[keep]
    h0, w0 = meta["ori_shape"]
    if scores.numel() == 0:
        return {"boxes": boxes.new_zeros(0, 4), "labels": labels, "scores": scores,
                "masks": torch.zeros(0, h0, w0, dtype=torch.bool, device=proto.device)}
    masks = torch.sigmoid(proto @ coeffs.t()).permute(2, 0, 1)  # [K, Hp, Wp]
    masks = crop_masks(masks, boxes)
    canvas_h, canvas_w = meta.get("canvas", meta["img_shape"])
    pad = tuple(meta.get("pad", (0, 0)))
    direct = pad == (0, 0) and tuple(meta["img_shape"]) == (canvas_h, canvas_w) and not meta.get("flip", False)
    if direct:
        # The reference path: one bilinear resize from prototype resolution to the original image.
        full = F.interpolate(masks[None], size=(h0, w0), mode="bilinear", align_corners=False)[0]
    else:
        full = F.interpolate(masks[None], size=(canvas_h, canvas_w), mode="bilinear", align_corners=False)[0]
        h, w = meta["img_shape"]
        full = full[:, pad[0]:pad[0] + h, pad[1]:pad[1] + w]
        if meta.get("flip", False):
            full = full.flip(-1)
        full = F.interpolate(full[None], size=(h0, w0), mode="bilinear", align_corners=False)[0]
    boxes = torch.cat([torch.minimum(boxes[:, :2], boxes[:, 2:]), torch.maximum(boxes[:, :2], boxes[:, 2:])], dim=1)
    if direct:  # the reference path: relative coordinates times the original size
        out_boxes = boxes * boxes.new_tensor([w0, h0, w0, h0])
        out_boxes = torch.stack([out_boxes[:, 0].clamp(0, w0), out_boxes[:, 1].clamp(0, h0),
                                 out_boxes[:, 2].clamp(0, w0), out_boxes[:, 3].clamp(0, h0)], dim=1)
    else:
        out_boxes = boxes_to_original(boxes * boxes.new_tensor([canvas_w, canvas_h, canvas_w, canvas_h]), meta)
    out_boxes = out_boxes.floor()  # YOLACT truncates boxes to integers
    # and, writing COCO results, skips detections whose integer box is empty
    keep = (out_boxes[:, 2] - out_boxes[:, 0]) * (out_boxes[:, 3] - out_boxes[:, 1]) > 0
    return {"boxes": out_boxes[keep], "labels": labels[keep], "scores": scores[keep], "masks": full[keep] > mask_thr}


def build_yolact_edge(num_classes: int = 80, name: str = "yolact_edge", depth: int = 50, fpn_channels: int = 256,
                      proto_channels: int = 256, mask_dim: int = 32, scales: Sequence[float] = (24, 48, 96, 192, 384),
                      aspect_ratios: Sequence[float] = (1.0, 0.5, 2.0), max_size: int = 550,
                      conf_thresh: float = 0.05, nms_thresh: float = 0.5, top_k: int = 200,
                      max_num_detections: int = 100, mask_thr: float = 0.5,
                      export_mode: str = "detections", preapply_sqrt: bool = False, use_pixel_scales: bool = True,
                      use_square_anchors: bool = True) -> YolactEdge:
    """YolactEdge R50-FPN at 550x550 (the YolactEdge guide's model by default); smaller ``depth`` / widths for tests.
    ``name`` is the config's label, kept as ``model.name``."""
    backbone = ResNet(depth=depth, style="pytorch", norm="frozen_bn", frozen_stages=-1, out_indices=(1, 2, 3))
    fpn = YolactFPN(backbone.out_channels, fpn_channels, num_downsample=2)
    proto = ProtoNet(fpn_channels, proto_channels, mask_dim)
    head = PredictionHead(fpn_channels, len(aspect_ratios), num_classes + 1, mask_dim)
    model = YolactEdge(backbone, fpn, proto, head, num_classes, scales, aspect_ratios, max_size, conf_thresh,
                       nms_thresh, top_k, max_num_detections, mask_thr, export_mode, preapply_sqrt,
                       use_pixel_scales, use_square_anchors)
    model.name = name
    return model.eval()
