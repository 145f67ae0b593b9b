"""Deploy adapters: everything the deploy pipeline needs to know about one detector.

The stages (export, verify, compile, preprocess, infer, evaluate, benchmark, report) are model-agnostic.
What differs between SOLOv2, FCOS, YolactEdge and SSD sits behind a small adapter named in the model
config and built with Hydra's ``instantiate``::

    # conf/model/solov2.yaml
    deploy:
      adapter:
        _target_: solo_npu.deploy.adapters.SOLOv2Adapter
        score_thr: 0.05          # any constructor argument

(a plain string ``adapter: pkg.module.Class`` works too). An adapter subclasses :class:`DeployAdapter`
and provides:

- ``output_names``: the exported graph's outputs, in order. They name the ONNX outputs and give the
  index ``i`` of the raw output files ``{stem}_{i}.bin`` (ais_bench's layout, used by every backend).
- ``iou_types``: the COCO iou types to score, e.g. ``("segm",)`` or ``("bbox",)``.
- ``anchors``: published figures shown beside the benchmark table (the model yaml's
  ``deploy.anchors`` replaces them when present).
- ``size_divisor``: the static input's H and W must be multiples of it (SOLOv2: 32).
- ``pad_position``: where the resized image sits on the static input, ``"centre"`` (default, the
  310P seeds) or ``"top_left"`` (mmdet).
- ``transforms(canvas)`` (optional): the model's own preprocessing as data-package transforms
  (``sample, rng -> sample``); ``None`` (default) means keep-ratio fit into the canvas and the
  normalisation of the data config.
- ``export_module(model)``: an ``nn.Module`` whose ``forward(images)`` returns a tuple of tensors in
  ``output_names`` order, batch dimension first, static shapes. This is what is traced and exported.
- ``postprocess(outputs, meta)``: the raw outputs of one image (``{name: np.ndarray}`` without the
  batch dimension) and its meta dict (see docs/architecture.md) -> the evaluator's result dict in
  original-image coordinates: ``masks`` bool [N, H0, W0] (segmentation models), ``labels`` int64 [N],
  ``scores`` float32 [N], ``boxes`` float32 [N, 4].
- ``compare(reference, candidate)``: discrepancy numbers between two backends' raw outputs for
  ``verify`` (``*_max_abs`` entries are checked against the tolerance, ``*_mismatch`` must be 0).

Adapters for other detectors live in ``solo_npu/deploy/adapters_<model>.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn


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


class DeployAdapter:
    """Base class: generic export and comparison; subclasses implement :meth:`postprocess`."""

    name: str = "model"
    output_names: tuple[str, ...] = ()
    iou_types: tuple[str, ...] = ("bbox",)
    default_anchors: tuple[dict[str, Any], ...] = ()
    size_divisor: int = 1
    pad_position: str = "centre"

    def __init__(self, anchors: Sequence[Mapping[str, Any]] | None = None) -> None:
        self.anchors = [dict(a) for a in (anchors if anchors is not None else self.default_anchors)]

    def transforms(self, canvas: Sequence[int]) -> Any | None:
        """Model-specific preprocessing transforms, or None for the default (see the module docstring)."""
        return None

    def export_module(self, model: nn.Module) -> nn.Module:
        return ExportWrapper(model, self.output_names).eval()

    def postprocess(self, outputs: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def compare(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Max abs difference (and largest reference magnitude) of float outputs, count of differing entries of
        integer outputs."""
        stats: dict[str, float] = {}
        for name in self.output_names:
            ref, out = np.asarray(reference[name]), np.asarray(candidate[name])
            if ref.shape != out.shape:
                raise ValueError(f"output {name!r}: shape {out.shape} differs from the reference {ref.shape}")
            if np.issubdtype(ref.dtype, np.floating):
                stats[f"{name}_max_abs"] = float(np.abs(ref.astype(np.float64) - out).max(initial=0.0))
                stats[f"{name}_ref_max"] = float(np.abs(ref).max(initial=0.0))
            else:
                stats[f"{name}_mismatch"] = float((ref != out).sum())
        return stats


