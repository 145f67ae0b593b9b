"""Feature pyramid network with mmdet-compatible parameter names."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from solo_npu.models.ops.sums import inference_add

__all__ = ["FPN", "ConvModule", "init_normal_convs"]


def init_normal_convs(module: nn.Module, std: float = 0.01) -> None:
    """Normal(0, ``std``) weights and zero biases for every convolution in ``module`` (mmdet's head init)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

_EXTRA_MODES = (False, "on_input", "on_lateral", "on_output")


class ConvModule(nn.Module):
    """Conv -> optional norm -> optional ReLU, named like mmcv's ConvModule (``conv``, ``gn``/``bn``).

    A conv followed by a norm layer has no bias.

    Args:
        norm: ``None``, ``"gn"`` (``num_groups`` groups) or ``"bn"``.
        act: apply ReLU after the norm.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 norm: str | None = None, act: bool = True, num_groups: int = 32) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=norm is None)
        self.norm_name = norm
        if norm == "gn":
            self.gn = nn.GroupNorm(num_groups, out_channels)
        elif norm == "bn":
            self.bn = nn.BatchNorm2d(out_channels)
        elif norm is not None:
            raise ValueError(f"unknown norm {norm!r}; expected None, 'gn' or 'bn'")
        self.act = nn.ReLU(inplace=True) if act else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm_name is not None:
            x = getattr(self, self.norm_name)(x)
        if self.act is not None:
            x = self.act(x)
        return x


class FPN(nn.Module):
    """Feature pyramid network (Lin et al.), laid out like mmdet's ``FPN``.

    Args:
        in_channels: channels of each backbone level.
        out_channels: channels of every output level.
        num_outs: number of output levels.
        start_level: first backbone level used.
        end_level: last backbone level used (inclusive); -1 for the last one.
        add_extra_convs: ``False`` (extra levels by stride-2 max-pool of the last output), or where the
            stride-2 3x3 extra convs read from: ``"on_input"``, ``"on_lateral"`` or ``"on_output"``.
        relu_before_extra_convs: apply ReLU before every extra conv but the first.
        norm: ``None``, ``"gn"`` or ``"bn"`` on the lateral and output convs.
        act: ReLU after the lateral and output convs (mmdet's FPN has none).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int, start_level: int = 0,
                 end_level: int = -1, add_extra_convs: bool | str = False, relu_before_extra_convs: bool = False,
                 norm: str | None = None, act: bool = False, num_groups: int = 32) -> None:
        super().__init__()
        in_channels = list(in_channels)
        if add_extra_convs is True:
            add_extra_convs = "on_input"
        if add_extra_convs not in _EXTRA_MODES:
            raise ValueError(f"add_extra_convs must be one of {_EXTRA_MODES}, got {add_extra_convs!r}")
        num_ins = len(in_channels)
        if end_level == -1 or end_level == num_ins - 1:
            backbone_end_level = num_ins
        else:
            backbone_end_level = end_level + 1
        if not 0 <= start_level < backbone_end_level <= num_ins:
            raise ValueError(f"bad FPN levels: start_level={start_level}, end_level={end_level}, inputs={num_ins}")
        if num_outs < backbone_end_level - start_level:
            raise ValueError(f"num_outs={num_outs} is smaller than the {backbone_end_level - start_level} used levels")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.start_level = start_level
        self.backbone_end_level = backbone_end_level
        self.add_extra_convs = add_extra_convs
        self.relu_before_extra_convs = relu_before_extra_convs

        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for i in range(start_level, backbone_end_level):
            self.lateral_convs.append(ConvModule(in_channels[i], out_channels, 1, norm=norm, act=act,
                                                 num_groups=num_groups))
            self.fpn_convs.append(ConvModule(out_channels, out_channels, 3, padding=1, norm=norm, act=act,
                                             num_groups=num_groups))
        extra_levels = num_outs - (backbone_end_level - start_level)
        if add_extra_convs:
            for i in range(extra_levels):
                cin = in_channels[backbone_end_level - 1] if i == 0 and add_extra_convs == "on_input" else out_channels
                self.fpn_convs.append(ConvModule(cin, out_channels, 3, stride=2, padding=1, norm=norm, act=act,
                                                 num_groups=num_groups))
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} feature maps, got {len(inputs)}")
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):
            up = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
            laterals[i - 1] = inference_add(laterals[i - 1], up)  # a lateral ReLU (act=True) keeps its output
        used = len(laterals)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(used)]
        if self.num_outs > used:
            if not self.add_extra_convs:
                for _ in range(self.num_outs - used):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                if self.add_extra_convs == "on_input":
                    source = inputs[self.backbone_end_level - 1]
                elif self.add_extra_convs == "on_lateral":
                    source = laterals[-1]
                else:
                    source = outs[-1]
                outs.append(self.fpn_convs[used](source))
                for i in range(used + 1, self.num_outs):
                    x = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                    outs.append(self.fpn_convs[i](x))
        return outs
