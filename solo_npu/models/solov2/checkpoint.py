"""The reference checkpoints SOLOv2 reads: mmdet 3.x, original WXinlong/SOLO and torchvision ResNet.

mmdet 3.x names are this project's names. Original SOLO checkpoints rename the head (``bbox_head.`` ->
``mask_head.``, ``mask_feat_head.`` -> ``mask_head.mask_feature_head.``). Their classifier has no
background channel: the original SOLO repository's ``mmdet/models/anchor_heads/solov2_head.py`` (and
``solo_head.py``, ``solov2_light_head.py``) sets ``self.cate_out_channels = self.num_classes - 1`` and
builds ``self.solo_cate = nn.Conv2d(self.seg_feat_channels, self.cate_out_channels, 3, padding=1)``; its
configs say ``num_classes=81``, so the COCO classifier has 80 outputs and channel k is class k
(``tools/test_ins.py`` writes ``dataset.cat_ids[label]``), which is our contiguous layout. Its outputs
are kept as they are; a classifier for another number of classes goes through the same class-count
check as any other file. torchvision ResNet weights initialise ``backbone.*``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from torch import Tensor

from solo_npu.checkpoints.io import CheckpointError

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

# AdelaiDet's SOLOv2 (adet/modeling/solov2/solov2.py) is a detectron2 model with other modules and names: a
# detectron2 FPN backbone (`backbone.bottom_up.` ResNet, `backbone.fpn_lateral2.`), `ins_head.` (cate_tower,
# kernel_tower, cate_pred, kernel_pred) and a `mask_head.` of its own, saved under `model` as ours is.
DETECTRON2_PREFIXES = ("backbone.bottom_up.", "backbone.fpn_lateral", "backbone.fpn_output", "ins_head.")


def _refuse_detectron2(state: Mapping[str, Tensor]) -> None:
    found = next((k for k in state if k.startswith(DETECTRON2_PREFIXES)), None)
    if found is not None:
        raise CheckpointError(f"AdelaiDet / detectron2 SOLOv2 checkpoints are not supported (key {found!r}): "
                              "SOLOv2 reads this project's, mmdet's, the original SOLO repository's and "
                              "torchvision ResNet files")


def solov2_checkpoint_layout(state: Mapping[str, Tensor], container: str | None = None) -> str | None:
    """``solo``, ``torchvision``, ``ours`` (our ``model`` container or our names) or ``mmdet``
    (a ``state_dict`` container); ``None`` when the keys say nothing.

    Raises:
        CheckpointError: an AdelaiDet / detectron2 file (not supported).
    """
    _refuse_detectron2(state)
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
        num_classes: the target model's classes (part of the model contract; no SOLOv2 layout needs it:
            every classifier output is a class, see the module docstring).

    Raises:
        CheckpointError: an AdelaiDet / detectron2 file (not supported).
    """
    _refuse_detectron2(state)
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
    return out
