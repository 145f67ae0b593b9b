"""The deploy pipeline's view of a model: one generic adapter built from the model object.

The stages (export, verify, compile, preprocess, infer, evaluate, benchmark, report) are model-agnostic.
What they need to know about a detector is what the model says of itself (solo_npu/models/contract.py):
``output_names``, ``export_forward``, ``postprocess``, ``iou_types``, ``size_divisor``,
``preprocessing`` and, optionally, ``compare_outputs``. :class:`ModelAdapter` reads them from the model;
the published figures shown in the report come from the model yaml's ``deploy.anchors``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from solo_npu.data.transforms import Compose, Normalize, resize_nearest
from solo_npu.models.contract import Preprocessing, compare_raw_outputs

__all__ = ["ExportWrapper", "ModelAdapter", "StretchResize", "pil_bilinear_resize"]


class ExportWrapper(nn.Module):
    """Calls ``model.export_forward(images)`` and returns its outputs as a tuple in a fixed order."""

    def __init__(self, model: nn.Module, output_names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.output_names = tuple(output_names)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.export_forward(images)
        if isinstance(out, Mapping):
            return tuple(out[name] for name in self.output_names)
        return tuple(out)


class StretchResize:
    """Resize to exactly ``(H, W)`` ignoring the aspect ratio (YOLACT, SSD); boxes and meta follow.

    Args:
        size: ``(H, W)``.
        interpolation: ``"cv2_linear"`` (``cv2.INTER_LINEAR`` on the float32 image, no antialiasing: YOLACT's
            ``BaseTransform`` converts to float (``ConvertFromInts``) before its ``Resize``) or ``"pil_bilinear"``
            (Pillow's ``Image.resize((W, H), BILINEAR)`` on the uint8 image, antialiased when it shrinks: what
            torchvision's ``transforms.Resize((H, W))`` does to a PIL image, the SSD-ResNet34 guide's pre-processing).
    """

    INTERPOLATIONS = ("cv2_linear", "pil_bilinear")

    def __init__(self, size: Sequence[int], interpolation: str = "cv2_linear") -> None:
        if interpolation not in self.INTERPOLATIONS:
            raise ValueError(f"StretchResize interpolation must be one of {self.INTERPOLATIONS}, got {interpolation!r}")
        self.size = (int(size[0]), int(size[1]))
        self.interpolation = interpolation

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
        h, w = self.size
        h0, w0 = sample["image"].shape[:2]
        if self.interpolation == "pil_bilinear":
            sample["image"] = pil_bilinear_resize(sample["image"], h, w)
        else:
            sample["image"] = cv2.resize(sample["image"].astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        sy, sx = h / h0, w / w0
        if sample.get("boxes") is not None:
            sample["boxes"] = sample["boxes"] * np.array([sx, sy, sx, sy], dtype=np.float32)
        if sample.get("masks") is not None:
            sample["masks"] = resize_nearest(sample["masks"], h, w)
        sample["meta"].update(img_shape=(h, w), scale_factor=(sy, sx))
        return sample


def pil_bilinear_resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """A uint8 HxWx3 image resized to ``(h, w)`` as torchvision's ``transforms.Resize((h, w))`` resizes a PIL image.

    torchvision (pytorch/vision ``torchvision/transforms/functional.py`` ``resize``, 0.6-0.8: the SSD-ResNet34
    guide's requirements.txt pins torchvision==0.6.0) calls ``img.resize(size[::-1], Image.BILINEAR)`` for a
    ``(h, w)`` size; Pillow's bilinear filter widens its support by the scale factor when it shrinks
    (antialiasing), which ``cv2.INTER_LINEAR`` does not. The guide (Ascend/ModelZoo-PyTorch
    ``ACL_PyTorch/contrib/cv/detection/SSD-Resnet34/ssd_preprocess.py``) opens each image with
    ``Image.open(path).convert("RGB")`` and applies ``Resize((300, 300))``, ``ToTensor``, ``Normalize``. The filter
    works on each channel alone, so the channel order of ``image`` does not matter.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"pil_bilinear_resize expects a uint8 HxWx3 image, got {image.dtype} {image.shape}")
    resized = Image.fromarray(np.ascontiguousarray(image)).resize((int(w), int(h)), Image.BILINEAR)
    return np.asarray(resized).copy()


class ModelAdapter:
    """Everything the deploy stages ask of one model, read from the model.

    Args:
        model: a detector with the deploy facts of solo_npu/models/contract.py.
        anchors: published figures for the report (the model yaml's ``deploy.anchors``).
    """

    def __init__(self, model: nn.Module, anchors: Sequence[Mapping[str, Any]] | None = None) -> None:
        self.model = model
        self.anchors = [dict(a) for a in anchors or ()]

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self.model.output_names)

    @property
    def iou_types(self) -> tuple[str, ...]:
        return tuple(self.model.iou_types)

    @property
    def detection_cut(self) -> tuple[float | None, int | None]:
        """The model's ``score_floor`` and ``max_detections`` (``None`` where it has none)."""
        floor, most = getattr(self.model, "score_floor", None), getattr(self.model, "max_detections", None)
        return (None if floor is None else float(floor)), (None if most is None else int(most))

    @property
    def size_divisor(self) -> int:
        return int(getattr(self.model, "size_divisor", 1))

    @property
    def preprocessing(self) -> Preprocessing:
        return getattr(self.model, "preprocessing", None) or Preprocessing()

    @property
    def pad_position(self) -> str:
        return self.preprocessing.pad_position

    def transforms(self, canvas: Sequence[int]) -> Compose | None:
        """The model's preprocessing as data-package transforms (``sample, rng -> sample``); ``None`` when the
        model leaves the normalisation to the data config (the preprocess stage's default then applies)."""
        pre = self.preprocessing
        if pre.style is None:
            return None
        if pre.resize == "stretch":
            # the model's resampling (SSD-ResNet34: Pillow bilinear, as its guide), else cv2 linear
            resize = StretchResize(canvas, getattr(self.model, "stretch_interpolation", "cv2_linear"))
        else:
            from solo_npu.deploy.preprocess import FitCanvasResize

            resize = FitCanvasResize(canvas)
        return Compose([resize, Normalize(pre.style, pre.mean, pre.std)])

    def export_module(self, model: nn.Module | None = None) -> nn.Module:
        """What is traced and exported: ``(model or the adapter's).export_forward`` as a tuple."""
        return ExportWrapper(self.model if model is None else model, self.output_names).eval()

    def postprocess(self, outputs: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """One image's raw outputs (no batch axis) -> the evaluator's result dict (the model's host half)."""
        return self.model.postprocess(outputs, meta)

    def compare(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Raw-output discrepancies for verify: the model's ``compare_outputs``, else every output's."""
        compare = getattr(self.model, "compare_outputs", None)
        if compare is not None:
            return compare(reference, candidate)
        return compare_raw_outputs(self.output_names, reference, candidate)
