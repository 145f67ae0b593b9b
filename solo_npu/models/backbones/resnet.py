"""ResNet backbones (18/34/50/101) with torchvision state-dict names."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from solo_npu.models.ops.sums import inference_add

logger = logging.getLogger(__name__)

__all__ = ["BasicBlock", "Bottleneck", "FrozenBatchNorm2d", "ResNet", "build_norm", "folded_batchnorm",
           "imagenet_state", "load_torchvision_weights"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, stored as buffers.

    The state-dict keys match ``nn.BatchNorm2d`` (``weight``, ``bias``, ``running_mean``,
    ``running_var``); ``num_batches_tracked`` is accepted and dropped when loading.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        """A frozen copy of ``bn`` (its running statistics and affine parameters)."""
        frozen = cls(bn.num_features, bn.eps)
        if bn.affine:
            frozen.weight.copy_(bn.weight.detach())
            frozen.bias.copy_(bn.bias.detach())
        if bn.track_running_stats:
            frozen.running_mean.copy_(bn.running_mean)
            frozen.running_var.copy_(bn.running_var)
        return frozen

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def build_norm(norm: str, channels: int, num_groups: int = 32) -> nn.Module:
    """A normalisation layer: ``"bn"``, ``"frozen_bn"`` or ``"gn"`` (``gcd(num_groups, channels)`` groups)."""
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if norm == "gn":
        return nn.GroupNorm(math.gcd(num_groups, channels), channels)
    raise ValueError(f"unknown norm {norm!r}; expected 'bn', 'frozen_bn' or 'gn'")


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34); the stride sits on ``conv1``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm: str = "bn", style: str = "pytorch", dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = build_norm(norm, planes)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = build_norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def strided_convs(self) -> list[nn.Conv2d]:
        return [self.conv1]

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(inference_add(out, identity))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 block (ResNet-50/101).

    ``style="pytorch"`` puts the stride on the 3x3 conv (torchvision, "ResNet v1.5"),
    ``style="caffe"`` on the first 1x1 conv (the original MSRA weights).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm: str = "bn", style: str = "pytorch", dilation: int = 1) -> None:
        super().__init__()
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"unknown ResNet style {style!r}; expected 'pytorch' or 'caffe'")
        self.style = style
        s1, s3 = (1, stride) if style == "pytorch" else (stride, 1)
        self.conv1 = _conv1x1(inplanes, planes, s1)
        self.bn1 = build_norm(norm, planes)
        self.conv2 = _conv3x3(planes, planes, s3, dilation)
        self.bn2 = build_norm(norm, planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = build_norm(norm, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def strided_convs(self) -> list[nn.Conv2d]:
        return [self.conv2] if self.style == "pytorch" else [self.conv1]

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(inference_add(out, identity))


_ARCH: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """ResNet returning the feature maps of the stages in ``out_indices`` (strides 4, 8, 16, 32).

    Args:
        depth: 18, 34, 50 or 101.
        style: ``"pytorch"`` or ``"caffe"`` (where bottlenecks put their stride).
        frozen_stages: -1 freezes nothing, 0 the stem, k the stem and ``layer1..layerk``.
        norm: ``"bn"``, ``"frozen_bn"`` or ``"gn"``.
        norm_eval: keep BatchNorm layers in eval mode (fixed statistics) while training.
        out_indices: which stages (0..3) to return.
        channels_last: run the convolutions in the channels-last memory format.
        base_channels: width of the stem and the first stage (64 in the standard networks; smaller
            values give tiny models for tests).
    """

    def __init__(self, depth: int = 50, style: str = "pytorch", frozen_stages: int = -1, norm: str = "bn",
                 norm_eval: bool = True, out_indices: Sequence[int] = (0, 1, 2, 3),
                 channels_last: bool = False, base_channels: int = 64) -> None:
        super().__init__()
        if depth not in _ARCH:
            raise ValueError(f"unsupported ResNet depth {depth}; expected one of {sorted(_ARCH)}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be in -1..4, got {frozen_stages}")
        if any(i not in range(4) for i in out_indices):
            raise ValueError(f"out_indices must be within 0..3, got {tuple(out_indices)}")
        block, layers = _ARCH[depth]
        self.depth = depth
        self.style = style
        self.frozen_stages = frozen_stages
        self.norm = norm
        self.norm_eval = norm_eval
        self.out_indices = tuple(out_indices)
        self.channels_last = channels_last

        c = base_channels
        self.conv1 = nn.Conv2d(3, c, 7, stride=2, padding=3, bias=False)
        self.bn1 = build_norm(norm, c)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.inplanes = c
        self.layer1 = self._make_layer(block, c, layers[0], 1)
        self.layer2 = self._make_layer(block, 2 * c, layers[1], 2)
        self.layer3 = self._make_layer(block, 4 * c, layers[2], 2)
        self.layer4 = self._make_layer(block, 8 * c, layers[3], 2)
        self.stage_channels = tuple(w * block.expansion for w in (c, 2 * c, 4 * c, 8 * c))
        self.out_channels = [self.stage_channels[i] for i in self.out_indices]
        self._init_weights()
        self._freeze_stages()
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride),
                                       build_norm(self.norm, planes * block.expansion))
        mods = [block(self.inplanes, planes, stride, downsample, self.norm, self.style)]
        self.inplanes = planes * block.expansion
        mods += [block(self.inplanes, planes, norm=self.norm, style=self.style) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def stages(self) -> list[nn.Sequential]:
        """The four residual stages ``layer1..layer4``."""
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def set_stage_stride(self, stage: int, stride: int) -> None:
        """Change the stride of stage ``stage`` (0..3), e.g. ``set_stage_stride(2, 1)`` for SSD-ResNet34.

        Only the first block of a stage is strided; its strided conv and its downsample conv change.
        """
        first = self.stages[stage][0]
        for conv in first.strided_convs:
            conv.stride = (stride, stride)
        if first.downsample is not None:
            first.downsample[0].stride = (stride, stride)

    def _freeze_stages(self) -> None:
        modules: list[nn.Module] = []
        if self.frozen_stages >= 0:
            modules += [self.conv1, self.bn1]
        modules += self.stages[: max(self.frozen_stages, 0)]
        for m in modules:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return outs


def imagenet_state(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, Tensor]:
    """The tensors of an ImageNet ResNet file (a plain state dict, or one under ``state_dict`` as mmdet's
    converted files keep it), classifier included.

    Raises:
        CheckpointError: the file cannot be read, or holds no state dict of tensors (one line).
    """
    from solo_npu.checkpoints import CheckpointError, load_checkpoint

    # model.pretrained has no trust setting of its own (checkpoint_trust_pickle is checkpoint='s)
    state = load_checkpoint(path, trust_pickle=trust_pickle, trust_hint=(
        "ImageNet weights are read as plain tensors only: if you trust the file, save its state dict again "
        "(torch.save(state_dict, PATH)) and pass that file"))
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors (the file holds a {type(state).__name__}); "
                              "pass torchvision ImageNet weights such as resnet50-19c8e357.pth")
    return state


def folded_batchnorm(state: dict[str, Tensor]) -> bool:
    """Whether every BatchNorm of a ResNet state dict is a fixed affine: running mean 0 and variance 1
    throughout, with trained scales. MSRA's caffe-style ImageNet ResNets have no BatchNorm statistics
    (Detectron keeps each BN as an affine ``_s``/``_b`` pair); mmdet's converter
    (``tools/model_converters/detectron2pytorch.py``, the source of ``resnet50_msra-5891d200.pth`` and
    ``resnet50_caffe-788b5fa3.pth``) writes them under torchvision's names with zero means and unit variances.
    torchvision's ImageNet weights carry the statistics they were trained with."""
    means = [v for k, v in state.items() if k.endswith(".running_mean")]
    variances = [v for k, v in state.items() if k.endswith(".running_var")]
    scales = [state.get(k[: -len("running_var")] + "weight") for k, v in state.items() if k.endswith(".running_var")]
    if not means or not variances:
        return False
    identity = all(bool((m == 0).all()) for m in means) and all(bool((v == 1).all()) for v in variances)
    return identity and any(s is not None and not bool((s == 1).all()) for s in scales)


def load_torchvision_weights(model: ResNet, path: str | os.PathLike, strict: bool = True,
                             trust_pickle: bool = False) -> tuple[list[str], list[str]]:
    """Load an ImageNet ResNet checkpoint under torchvision's names into ``model``: torchvision's own
    (e.g. ``resnet50-19c8e357.pth``) or mmdet's caffe-style MSRA files (e.g. ``resnet50_msra-5891d200.pth``,
    :func:`folded_batchnorm`).

    The classifier (``fc.*``) is dropped. With GroupNorm the BN running statistics are dropped too.

    Returns:
        ``(missing_keys, unexpected_keys)``.
    """
    state = {k: v for k, v in imagenet_state(path, trust_pickle).items() if not k.startswith("fc.")}
    kind = "caffe-style (MSRA)" if folded_batchnorm(state) else "torchvision"
    if model.norm == "gn":
        state = {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var",
                                                                   "num_batches_tracked"))}
    result = model.load_state_dict(state, strict=strict)
    if not (result.missing_keys or result.unexpected_keys):
        logger.info("loaded %s ImageNet ResNet-%d weights from %s", kind, model.depth, path)
    return list(result.missing_keys), list(result.unexpected_keys)
