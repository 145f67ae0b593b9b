"""The SOLOv2 detector: ResNet + FPN + SOLOv2 head, in training, eager-prediction and export modes."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from solo_npu.models.backbones.resnet import ResNet, load_torchvision_weights
from solo_npu.models.contract import Preprocessing, as_float_tensor
from solo_npu.models.necks.fpn import FPN
from solo_npu.models.solov2.checkpoint import (
    SOLOV2_LAYOUTS,
    check_checkpoint_input,
    convert_solov2_state_dict,
    solov2_checkpoint_layout,
)
from solo_npu.models.solov2.head import SOLOv2Head
from solo_npu.models.solov2.losses import solov2_loss
from solo_npu.models.solov2.paste import masks_to_boxes, paste_masks
from solo_npu.models.solov2.postprocess import (
    SOLOv2TestConfig,
    flatten_predictions,
    select_exact,
    select_reference,
    select_static,
)
from solo_npu.models.solov2.targets import build_solov2_targets

logger = logging.getLogger(__name__)

__all__ = ["SOLOv2", "build_solov2"]


class SOLOv2(nn.Module):
    """SOLOv2 instance segmentation (Wang et al., 2020).

    Args:
        backbone, neck, mask_head: the three parts (state-dict prefixes ``backbone.``, ``neck.``, ``mask_head.``).
        scale_ranges: ``(lower, upper)`` of ``sqrt(w * h)`` per level for target assignment.
        pos_scale: centre-region size relative to the box half-size.
        max_pos: the most positive (instance, cell) slots per image in the mask loss: the top of the slot
            ladder (:func:`positive_slots`); positives beyond it are counted, never silently dropped.
        pos_slots: a fixed number of positive slots (NPU experiments that want one shape); ``None``: the
            smallest ladder size that holds every positive of the batch.
        loss_cls: ``gamma``, ``alpha``, ``weight`` of the focal loss.
        loss_mask_weight: weight of the dice loss.
        loss_mask_norm: what the summed dice loss is divided by: ``"cells"`` (the positive cells, mmdetection's
            SOLOV2Head) or ``"pairs"`` (the positive (instance, cell) pairs: a mean, as SOLO and the Ascend
            ModelZoo port train); see :func:`~solo_npu.models.solov2.losses.solov2_loss`.
        test_cfg: :class:`SOLOv2TestConfig`.
        export_topk: K, the instances per image of :meth:`export_forward`.
        export_exact_flag: :meth:`export_forward` also returns ``exact`` (see there).
        name: a label for reports.
    """

    def __init__(self, backbone: ResNet, neck: FPN, mask_head: SOLOv2Head,
                 scale_ranges: Sequence[Sequence[float]] = ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048)),
                 pos_scale: float = 0.2, max_pos: int = 1024, pos_slots: int | None = None,
                 loss_cls: Mapping[str, float] | None = None,
                 loss_mask_weight: float = 3.0, loss_mask_norm: str = "cells", test_cfg: SOLOv2TestConfig | None = None,
                 export_topk: int = 100, export_exact_flag: bool = False, name: str = "solov2") -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.mask_head = mask_head
        if len(scale_ranges) != mask_head.num_levels:
            raise ValueError(f"{len(scale_ranges)} scale_ranges for {mask_head.num_levels} head levels")
        self.scale_ranges = tuple((float(lo), float(hi)) for lo, hi in scale_ranges)
        self.pos_scale = pos_scale
        self.max_pos = max_pos
        self.pos_slots = pos_slots
        self.loss_cls_cfg = {"gamma": 2.0, "alpha": 0.25, "weight": 1.0}
        unknown = sorted(set(loss_cls or {}) - set(self.loss_cls_cfg))
        if unknown:
            raise ValueError(f"model.head.loss_cls has no key {', '.join(map(repr, unknown))}: the focal loss takes "
                             f"{', '.join(self.loss_cls_cfg)}")
        self.loss_cls_cfg.update(loss_cls or {})
        self.loss_mask_weight = loss_mask_weight
        if loss_mask_norm not in ("cells", "pairs"):
            raise ValueError(f"loss_mask_norm must be 'cells' or 'pairs', got {loss_mask_norm!r}")
        self.loss_mask_norm = loss_mask_norm
        self.test_cfg = test_cfg or SOLOv2TestConfig()
        self.export_topk = export_topk
        self.export_exact_flag = export_exact_flag
        self.name = name
        self.inexact_images = 0  # eager images whose selection test.exact_limit cut short
        self.register_buffer("cell_strides", mask_head.cell_strides(), persistent=False)
        self.num_pos_dropped: Tensor | None = None

    # The model's facts for deployment and checkpoint loading (see solo_npu/models/contract.py).
    iou_types = ("segm",)
    size_divisor = 32
    preprocessing = Preprocessing()  # keep-ratio fit, centred zero padding, the data config's normalisation
    classifier_prefixes = ("mask_head.conv_cls.",)
    checkpoint_layouts = SOLOV2_LAYOUTS
    partial_checkpoint_layouts = ("torchvision",)

    @property
    def score_floor(self) -> float:
        # final score = category score x maskness (<= 1) x Matrix NMS decay (<= 1): score_thr cuts the category
        # score, filter_thr the decayed score
        return max(self.test_cfg.score_thr, self.test_cfg.filter_thr)

    @property
    def max_detections(self) -> int:
        return self.test_cfg.max_per_img

    @property
    def num_classes(self) -> int:
        return self.mask_head.num_classes

    @property
    def output_names(self) -> tuple[str, ...]:
        """Outputs of :meth:`export_forward`."""
        return ("masks", "labels", "scores", "exact") if self.export_exact_flag else ("masks", "labels", "scores")

    @staticmethod
    def checkpoint_layout(state: Mapping[str, Tensor], container: str | None = None) -> str | None:
        return solov2_checkpoint_layout(state, container)

    @staticmethod
    def convert_state_dict(state: Mapping[str, Tensor], layout: str,
                           num_classes: int | None = None) -> dict[str, Tensor]:
        return convert_solov2_state_dict(state, layout, num_classes)

    def check_checkpoint_input(self, layout: str | None, normalize: Mapping[str, Any] | None = None,
                               config_text: Any = None) -> None:
        """CheckpointError when weights of ``layout`` were trained on another backbone style or pixel
        normalisation than this model's and ``normalize`` (the data config's; ``None``: not compared);
        ``config_text``: the training config the file keeps in its meta, if any."""
        check_checkpoint_input(layout, str(getattr(self.backbone, "style", "pytorch")), normalize, config_text)

    def reset_classifier(self) -> None:
        """Fresh prior-probability initialisation of the category classifier (fine-tuning on new classes)."""
        self.mask_head.reset_classifier(self.mask_head.num_classes)

    def forward_head(self, images: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Raw head outputs: per-level category logits and kernels, and the stride-4 mask features."""
        return self.mask_head(self.neck(self.backbone(images)))

    def forward(self, images: Tensor, targets: Mapping[str, Any] | None = None) -> dict[str, Tensor]:
        """Training losses ``{"loss_cls", "loss_mask"}`` for a batch dict (``gt_masks``, ``gt_labels``, ...),
        plus ``dropped_positives``: the batch's positive pairs beyond the slots (a count, not a loss)."""
        if targets is None:
            raise ValueError("SOLOv2.forward needs targets; use predict() or export_forward() for inference")
        masks = targets["gt_masks"]
        if masks.dim() != 4 or masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"gt_masks must be [B, M, H, W] on the image canvas {tuple(images.shape[-2:])}, "
                             f"got {tuple(masks.shape)}")
        if images.shape[-2] % 32 or images.shape[-1] % 32:
            raise ValueError(f"training images must be padded to multiples of 32, got {tuple(images.shape[-2:])}")
        cls_preds, kernel_preds, mask_feats = self.forward_head(images)
        t = build_solov2_targets(targets["gt_masks"], targets["gt_labels"], targets["gt_boxes"],
                                 targets["gt_valid"], self.mask_head.num_grids, self.scale_ranges,
                                 self.pos_scale, mask_stride=images.shape[-1] // mask_feats.shape[-1],
                                 max_pos=self.max_pos, pos_slots=self.pos_slots)
        self.num_pos_dropped = t.num_dropped.detach()
        c = self.loss_cls_cfg
        losses = solov2_loss(cls_preds, kernel_preds, mask_feats, t, gamma=c["gamma"], alpha=c["alpha"],
                             cls_weight=c["weight"], mask_weight=self.loss_mask_weight,
                             mask_norm=self.loss_mask_norm)
        return {**losses, "dropped_positives": t.num_dropped.detach().float()}

    def export_forward(self, images: Tensor) -> tuple[Tensor, ...]:
        """Static-shape inference for TorchScript / ONNX.

        Returns:
            ``masks`` float ``[B, K, H/4, W/4]`` (probabilities), ``labels`` int32 ``[B, K]``,
            ``scores`` float ``[B, K]`` (0 in empty slots), K = ``export_topk``; with
            ``export_exact_flag`` also ``exact`` bool ``[B]``: whether the bound proves that the
            ``test.pre_budget`` candidates held the reference order's selection (see :func:`select_static`).
        """
        cls_preds, kernel_preds, mask_feats = self.forward_head(images)
        scores, kernels = flatten_predictions(cls_preds, kernel_preds)
        out = select_static(scores, kernels, mask_feats, self.cell_strides, self.test_cfg, k=self.export_topk,
                            return_exact=self.export_exact_flag)
        return (out[0], out[1].to(torch.int32), *out[2:])

    @torch.no_grad()
    def predict(self, images: Tensor, metas: Sequence[Mapping[str, Any]]) -> list[dict[str, Tensor]]:
        """Eager inference: one dict per image with ``masks`` bool ``[N, H0, W0]``, ``labels`` int64 ``[N]``,
        ``scores`` float ``[N]`` and ``boxes`` float ``[N, 4]`` in original-image pixels.

        The instances are those of mmdet's order (:func:`select_reference`); with ``test.bound_before_conv``
        (the default) they are found by :func:`select_exact`, which convolves only the candidates that
        can enter the top ``nms_pre``.
        """
        if len(metas) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(metas)} metas")
        cfg = self.test_cfg
        cls_preds, kernel_preds, mask_feats = self.forward_head(images)
        scores, kernels = flatten_predictions(cls_preds, kernel_preds)
        per_image = []
        for i in range(images.shape[0]):
            if not cfg.bound_before_conv:
                per_image.append(select_reference(scores[i], kernels[i], mask_feats[i], self.cell_strides, cfg))
                continue
            masks, labels, image_scores, exact = select_exact(scores[i], kernels[i], mask_feats[i],
                                                              self.cell_strides, cfg)
            if not exact:
                self.inexact_images += 1
                logger.warning("image %s: test.exact_limit=%d pairs did not prove the top nms_pre=%d selection "
                               "(%d images so far); raise or unset test.exact_limit for the reference's instances",
                               metas[i].get("image_id", i), cfg.exact_limit, cfg.nms_pre, self.inexact_images)
            per_image.append((masks, labels, image_scores))
        results = []
        for (masks, labels, scores), meta in zip(per_image, metas):
            pasted = paste_masks(masks, meta, cfg.mask_thr)
            results.append({"masks": pasted, "labels": labels.long(), "scores": scores.float(),
                            "boxes": masks_to_boxes(pasted)})
        return results

    def postprocess(self, outputs: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Tensor]:
        """Host half for one image of :meth:`export_forward`'s outputs (any backend): the fixed K entries
        sorted by score, the valid ones (score > 0), at most ``test.max_per_img`` as eager :meth:`predict` keeps,
        pasted onto the original image."""
        scores = as_float_tensor(outputs["scores"])
        labels = torch.as_tensor(np.asarray(outputs["labels"]).astype(np.int64))
        masks = as_float_tensor(outputs["masks"])
        # The graph returns a fixed K sorted by score; valid entries are a prefix after a stable sort. A non-finite
        # score (a backend that overflowed: torch.sort puts NaN first) is no detection.
        finite = torch.isfinite(scores)
        if not bool(finite.all()):
            logger.warning("image %s: %d non-finite scores from the backend are left out", meta.get("image_id", "?"),
                           int((~finite).sum()))
            scores = torch.where(finite, scores, torch.zeros_like(scores))
        scores, order = torch.sort(scores, descending=True, stable=True)
        num = min(int((scores > 0).sum()), int(self.test_cfg.max_per_img))
        keep = order[:num]
        pasted = paste_masks(masks[keep], dict(meta), self.test_cfg.mask_thr)
        return {"masks": pasted, "labels": labels[keep], "scores": scores[:num], "boxes": masks_to_boxes(pasted)}

    @staticmethod
    def compare_outputs(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Scores and masks of the valid entries (reference score > 0), and whether their labels agree;
        padding slots may hold arbitrary ties."""
        ref_scores = np.asarray(reference["scores"], dtype=np.float64)
        out_scores = np.asarray(candidate["scores"], dtype=np.float64)
        if ref_scores.shape != out_scores.shape:
            raise ValueError(f"scores: shape {out_scores.shape} differs from the reference {ref_scores.shape}")
        valid = ref_scores > 0
        ref_masks = np.asarray(reference["masks"], dtype=np.float64)
        out_masks = np.asarray(candidate["masks"], dtype=np.float64)
        mask_diff = np.abs(ref_masks - out_masks).max(axis=(-2, -1)) if ref_masks.size else np.zeros_like(valid)
        label_diff = np.asarray(reference["labels"]) != np.asarray(candidate["labels"])
        return {
            "scores_max_abs": float(np.where(valid, np.abs(ref_scores - out_scores), 0).max(initial=0.0)),
            "masks_max_abs": float(np.where(valid, mask_diff, 0).max(initial=0.0)),
            "labels_mismatch": float((label_diff & valid).sum()),
            "valid": float(valid.sum()),
        }


def _as_dict(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return {k: (_as_dict(v) if isinstance(v, Mapping) else v) for k, v in cfg.items()}


def _load_backbone(body: ResNet, path: str) -> None:
    """torchvision ImageNet weights into ``body``: every backbone tensor must come from the file."""
    from solo_npu.checkpoints import CheckpointError

    try:
        missing, unexpected = load_torchvision_weights(body, path, strict=False)
    except CheckpointError:  # unreadable, or not a state dict: its own one line, with the path
        raise
    except RuntimeError as exc:  # shape mismatch: another depth or width
        lines = [line.strip() for line in str(exc).strip().splitlines()]
        raise CheckpointError(f"model.pretrained={path} does not fit ResNet-{body.depth}: "
                              f"{lines[1] if len(lines) > 1 else lines[0]}") from None
    if missing or unexpected:  # another depth (ResNet-101 layers in a ResNet-50), or not a ResNet
        raise CheckpointError(f"model.pretrained={path} is not ImageNet ResNet-{body.depth} weights: "
                              f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}, "
                              f"unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
    logger.info("backbone init from %s (missing %d, unexpected %d)", path, len(missing), len(unexpected))


def build_solov2(num_classes: int, backbone: Mapping[str, Any] | None = None, neck: Mapping[str, Any] | None = None,
                 head: Mapping[str, Any] | None = None, test: Mapping[str, Any] | None = None,
                 pretrained: str | None = None, name: str = "solov2") -> SOLOv2:
    """Build SOLOv2 from plain (or OmegaConf) dicts; the ``_target_`` of ``conf/model/solov2_*.yaml``.

    Args:
        num_classes: object classes.
        backbone: kwargs of :class:`ResNet`.
        neck: kwargs of :class:`FPN` (``in_channels`` defaults to the backbone's).
        head: kwargs of :class:`SOLOv2Head` plus ``scale_ranges``, ``pos_scale``, ``max_pos``, ``pos_slots``,
            ``loss_cls``, ``loss_mask_weight`` and ``loss_mask_norm``.
        test: fields of :class:`SOLOv2TestConfig` plus ``export_topk`` and ``export_exact_flag``.
        pretrained: torchvision ResNet checkpoint for the backbone (ImageNet init). ``None``, ``"none"``
            and ``"auto"`` load nothing here; a training run resolves ``auto`` to a file first
            (:func:`solo_npu.engine.backbone_init.backbone_init_file`).
        name: a label for reports.
    """
    backbone_cfg = _as_dict(backbone)
    neck_cfg = {"out_channels": 256, "num_outs": 5, **_as_dict(neck)}
    head_cfg = _as_dict(head)
    test_cfg = _as_dict(test)
    body = ResNet(**backbone_cfg)
    if pretrained is not None and str(pretrained).strip().lower() not in ("auto", "none", "null", ""):
        _load_backbone(body, str(pretrained))
    neck_cfg.setdefault("in_channels", body.out_channels)
    model_keys = ("scale_ranges", "pos_scale", "max_pos", "pos_slots", "loss_cls", "loss_mask_weight",
                  "loss_mask_norm")
    model_kwargs = {k: head_cfg.pop(k) for k in model_keys if k in head_cfg}
    head_cfg.setdefault("in_channels", neck_cfg["out_channels"])
    mask_head = SOLOv2Head(num_classes=int(num_classes), **head_cfg)
    export_topk = int(test_cfg.pop("export_topk", 100))
    export_exact_flag = bool(test_cfg.pop("export_exact_flag", False))
    max_per_img = int(test_cfg.get("max_per_img", SOLOv2TestConfig.max_per_img))
    if export_topk < max_per_img:
        logger.warning("model.test.export_topk=%d < max_per_img=%d: an exported model returns at most %d instances "
                       "per image, eager prediction %d", export_topk, max_per_img, export_topk, max_per_img)
    return SOLOv2(body, FPN(**neck_cfg), mask_head, test_cfg=SOLOv2TestConfig(**test_cfg), export_topk=export_topk,
                  export_exact_flag=export_exact_flag, name=name, **model_kwargs)
