"""SOLOv2 head: kernel and category branches over the pyramid plus the unified mask-feature branch.

Module names follow mmdet 3.x (``kernel_convs``, ``cls_convs``, ``conv_cls``, ``conv_kernel``,
``mask_feature_head.convs_all_levels.L.convJ``, ``mask_feature_head.conv_pred``) so that mmdet
checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from solo_npu.models.necks.fpn import ConvModule, init_normal_convs
from solo_npu.models.ops.factories import linspace_on

__all__ = ["MaskFeatureHead", "SOLOv2Head", "coordinate_features"]


def coordinate_features(feat: Tensor) -> Tensor:
    """Two channels ``(x, y)`` running linearly from -1 to 1 across ``feat``'s width and height."""
    b = feat.shape[0]
    # H and W as Python ints: an export holds the grids as constants (a run-time linspace step is a
    # float Div of shape values, which onnxslim's shape inference folds as an integer division, to 0)
    h, w = int(feat.shape[-2]), int(feat.shape[-1])
    # linspace_on: feat's device without a device constant in a traced graph (an export on the CPU runs on an NPU)
    x = linspace_on(feat, -1, 1, w).view(1, 1, 1, w).expand(b, 1, h, w)
    y = linspace_on(feat, -1, 1, h).view(1, 1, h, 1).expand(b, 1, h, w)
    return torch.cat([x, y], dim=1)


