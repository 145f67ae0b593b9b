"""Backbones."""

from solo_npu.models.backbones.resnet import (
    BasicBlock,
    Bottleneck,
    FrozenBatchNorm2d,
    ResNet,
    build_norm,
    load_torchvision_weights,
)

__all__ = ["BasicBlock", "Bottleneck", "FrozenBatchNorm2d", "ResNet", "build_norm", "load_torchvision_weights"]
