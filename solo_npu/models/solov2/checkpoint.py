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

AdelaiDet's SOLOv2 (``adet/modeling/solov2/solov2.py``) is the same network under detectron2's names: a
detectron2 ResNet (``backbone.bottom_up.stem`` / ``res2``..``res5``, each conv with its FrozenBatchNorm as
``conv.norm``, the projection as ``shortcut``) and FPN (``backbone.fpn_lateral2``..``5``, ``fpn_output2``..``5``,
P6 by a stride-2 max pool as ours), an ``ins_head`` whose ``cate_tower`` / ``kernel_tower`` are
``nn.Sequential(conv, GroupNorm, ReLU, ...)`` with ``cate_pred`` / ``kernel_pred`` (80 sigmoid outputs for COCO,
classes in ascending category id as ours), and a ``mask_head`` whose ``convs_all_levels.L.convJ`` and
``conv_pred`` are ``nn.Sequential(conv, GroupNorm, ReLU)``. Its published models (``configs/SOLOv2/R50_3x.yaml``,
``R101_3x.yaml``) start from detectron2's MSRA ImageNet weights (``MODEL.WEIGHTS
detectron2://ImageNetPretrained/MSRA/R-50.pkl``): caffe-style bottlenecks (``RESNETS.STRIDE_IN_1X1`` true, the
stride on the first 1x1 conv) fed BGR pixels minus ``MODEL.PIXEL_MEAN`` [103.53, 116.28, 123.675] with
``PIXEL_STD`` 1 (detectron2's defaults), so such weights are only right in a model built that way
(:func:`check_checkpoint_input`). FrozenBatchNorm has no ``num_batches_tracked`` counter; the loaders
accept its absence.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from solo_npu.checkpoints.io import CheckpointError

logger = logging.getLogger(__name__)

__all__ = ["SOLOV2_LAYOUTS", "check_checkpoint_input", "convert_solov2_state_dict", "solov2_checkpoint_layout"]

SOLOV2_LAYOUTS = ("mmdet", "solo", "torchvision", "adelaidet")
SOLO_RENAMES = (
    ("bbox_head.cate_convs.", "mask_head.cls_convs."),
    ("bbox_head.kernel_convs.", "mask_head.kernel_convs."),
    ("bbox_head.solo_cate.", "mask_head.conv_cls."),
    ("bbox_head.solo_kernel.", "mask_head.conv_kernel."),
    ("mask_feat_head.convs_all_levels.", "mask_head.mask_feature_head.convs_all_levels."),
    ("mask_feat_head.conv_pred.0.", "mask_head.mask_feature_head.conv_pred."),
)

# detectron2 / AdelaiDet names (see the module docstring) -> ours.
DETECTRON2_PREFIXES = ("backbone.bottom_up.", "backbone.fpn_lateral", "backbone.fpn_output", "ins_head.")
_D2_STEM = re.compile(r"backbone\.bottom_up\.stem\.conv1\.(norm\.)?(\w+)$")
_D2_BLOCK = re.compile(r"backbone\.bottom_up\.res([2-5])\.(\d+)\.(conv[123]|shortcut)\.(norm\.)?(\w+)$")
_D2_FPN = re.compile(r"backbone\.fpn_(lateral|output)([2-5])\.(\w+)$")
_ADET_TOWER = re.compile(r"ins_head\.(cate|kernel)_tower\.(\d+)\.(\w+)$")
_ADET_PRED = re.compile(r"ins_head\.(cate|kernel)_pred\.(\w+)$")
_ADET_MASK = re.compile(r"mask_head\.(convs_all_levels\.\d+\.conv\d+|conv_pred)\.([01])\.(\w+)$")

# The settings that give the input AdelaiDet's published SOLOv2 weights were trained on (module docstring).
ADELAIDET_OVERRIDES = ("model.backbone.style=caffe data.normalize.style=caffe "
                       "'data.normalize.mean=[103.53,116.28,123.675]' 'data.normalize.std=[1,1,1]'")


def _adelaidet_key(key: str) -> str:
    """Our name for an AdelaiDet SOLOv2 key; a key of no known module is returned as it is (the loaders then
    report it as unexpected)."""
    if m := _D2_STEM.match(key):
        return f"backbone.bn1.{m[2]}" if m[1] else f"backbone.conv1.{m[2]}"
    if m := _D2_BLOCK.match(key):
        block = f"backbone.layer{int(m[1]) - 1}.{m[2]}"
        if m[3] == "shortcut":
            return f"{block}.downsample.{1 if m[4] else 0}.{m[5]}"
        return f"{block}.{'bn' if m[4] else 'conv'}{m[3][-1]}.{m[5]}"
    if m := _D2_FPN.match(key):
        return f"neck.{'lateral_convs' if m[1] == 'lateral' else 'fpn_convs'}.{int(m[2]) - 2}.conv.{m[3]}"
    if m := _ADET_TOWER.match(key):  # (conv, GroupNorm, ReLU) per layer
        index, part = divmod(int(m[2]), 3)
        if part == 2:
            return key
        return f"mask_head.{'cls' if m[1] == 'cate' else 'kernel'}_convs.{index}.{'conv' if part == 0 else 'gn'}.{m[3]}"
    if m := _ADET_PRED.match(key):
        return f"mask_head.conv_{'cls' if m[1] == 'cate' else 'kernel'}.{m[2]}"
    if m := _ADET_MASK.match(key):
        return f"mask_head.mask_feature_head.{m[1]}.{'conv' if m[2] == '0' else 'gn'}.{m[3]}"
    return key


def _convert_adelaidet(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if "ins_head.cate_tower.0.weight" in state and "ins_head.cate_tower.1.weight" not in state:
        raise CheckpointError("AdelaiDet SOLOv2 file without GroupNorm in its heads (MODEL.SOLOV2.NORM none): "
                              "SOLOv2 here has GroupNorm after every head convolution")
    return {_adelaidet_key(k): v for k, v in state.items()}


def _trained_caffe_style(config_text: Any) -> bool:
    """Whether the config text an mmdet / SOLO file keeps in its meta (mmdet 1.x/2.x ``meta.config``, mmengine's
    ``meta.cfg``: the config's pretty_text) builds a caffe-style ResNet (``style='caffe'``)."""
    return isinstance(config_text, str) and re.search(r"style\s*=\s*['\"]caffe['\"]", config_text) is not None


def check_checkpoint_input(layout: str | None, backbone_style: str, normalize: Mapping[str, Any] | None,
                           config_text: Any = None) -> None:
    """Raise a one-line CheckpointError when weights of ``layout`` (for a converted file, the layout it was
    converted from) meet a backbone style or pixel normalisation other than the one they were trained on;
    ``normalize`` ``None``: not compared (the caller has no data config).

    AdelaiDet's weights: caffe-style, BGR minus the MSRA mean, std 1 (module docstring). mmdet's and the
    original SOLO's SOLOv2 configs build a pytorch-style ResNet fed RGB pixels normalised by the ImageNet mean
    and std (SOLO configs/solov2/*.py: ``style='pytorch'``, ``img_norm_cfg`` with ``to_rgb=True``; mmdet
    configs/solov2/solov2_r50_fpn_1x_coco.py: ``style='pytorch'``, ``bgr_to_rgb=True``), unless the config
    text the file keeps (``config_text``) says ``style='caffe'``.
    """
    from solo_npu.data.transforms import pixel_normalization

    if layout == "adelaidet":
        want, fix = "caffe", ADELAIDET_OVERRIDES
        trained = ("AdelaiDet SOLOv2 weights expect a caffe-style ResNet fed BGR pixels minus [103.53, 116.28, "
                   "123.675] with std 1 (detectron2's MSRA ImageNet start)")
    elif layout in ("solo", "mmdet") and not _trained_caffe_style(config_text):
        want, fix = "pytorch", "model.backbone.style=pytorch data.normalize.style=pytorch"
        who = "original SOLO" if layout == "solo" else "mmdet"
        trained = (f"{who} SOLOv2 weights expect a pytorch-style ResNet fed RGB pixels normalised by the ImageNet "
                   "mean and std (their configs: style='pytorch', RGB input)")
    elif layout in ("solo", "mmdet"):  # the file's own config says style='caffe': mmdet's caffe ResNet input
        want, fix = "caffe", ADELAIDET_OVERRIDES
        trained = (f"these {'original SOLO' if layout == 'solo' else 'mmdet'} SOLOv2 weights were trained on a "
                   "caffe-style ResNet (style='caffe' in the config the file keeps), fed BGR pixels minus "
                   "[103.53, 116.28, 123.675] with std 1 as mmdet's caffe ResNet configs feed it")
    else:
        return
    wrong = [] if backbone_style == want else [f"backbone.style={backbone_style}"]
    if normalize is not None:
        found = pixel_normalization(str(normalize.get("style") or "pytorch"), normalize.get("mean"),
                                    normalize.get("std"))
        for key, value, expected in zip(("style", "mean", "std"), found, pixel_normalization(want)):
            if value != expected:
                wrong.append(f"normalize.{key}={value if isinstance(value, str) else [round(v, 4) for v in value]}")
    if wrong:
        raise CheckpointError(f"{trained}, but this run has {', '.join(wrong)}: add {fix}")


def solov2_checkpoint_layout(state: Mapping[str, Tensor], container: str | None = None) -> str | None:
    """``adelaidet`` (detectron2 names), ``solo``, ``torchvision``, ``ours`` (our ``model`` container or our
    names) or ``mmdet`` (a ``state_dict`` container); ``None`` when the keys say nothing."""
    keys = list(state)
    if any(k.startswith(DETECTRON2_PREFIXES) for k in keys):
        return "adelaidet"
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
        CheckpointError: detectron2 names read as another layout, or an AdelaiDet file without head GroupNorm.
    """
    found = next((k for k in state if k.startswith(DETECTRON2_PREFIXES)), None)
    if layout == "adelaidet":
        return _convert_adelaidet(state)
    if found is not None:
        raise CheckpointError(f"the file has AdelaiDet / detectron2 names (key {found!r}), not {layout} ones: pass "
                              "checkpoint_source=adelaidet (or auto)")
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
