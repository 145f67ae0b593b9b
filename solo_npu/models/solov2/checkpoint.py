"""The reference checkpoints SOLOv2 reads: mmdet 3.x, original WXinlong/SOLO and torchvision ResNet.

mmdet 3.x names are this project's names. Original SOLO checkpoints rename the head (``bbox_head.`` ->
``mask_head.``, ``mask_feat_head.`` -> ``mask_head.mask_feature_head.``); their classifier has
``num_classes - 1`` outputs for ``num_classes=81`` (channel c-1 is class c), which is our contiguous
layout, and a classifier with one extra output has its background channel 0 dropped. torchvision
ResNet weights initialise ``backbone.*``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["SOLOV2_LAYOUTS", "convert_solov2_state_dict", "solov2_checkpoint_layout"]

SOLOV2_LAYOUTS = ("mmdet", "solo", "torchvision")
SOLO_RENAMES = (
    ("bbox_head.cate_convs.", "mask_head.cls_convs."),
    ("bbox_head.kernel_convs.", "mask_head.kernel_convs."),
    ("bbox_head.solo_cate.", "mask_head.conv_cls."),
    ("bbox_head.solo_kernel.", "mask_head.conv_kernel."),
    ("mask_feat_head.convs_all_levels.", "mask_head.mask_feature_head.convs_all_levels."),
    ("mask_feat_head.conv_pred.0.", "mask_head.mask_feature_head.conv_pred."),
)
CLASSIFIER = ("mask_head.conv_cls.weight", "mask_head.conv_cls.bias")


def solov2_checkpoint_layout(state: Mapping[str, Tensor], container: str | None = None) -> str | None:
    """``solo``, ``torchvision``, ``ours`` (our ``model`` container or our names) or ``mmdet``
    (a ``state_dict`` container); ``None`` when the keys say nothing."""
    keys = list(state)
    if any(k.startswith(("bbox_head.", "mask_feat_head.")) for k in keys):
        return "solo"
    if any(k.startswith(("conv1.", "layer1.")) for k in keys):
        return "torchvision"
    if container == "model":
        return "ours"
    if container == "state_dict":
        return "mmdet"
    if any(k.startswith(("backbone.", "neck.", "mask_head.")) for k in keys):
        return "ours"
    return None


def convert_solov2_state_dict(state: Mapping[str, Tensor], layout: str,
                              num_classes: int | None = None) -> dict[str, Tensor]:
    """Rename ``state`` from ``layout`` (one of :data:`SOLOV2_LAYOUTS`) to this project's names.

    Args:
        num_classes: the target model's classes; a SOLO classifier with ``num_classes + 1`` outputs
            loses its background channel 0.
    """
    if layout == "mmdet":
        return {k: v for k, v in state.items() if not k.startswith("data_preprocessor.")}
    if layout == "torchvision":
        return {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    if layout != "solo":
        raise ValueError(f"SOLOv2 reads {SOLOV2_LAYOUTS} checkpoints, not {layout!r}")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        for old, new in SOLO_RENAMES:
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    weight = out.get(CLASSIFIER[0])
    if num_classes is not None and weight is not None and weight.shape[0] == num_classes + 1:
        logger.info("SOLO classifier has %d outputs: dropping background channel 0", weight.shape[0])
        for name in CLASSIFIER:
            if name in out:
                out[name] = out[name][1:]
    return out
