"""Necks."""

from solo_npu.models.necks.fpn import FPN, ConvModule, init_normal_convs

__all__ = ["FPN", "ConvModule", "init_normal_convs"]
