"""Converters from the reference checkpoints of FCOS, YolactEdge and SSD-ResNet34 to solo-npu names.

* FCOS: mmdet v1 (``fcos_r50_caffe_fpn_1x_4gpu_20190516-a7cac5ff.pth``: ``bbox_head.fcos_cls``,
  ``fcos_reg``, ``fcos_centerness``, centerness on the classification branch) and mmdet >= 2
  (``conv_cls``, ``conv_reg``, ``conv_centerness``). Backbone / neck names are already ours.
* YolactEdge (``yolact_edge_resnet50_54_800000.pth``): ``backbone.layers.N`` -> ``backbone.layer{N+1}``,
  ``fpn_phase_1.lat_layers`` / ``fpn_phase_2.{pred,downsample}_layers`` (or YOLACT's ``fpn.*``) -> ``fpn.*``;
  video-only modules (flow net, SPA) are dropped.
* SSD-ResNet34 (MLPerf v0.7 NVIDIA, ``iter_183250.pt``: ``ckpt["model"]``): the trunk ``model.{0,1,3,4,5}``
  (conv1, bn1, layer1..3) -> ``backbone.*``; the fused ``mbox.i`` convs (class channels first, then box
  channels) are split into ``conf.i`` and ``loc.i``. Checkpoints with separate ``loc`` / ``conf`` and a
  ``feature_extractor.feature_extractor.{0,1,4,5,6}`` trunk are accepted too.

Every converter returns a new state dict that loads into the matching model with ``strict=True``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from solo_npu.checkpoints.io import CheckpointError, load_checkpoint

__all__ = [
    "convert_fcos_state_dict",
    "convert_ssd_resnet34_state_dict",
    "convert_yolact_edge_state_dict",
    "load_detector_weights",
    "unwrap_state_dict",
]

logger = logging.getLogger(__name__)

_FCOS_V1 = {"bbox_head.fcos_cls.": "bbox_head.conv_cls.", "bbox_head.fcos_reg.": "bbox_head.conv_reg.",
            "bbox_head.fcos_centerness.": "bbox_head.conv_centerness."}
_YOLACT_DROP = ("flow_net.", "flow_net_pre_convs.", "spa.", "partial_backbone.", "class_existence_fc.")
_SSD_NVIDIA_TRUNK = {"0": "conv1", "1": "bn1", "3": "layer1", "4": "layer2", "5": "layer3"}
_SSD_FEATURE_EXTRACTOR_TRUNK = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3"}


def unwrap_state_dict(ckpt: Any) -> dict[str, Tensor]:
    """The tensor dict of a checkpoint: ``ckpt['state_dict']`` / ``ckpt['model']`` / ``ckpt`` itself, with a
    DataParallel ``module.`` prefix removed."""
    if isinstance(ckpt, Mapping):
        for key in ("state_dict", "model"):
            if key in ckpt and isinstance(ckpt[key], Mapping):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"checkpoint holds no state dict (got {type(ckpt).__name__})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in ckpt.items()}


def _rename_prefix(key: str, table: Mapping[str, str]) -> str:
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def convert_fcos_state_dict(ckpt: Any) -> dict[str, Tensor]:
    """mmdet v1 / v2 / v3 FCOS checkpoint -> :class:`solo_npu.models.fcos.FCOS` names."""
    out = {}
    for key, value in unwrap_state_dict(ckpt).items():
        key = _rename_prefix(key, _FCOS_V1)
        if re.fullmatch(r"bbox_head\.scales\.\d+\.scale", key) and value.numel() == 1:
            value = value.reshape(())
        out[key] = value
    return out


def convert_yolact_edge_state_dict(ckpt: Any, num_downsample: int = 2) -> dict[str, Tensor]:
    """YolactEdge (or YOLACT) checkpoint -> :class:`solo_npu.models.yolact_edge.YolactEdge` names."""
    state = unwrap_state_dict(ckpt)
    has_layers = any(k.startswith("backbone.layers.") for k in state)
    out = {}
    for key, value in state.items():
        if key.startswith(_YOLACT_DROP):
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


def convert_ssd_resnet34_state_dict(ckpt: Any, num_defaults: Sequence[int] = (4, 6, 6, 6, 4, 4),
                                    label_num: int = 81) -> dict[str, Tensor]:
    """MLPerf SSD-ResNet34 checkpoint -> :class:`solo_npu.models.ssd_resnet34.SSDResNet34` names."""
    out = {}
    for key, value in unwrap_state_dict(ckpt).items():
        m = re.match(r"(model|feature_extractor\.feature_extractor)\.(\d+)\.(.*)", key)
        if m:
            table = _SSD_NVIDIA_TRUNK if m.group(1) == "model" else _SSD_FEATURE_EXTRACTOR_TRUNK
            if m.group(2) not in table:
                raise CheckpointError(f"unexpected SSD trunk key {key!r}")
            out[f"backbone.{table[m.group(2)]}.{m.group(3)}"] = value
            continue
        m = re.match(r"mbox\.(\d+)\.(weight|bias)", key)
        if m:
            level, kind = int(m.group(1)), m.group(2)
            nd = num_defaults[level]
            n_conf, n_loc = nd * label_num, nd * 4
            if value.shape[0] != n_conf + n_loc:
                raise CheckpointError(f"{key} has {value.shape[0]} output channels, expected {n_conf + n_loc} "
                                      f"({nd} priors x ({label_num} classes + 4))")
            out[f"conf.{level}.{kind}"] = value[:n_conf].clone()
            out[f"loc.{level}.{kind}"] = value[n_conf:].clone()
            continue
        out[key] = value
    return out


DETECTOR_CONVERTERS = {"fcos": convert_fcos_state_dict, "yolact_edge": convert_yolact_edge_state_dict,
               "ssd_resnet34": convert_ssd_resnet34_state_dict}


def load_detector_weights(model: nn.Module, path: str | os.PathLike, kind: str, trust_pickle: bool = False,
                          strict: bool = True) -> tuple[list[str], list[str]]:
    """Load a reference checkpoint of ``kind`` (``fcos`` | ``yolact_edge`` | ``ssd_resnet34``) into ``model``.

    Returns:
        ``(missing_keys, unexpected_keys)`` (empty with ``strict=True``).
    """
    if kind not in DETECTOR_CONVERTERS:
        raise ValueError(f"unknown detector checkpoint kind {kind!r}; expected one of {sorted(DETECTOR_CONVERTERS)}")
    state = DETECTOR_CONVERTERS[kind](load_checkpoint(path, trust_pickle=trust_pickle))
    result = model.load_state_dict(state, strict=strict)
    logger.info("loaded %s weights from %s", kind, path)
    return list(result.missing_keys), list(result.unexpected_keys)
