"""Necks."""

from solo_npu.models.necks.fpn import FPN, ConvModule

__all__ = ["FPN", "ConvModule"]