class MaskFeatureHead(nn.Module):
    """Unified mask features at stride 4: each level is convolved and upsampled x2 until stride 4, then summed.

    Level ``end_level`` gets two coordinate channels first. ``conv_pred`` (1x1, GN, ReLU) gives the
    ``out_channels`` features that the dynamic kernels are applied to.
    """

    def __init__(self, in_channels: int = 256, feat_channels: int = 128, out_channels: int = 256, start_level: int = 0,
                 end_level: int = 3, num_groups: int = 32) -> None:
        super().__init__()
        self.start_level = start_level
        self.end_level = end_level
        self.convs_all_levels = nn.ModuleList()
        for i in range(start_level, end_level + 1):
            level = nn.Sequential()
            if i == 0:
                level.add_module("conv0", ConvModule(in_channels, feat_channels, 3, padding=1, norm="gn",
                                                     num_groups=num_groups))
            for j in range(i):
                cin = (in_channels + 2 if i == end_level else in_channels) if j == 0 else feat_channels
                level.add_module(f"conv{j}", ConvModule(cin, feat_channels, 3, padding=1, norm="gn",
                                                        num_groups=num_groups))
                level.add_module(f"upsample{j}", nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.convs_all_levels.append(level)
        self.conv_pred = ConvModule(feat_channels, out_channels, 1, norm="gn", num_groups=num_groups)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        inputs = feats[self.start_level:self.end_level + 1]
        out = self.convs_all_levels[0](inputs[0])
        for i in range(1, len(inputs)):
            x = inputs[i]
            if i == len(inputs) - 1:
                x = torch.cat([x, coordinate_features(x)], dim=1)
            out = out + self.convs_all_levels[i](x)
        return self.conv_pred(out)


class SOLOv2Head(nn.Module):
    """SOLOv2 kernel/category head and mask-feature branch.

    Args:
        num_classes: object classes (no background).
        in_channels: FPN channels.
        feat_channels: channels of the stacked convs.
        stacked_convs: convs per branch.
        strides: stride of each level (P2 is resized to P3, P6 to P5).
        num_grids: S of each level's S x S grid.
        mask_feature: kwargs of :class:`MaskFeatureHead`; its ``out_channels`` is the dynamic kernel size.
        num_groups: GroupNorm groups.
    """

    def __init__(self, num_classes: int, in_channels: int = 256, feat_channels: int = 512, stacked_convs: int = 4,
                 strides: Sequence[int] = (8, 8, 16, 32, 32), num_grids: Sequence[int] = (40, 36, 24, 16, 12),
                 mask_feature: dict | None = None, num_groups: int = 32) -> None:
        super().__init__()
        if len(strides) != len(num_grids):
            raise ValueError(f"strides {tuple(strides)} and num_grids {tuple(num_grids)} differ in length")
        self.num_classes = num_classes
        self.strides = tuple(int(s) for s in strides)
        self.num_grids = tuple(int(g) for g in num_grids)
        self.num_levels = len(self.num_grids)
        mf = dict(in_channels=in_channels, feat_channels=128, out_channels=256, num_groups=num_groups)
        mf.update(mask_feature or {})
        self.mask_feature_head = MaskFeatureHead(**mf)
        self.kernel_channels = int(mf["out_channels"])
        self.kernel_convs = nn.ModuleList()
        self.cls_convs = nn.ModuleList()
        for i in range(stacked_convs):
            cin = in_channels if i == 0 else feat_channels
            self.kernel_convs.append(ConvModule(cin + 2 if i == 0 else cin, feat_channels, 3, padding=1, norm="gn",
                                                num_groups=num_groups))
            self.cls_convs.append(ConvModule(cin, feat_channels, 3, padding=1, norm="gn", num_groups=num_groups))
        self.conv_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.conv_kernel = nn.Conv2d(feat_channels, self.kernel_channels, 3, padding=1)
        self.init_weights()

    def init_weights(self) -> None:
        """Normal(0, 0.01) convs, zero biases, classifier bias for a 0.01 prior (as mmdet)."""
        init_normal_convs(self)
        self.reset_classifier(self.num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """Re-create ``conv_cls`` for ``num_classes`` classes with the prior-probability init."""
        if num_classes != self.conv_cls.out_channels:
            conv = nn.Conv2d(self.conv_cls.in_channels, num_classes, 3, padding=1)
            self.conv_cls = conv.to(self.conv_cls.weight.device)
            self.num_classes = num_classes
        nn.init.normal_(self.conv_cls.weight, std=0.01)
        nn.init.constant_(self.conv_cls.bias, -math.log((1 - 0.01) / 0.01))

    @property
    def num_cells(self) -> int:
        return sum(g * g for g in self.num_grids)

    def cell_strides(self, device: torch.device | None = None) -> Tensor:
        """Stride of the level of every grid cell, ``[num_cells]`` float."""
        return torch.cat([torch.full((g * g,), float(s), device=device) for g, s in zip(self.num_grids, self.strides)])

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], Tensor]:
        """Run the head on the FPN outputs.

        Returns:
            ``(cls_preds, kernel_preds, mask_feats)``: per level ``[B, C, S, S]`` logits and
            ``[B, E, S, S]`` kernels, and mask features ``[B, E, H/4, W/4]``.
        """
        if len(feats) != self.num_levels:
            raise ValueError(f"SOLOv2Head expects {self.num_levels} feature levels, got {len(feats)}")
        mask_feats = self.mask_feature_head(feats)
        resized = list(feats)
        resized[0] = F.interpolate(feats[0], size=feats[1].shape[-2:], mode="bilinear", align_corners=False)
        resized[-1] = F.interpolate(feats[-1], size=feats[-2].shape[-2:], mode="bilinear", align_corners=False)
        cls_preds, kernel_preds = [], []
        for feat, grid in zip(resized, self.num_grids):
            feat = torch.cat([feat, coordinate_features(feat)], dim=1)
            feat = F.interpolate(feat, size=(grid, grid), mode="bilinear", align_corners=False)
            cls_feat = feat[:, :-2].contiguous()
            kernel_feat = feat
            for conv in self.kernel_convs:
                kernel_feat = conv(kernel_feat)
            for conv in self.cls_convs:
                cls_feat = conv(cls_feat)
            kernel_preds.append(self.conv_kernel(kernel_feat))
            cls_preds.append(self.conv_cls(cls_feat))
        return cls_preds, kernel_preds, mask_feats
