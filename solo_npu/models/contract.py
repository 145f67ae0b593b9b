"""What a detector tells the rest of the system about itself.

Deployment, checkpoint loading and train.py's start-up checks read these from the model object (duck-typed,
no registry); a new detector is one model file, one yaml and its tests.

What it is (``solo_npu.config.values``, on the model built on the meta device):

- ``display_name`` (default the class name): how one-line errors name it (``SSD-ResNet34``).
- ``trainable`` (default True): False for a model without training losses (its training-mode forward raises
  ``NotImplementedError``); train.py then refuses to train or fine-tune it before any data or worker.

Deployment (``solo_npu.deploy.adapters.ModelAdapter`` wraps any model that has them):

- ``output_names``: the outputs of ``export_forward(images)``, in order (ONNX output names, and the
  index ``i`` of the raw files ``{stem}_{i}.bin``).
- ``export_forward(images)``: static-shape outputs, batch dimension first (what is traced and exported).
- ``postprocess(outputs, meta)``: one image's raw outputs (``{name: array}`` without the batch axis,
  from any backend) -> ``boxes`` float [N, 4], ``labels`` int64 [N], ``scores`` float [N] (and ``masks``
  bool [N, H0, W0] for segmentation) in original-image pixels, with the model's own thresholds.
- ``iou_types``: the COCO iou types to score, e.g. ``("segm",)``.
- ``score_floor`` and ``max_detections`` (optional): where ``postprocess`` cuts, for verify's matching of two
  backends' detections. A detection whose final score is within the score tolerance of ``score_floor`` (the
  largest threshold the postprocess applies to a score the final score never exceeds) may fall on the other side
  of a threshold on another backend; one within it of the other backend's lowest score, when that backend
  returned ``max_detections``, may lose its place there. Any other detection without a partner is a mismatch.
- ``size_divisor`` (default 1): the static input's H and W must be multiples of it.
- ``check_input_shape(height, width)`` (optional): a one-line ValueError for a static input the model, as it is
  configured, does not take.
- ``preprocessing`` (default :class:`Preprocessing()`): resize policy, channel order, mean/std and
  where the image sits on the static input.
- ``compare_outputs(reference, candidate)`` (optional): discrepancy numbers between two backends' raw
  outputs (default :func:`compare_raw_outputs`).

Checkpoints (``solo_npu.checkpoints.convert``):

- ``checkpoint_layouts`` (default ``()``): reference layouts the model reads besides its own (``ours``).
- ``convert_state_dict(state, layout, num_classes=None)``: a reference state dict in this model's names.
- ``checkpoint_layout(state, container)`` (optional): the layout of a file for ``source=auto``; by default
  ``ours`` when every key is the model's, else the model's only reference layout.
- ``partial_checkpoint_layouts`` (default ``()``): layouts that fill only part of the model (a backbone).
- ``check_checkpoint_input(layout, normalize)`` (optional): raise a CheckpointError when the weights of
  ``layout`` were trained on another input than this model and the data config's ``normalize`` give.
- ``classifier_prefixes`` (default ``()``): layers with one output per class; their first weight gives a
  checkpoint's class count, and ``reset_classifier()`` re-initialises them for fine-tuning.

Published figures (the report's anchors) live in the model yaml's ``deploy.anchors``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["Preprocessing", "as_float_tensor", "compare_raw_outputs"]


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's static input.

    Attributes:
        resize: ``"keep_ratio"`` (fit into the input, the rest zero padding) or ``"stretch"`` (to the
            input size, ignoring the aspect ratio).
        style: ``"pytorch"`` (RGB) or ``"caffe"`` (BGR); ``None``: the data config's normalisation.
        mean, std: per channel, in the style's channel order, on 0..255 pixels (``None``: the style's).
        pad_position: where the resized image sits, ``"centre"`` or ``"top_left"``.
    """

    resize: str = "keep_ratio"
    style: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    pad_position: str = "centre"

    def __post_init__(self) -> None:
        if self.resize not in ("keep_ratio", "stretch"):
            raise ValueError(f"preprocessing resize must be 'keep_ratio' or 'stretch', got {self.resize!r}")
        if self.pad_position not in ("centre", "top_left"):
            raise ValueError(f"preprocessing pad_position must be 'centre' or 'top_left', got {self.pad_position!r}")


def as_float_tensor(x: Any) -> torch.Tensor:
    """A float32 tensor of a numpy array or tensor (a tensor keeps its device)."""
    if isinstance(x, torch.Tensor):
        return x.float()
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


def compare_raw_outputs(names: Sequence[str], reference: Mapping[str, np.ndarray],
                        candidate: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Max abs difference (and largest reference magnitude) of float outputs, count of differing entries of
    integer outputs.

    Raises:
        ValueError: an output's shape differs from the reference's.
    """
    stats: dict[str, float] = {}
    for name in names:
        ref, out = np.asarray(reference[name]), np.asarray(candidate[name])
        if ref.shape != out.shape:
            raise ValueError(f"output {name!r}: shape {out.shape} differs from the reference {ref.shape}")
        if np.issubdtype(ref.dtype, np.floating):
            stats[f"{name}_max_abs"] = float(np.abs(ref.astype(np.float64) - out).max(initial=0.0))
            stats[f"{name}_ref_max"] = float(np.abs(ref).max(initial=0.0))
        else:
            stats[f"{name}_mismatch"] = float((ref != out).sum())
    return stats