class SOLOv2Adapter(DeployAdapter):
    """SOLOv2: outputs masks [B, K, Hc/4, Wc/4] probabilities, labels [B, K] int32, scores [B, K].

    Args:
        score_thr: entries scoring at or below this are padding of the fixed-K output and dropped.
        mask_thr: binarisation threshold of the pasted mask probabilities.
        topk: how many top-scoring entries ``compare`` checks (None: all K).
        anchors: replaces the seed figures shown in the report.
    """

    name = "solov2"
    output_names = ("masks", "labels", "scores")
    iou_types = ("segm",)
    size_divisor = 32
    default_anchors = (
        {"source": "seed 000 (torch_aie)", "device": "Ascend 310P3", "batch": 1, "fps": 26.19, "segm_AP": 0.340},
        {"source": "310P port (.om)", "device": "Ascend 310P3", "batch": 1, "fps": 22.1, "segm_AP": 0.340},
    )

    def __init__(
        self,
        score_thr: float = 0.0,
        mask_thr: float = 0.5,
        topk: int | None = None,
        anchors: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(anchors)
        self.score_thr = float(score_thr)
        self.mask_thr = float(mask_thr)
        self.topk = topk

    def postprocess(self, outputs: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        from solo_npu.models.solov2.postprocess import masks_to_boxes, paste_masks

        scores = torch.as_tensor(np.asarray(outputs["scores"], dtype=np.float32))
        labels = torch.as_tensor(np.asarray(outputs["labels"]).astype(np.int64))
        masks = torch.as_tensor(np.asarray(outputs["masks"], dtype=np.float32))
        # The graph returns a fixed K sorted by score; valid entries are a prefix after a stable sort.
        scores, order = torch.sort(scores, descending=True, stable=True)
        num = int((scores > self.score_thr).sum())
        keep = order[:num]
        pasted = paste_masks(masks[keep], meta, self.mask_thr)
        return {
            "masks": pasted,
            "labels": labels[keep],
            "scores": scores[:num],
            "boxes": masks_to_boxes(pasted),
        }

    def compare(self, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Scores and masks of the top-k valid entries, and whether their labels agree."""
        ref_scores = np.asarray(reference["scores"], dtype=np.float64)
        out_scores = np.asarray(candidate["scores"], dtype=np.float64)
        if ref_scores.shape != out_scores.shape:
            raise ValueError(f"scores: shape {out_scores.shape} differs from the reference {ref_scores.shape}")
        k = ref_scores.shape[-1] if self.topk is None else min(self.topk, ref_scores.shape[-1])
        # Compare the slots the reference considers valid (padding slots may hold arbitrary ties).
        valid = ref_scores[..., :k] > self.score_thr
        ref_masks = np.asarray(reference["masks"], dtype=np.float64)[..., :k, :, :]
        out_masks = np.asarray(candidate["masks"], dtype=np.float64)[..., :k, :, :]
        mask_diff = np.abs(ref_masks - out_masks).max(axis=(-2, -1)) if ref_masks.size else np.zeros_like(valid)
        label_diff = np.asarray(reference["labels"])[..., :k] != np.asarray(candidate["labels"])[..., :k]
        return {
            "scores_max_abs": float(np.where(valid, np.abs(ref_scores - out_scores)[..., :k], 0).max(initial=0.0)),
            "masks_max_abs": float(np.where(valid, mask_diff, 0).max(initial=0.0)),
            "labels_mismatch": float((label_diff & valid).sum()),
            "valid": float(valid.sum()),
        }


def build_adapter(model_cfg: DictConfig | Mapping[str, Any]) -> DeployAdapter:
    """The adapter named by ``model.deploy.adapter`` (default SOLOv2Adapter), anchors from the model yaml."""
    from hydra.utils import get_class, instantiate

    deploy_cfg = (model_cfg.get("deploy") if model_cfg is not None else None) or {}
    spec = deploy_cfg.get("adapter")
    anchors = deploy_cfg.get("anchors")
    if anchors is not None:
        anchors = OmegaConf.to_container(anchors, resolve=True) if OmegaConf.is_config(anchors) else list(anchors)
    if spec is None:
        return SOLOv2Adapter(anchors=anchors)
    if isinstance(spec, str):
        adapter = get_class(spec)(anchors=anchors)
    else:
        adapter = instantiate(spec, anchors=anchors) if anchors is not None else instantiate(spec)
    if not isinstance(adapter, DeployAdapter):
        raise TypeError(f"model.deploy.adapter built {type(adapter).__name__}, which is not a DeployAdapter")
    return adapter
