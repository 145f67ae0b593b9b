"""Detection models and their building blocks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from solo_npu.models.backbones import FrozenBatchNorm2d, ResNet, load_torchvision_weights
from solo_npu.models.necks import FPN, ConvModule
from solo_npu.models.solov2 import SOLOv2, build_solov2

__all__ = ["FPN", "SOLOv2", "ConvModule", "FrozenBatchNorm2d", "ResNet", "build_model", "build_solov2",
           "load_torchvision_weights"]


def build_model(model_cfg: Mapping[str, Any]) -> nn.Module:
    """Instantiate a model config (``conf/model/*.yaml``) with Hydra; its ``deploy:`` block is left out."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    spec = OmegaConf.to_container(model_cfg, resolve=True) if OmegaConf.is_config(model_cfg) else dict(model_cfg)
    spec.pop("deploy", None)
    return instantiate(spec)
