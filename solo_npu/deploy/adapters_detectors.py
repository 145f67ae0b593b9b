"""Deploy adapters for FCOS, YolactEdge and SSD-ResNet34 (see :mod:`solo_npu.deploy.adapters`).

Each adapter's ``postprocess`` is the host half of the model's inference, the same function its
``predict`` uses, so eager, TorchScript, ONNX Runtime and ``.om`` outputs are scored identically.

Pre-processing hooks for the preprocess stage: ``transforms(canvas)`` gives each model's reference
pre-processing as data-package transforms, ``pad_position`` where the image sits on the canvas and
``size_divisor`` the granularity the model needs of the static input (1: any size; the seed inputs are
800x1333, 550x550 and 300x300).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from solo_npu.data.transforms import Compose, Normalize
from solo_npu.deploy.adapters import DeployAdapter
from solo_npu.models.fcos import FCOS_OUTPUT_NAMES, fcos_postprocess
from solo_npu.models.ssd_resnet34 import SSD_OUTPUT_NAMES, default_boxes_for, ssd_postprocess
from solo_npu.models.yolact_edge import EXPORT_OUTPUT_NAMES, FEATURE_OUTPUT_NAMES, yolact_detect, yolact_postprocess

__all__ = ["FCOSAdapter", "SSDResNet34Adapter", "StretchResize", "YolactEdgeAdapter"]


class StretchResize:
    """Resize to exactly ``(H, W)`` ignoring the aspect ratio (YOLACT, SSD); boxes and meta follow."""

    def __init__(self, size: Sequence[int]) -> None:
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
        h, w = self.size
        h0, w0 = sample["image"].shape[:2]
        sample["image"] = cv2.resize(sample["image"], (w, h), interpolation=cv2.INTER_LINEAR)
        sy, sx = h / h0, w / w0
        if sample.get("boxes") is not None:
            sample["boxes"] = sample["boxes"] * np.array([sx, sy, sx, sy], dtype=np.float32)
        if sample.get("masks") is not None:
            from solo_npu.data.transforms import resize_nearest

            sample["masks"] = resize_nearest(sample["masks"], h, w)
        sample["meta"].update(img_shape=(h, w), scale_factor=(sy, sx))
        return sample


def _tensor(x: Any, dtype: np.dtype = np.float32) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=dtype))


class FCOSAdapter(DeployAdapter):
    """FCOS: ``boxes [B, N, 4]``, ``cls_scores [B, N, C]``, ``centerness [B, N]`` -> multi-class NMS."""

    name = "fcos"
    output_names = FCOS_OUTPUT_NAMES
    iou_types = ("bbox",)
    pad_position = "top_left"
    size_divisor = 1
    default_anchors = (
        {"source": "seed 002 (.om, benchmark)", "device": "Ascend 310P", "batch": 1, "fps": 42.6, "bbox_AP": 0.359},
        {"source": "seed 002 (.om, benchmark)", "device": "Ascend 310P", "batch": 4, "fps": 49.8, "bbox_AP": 0.359},
    )

    def __init__(self, score_thr: float = 0.05, iou_threshold: float = 0.5, max_per_img: int = 100,
                 anchors: Sequence[Mapping[str, Any]] | None = None) -> None:
        super().__init__(anchors)
        self.score_thr, self.iou_threshold, self.max_per_img = float(score_thr), float(iou_threshold), int(max_per_img)

    def transforms(self, canvas: Sequence[int]) -> Compose:
        """mmdet caffe pipeline: keep-ratio fit into the canvas, BGR, caffe mean, std 1 (pad top-left)."""
        from solo_npu.deploy.preprocess import FitCanvasResize

        return Compose([FitCanvasResize(canvas),
                        Normalize("caffe", mean=(102.9801, 115.9465, 122.7717), std=(1.0, 1.0, 1.0))])

    def postprocess(self, outputs: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return fcos_postprocess(_tensor(outputs["boxes"]), _tensor(outputs["cls_scores"]),
                                _tensor(outputs["centerness"]), meta, self.score_thr, self.iou_threshold,
                                self.max_per_img)


class YolactEdgeAdapter(DeployAdapter):
    """YolactEdge: Fast-NMS detections (or dense heads, or FPN maps) + prototypes -> boxes and instance masks.

    Args:
        export_mode: the model's ``export_mode`` (``"detections"``, ``"heads"`` or ``"features"``; the
            yaml interpolates it from the model's).
        conf_thresh, nms_thresh, top_k, max_num: Fast NMS settings used in ``"heads"`` mode.
        mask_thr: mask binarisation threshold.

    In ``"features"`` mode (the ModelZoo guide's six outputs) the host runs the prediction head, decoding
    and Fast NMS of the eager model of the same checkpoint, with that model's thresholds; the deploy
    context hands it over with :meth:`bind_model`.
    """

    name = "yolact_edge"
    iou_types = ("segm", "bbox")
    pad_position = "top_left"  # the image fills the canvas
    size_divisor = 1
    default_anchors = (
        {"source": "seed 001 (.om, ais_bench)", "device": "Ascend 310P", "batch": 1, "fps": 270.35,
         "segm_AP": 0.2796},
    )

    def __init__(self, export_mode: str = "detections", conf_thresh: float = 0.05, nms_thresh: float = 0.5,
                 top_k: int = 200, max_num: int = 100, mask_thr: float = 0.5,
                 anchors: Sequence[Mapping[str, Any]] | None = None) -> None:
        super().__init__(anchors)
        if export_mode not in EXPORT_OUTPUT_NAMES:
            raise ValueError(f"export_mode must be one of {sorted(EXPORT_OUTPUT_NAMES)}, got {export_mode!r}")
        self.export_mode = export_mode
        self.output_names = EXPORT_OUTPUT_NAMES[export_mode]
        self.conf_thresh, self.nms_thresh = float(conf_thresh), float(nms_thresh)
        self.top_k, self.max_num, self.mask_thr = int(top_k), int(max_num), float(mask_thr)
        self._model_provider: Callable[[], nn.Module] | None = None

    def bind_model(self, model_provider: Callable[[], nn.Module]) -> None:
        """Give the adapter the eager model (called lazily, only by the ``"features"`` mode's host half)."""
        self._model_provider = model_provider

    def export_module(self, model: nn.Module) -> nn.Module:
        mode = getattr(model, "export_mode", None)
        if mode != self.export_mode:
            raise ValueError(f"YolactEdge adapter export_mode {self.export_mode!r} differs from the model's {mode!r}")
        if self._model_provider is None:
            self.bind_model(lambda: model)
        return super().export_module(model)

    def _host_model(self) -> nn.Module:
        if self._model_provider is None:
            raise RuntimeError("export_mode 'features' runs the prediction head on the host and needs the model: "
                               "call YolactEdgeAdapter.bind_model (the deploy context does)")
        model = self._model_provider()
        if getattr(model, "export_mode", None) != "features":
            raise ValueError(f"export_mode 'features' outputs, but the model's export_mode is "
                             f"{getattr(model, 'export_mode', None)!r}")
        return model

    def transforms(self, canvas: Sequence[int]) -> Compose:
        """YOLACT FastBaseTransform: stretch to the canvas, RGB, mean/std of ``MEANS``/``STD`` (BGR there)."""
        return Compose([StretchResize(canvas),
                        Normalize("pytorch", mean=(123.68, 116.78, 103.94), std=(58.40, 57.12, 57.38))])

    def postprocess(self, outputs: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        if self.export_mode == "features":
            model = self._host_model()
            device = next(model.parameters()).device
            feats = [_tensor(outputs[name])[None].to(device) for name in FEATURE_OUTPUT_NAMES[:-1]]
            proto = _tensor(outputs[FEATURE_OUTPUT_NAMES[-1]])[None].to(device)
            boxes, scores, labels, coeffs, proto = (t[0].cpu() for t in model.detect_from_features(feats, proto))
            return yolact_postprocess(boxes, scores, labels, coeffs, proto, meta, self.mask_thr)
        proto = _tensor(outputs["proto"])
        if self.export_mode == "heads":
            dense_boxes, conf = _tensor(outputs["boxes"])[None], _tensor(outputs["conf"])[None]
            boxes, scores, labels, index = yolact_detect(dense_boxes, conf, self.conf_thresh, self.nms_thresh,
                                                         self.top_k, self.max_num)
            coeffs = _tensor(outputs["coeffs"])[index[0]]
            return yolact_postprocess(boxes[0], scores[0], labels[0], coeffs, proto, meta, self.mask_thr)
        return yolact_postprocess(_tensor(outputs["boxes"]), _tensor(outputs["scores"]),
                                  torch.as_tensor(np.asarray(outputs["labels"]).astype(np.int64)),
                                  _tensor(outputs["coeffs"]), proto, meta, self.mask_thr)

    def compare(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Dense and feature modes: every output. Detection mode: only the slots the reference fills (score > 0)."""
        if self.export_mode != "detections":
            return super().compare(reference, candidate)
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


class SSDResNet34Adapter(DeployAdapter):
    """SSD-ResNet34: raw ``ploc [B, 4, P]`` / ``plabel [B, 81, P]`` -> decode, softmax, per-class NMS."""

    name = "ssd_resnet34"
    output_names = SSD_OUTPUT_NAMES
    iou_types = ("bbox",)
    pad_position = "top_left"  # the image fills the canvas
    size_divisor = 1
    default_anchors = (
        {"source": "seed 004 (.om, ais_infer)", "device": "Ascend 310P", "batch": 1, "fps": 925.1, "bbox_AP": 0.230},
        {"source": "seed 004 (.om, ais_infer)", "device": "Ascend 310P", "batch": 8, "fps": 1406.4, "bbox_AP": 0.230},
    )

    def __init__(self, score_thr: float = 0.05, iou_threshold: float = 0.5, max_per_class: int = 200,
                 max_output: int = 200, anchors: Sequence[Mapping[str, Any]] | None = None) -> None:
        super().__init__(anchors)
        self.score_thr, self.iou_threshold = float(score_thr), float(iou_threshold)
        self.max_per_class, self.max_output = int(max_per_class), int(max_output)
        self._dboxes: dict[tuple[int, ...], torch.Tensor] = {}

    def transforms(self, canvas: Sequence[int]) -> Compose:
        """MLPerf eval transform: stretch to the canvas, RGB, ImageNet mean/std."""
        return Compose([StretchResize(canvas), Normalize("pytorch")])

    def postprocess(self, outputs: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        canvas = tuple(int(c) for c in meta.get("canvas", meta["img_shape"]))
        if canvas not in self._dboxes:
            self._dboxes[canvas] = default_boxes_for(canvas)
        return ssd_postprocess(_tensor(outputs["ploc"]), _tensor(outputs["plabel"]), meta,
                               self._dboxes[canvas], self.score_thr, self.iou_threshold,
                               self.max_per_class, self.max_output)
