"""Detection models and their building blocks."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from solo_npu.models.backbones import FrozenBatchNorm2d, ResNet, load_torchvision_weights
from solo_npu.models.necks import FPN, ConvModule
from solo_npu.models.solov2 import SOLOv2, build_solov2

__all__ = ["FPN", "SOLOv2", "ConvModule", "FrozenBatchNorm2d", "ResNet", "build_model", "build_solov2",
           "load_torchvision_weights", "split_model_config"]


def split_model_config(model_cfg: Mapping[str, Any],
                       num_classes: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A model config (``conf/model/*.yaml``) resolved, as (the builder's ``_target_`` and arguments, its
    ``deploy:`` block). The deploy block is read by deploy.py only; no builder sees it.

    Args:
        num_classes: replaces the config's ``num_classes`` (before resolving, so that an unresolvable
            ``${data.num_classes}`` is never read).
    """
    from omegaconf import OmegaConf, open_dict

    if OmegaConf.is_config(model_cfg):
        if num_classes is not None:
            model_cfg = copy.copy(model_cfg)  # keeps the parent: other interpolations still resolve
            with open_dict(model_cfg):
                model_cfg.num_classes = int(num_classes)
        spec = OmegaConf.to_container(model_cfg, resolve=True)
    else:
        spec = {**model_cfg, **({} if num_classes is None else {"num_classes": int(num_classes)})}
    spec.pop("defaults", None)
    return spec, dict(spec.pop("deploy", None) or {})


def build_model(model_cfg: Mapping[str, Any], num_classes: int | None = None,
                device: torch.device | str | None = None) -> nn.Module:
    """Instantiate a model config with Hydra, without its ``deploy:`` block.

    Args:
        num_classes: replaces the config's ``num_classes``.
        device: build the parameters there; ``"meta"`` gives a weightless model whose structure, state-dict
            shapes and facts (output names, checkpoint layouts) can be read at no cost.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from solo_npu.config.values import ConfigValueError

    spec, _ = split_model_config(model_cfg, num_classes)
    try:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            return instantiate(spec)
    except InstantiationException as exc:
        # A setting the builder refuses (ValueError) or does not take (TypeError: an unexpected keyword): one line
        # naming the model config, not Hydra's wrapper with its stack-trace advice.
        if isinstance(exc.__cause__, (ValueError, TypeError)):
            raise ConfigValueError(f"model config ({spec.get('_target_')}): {exc.__cause__}") from exc
        raise
