"""Inference mode of a detector: the same model with frozen normalisation folded into its convolutions.

Evaluation and export share it. A BatchNorm whose statistics no longer change (``FrozenBatchNorm2d``, or
``nn.BatchNorm2d`` in eval mode) is an affine map per channel, so ``bn(conv(x))`` equals one convolution
with scaled weights and a bias: the fold removes a full read and write of every backbone activation.
GroupNorm (the SOLOv2 head) depends on its input and stays as it is.

On the CPU, channels-last adds one more change: torch sends a 1x1, stride-1 convolution of a small batch on
one thread to its generic GEMM path (``thnn_conv2d``: a bias copy, then an addmm), which runs at about half
the speed of oneDNN's convolution on the same machine. :class:`PointwiseConv2d` calls oneDNN directly for
those layers in eager CPU inference; a traced or exported graph still records an ordinary convolution.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from solo_npu.models.backbones.resnet import FrozenBatchNorm2d

logger = logging.getLogger(__name__)

__all__ = ["PointwiseConv2d", "fold_frozen_norms", "prepare_for_inference", "use_onednn_pointwise"]

_FOLDABLE = (FrozenBatchNorm2d, nn.BatchNorm2d)


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    if not isinstance(conv, nn.Conv2d) or not isinstance(norm, _FOLDABLE):
        return False
    if isinstance(norm, nn.BatchNorm2d) and (norm.training or not norm.track_running_stats):
        return False  # statistics still move: not an affine map yet
    return conv.out_channels == norm.num_features


@torch.no_grad()
def _fold(conv: nn.Conv2d, norm: nn.Module) -> None:
    weight = norm.weight if norm.weight is not None else torch.ones_like(norm.running_mean)
    bias = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
    scale = weight.double() * torch.rsqrt(norm.running_var.double() + norm.eps)
    conv_bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    new_weight = (conv.weight.double() * scale.reshape(-1, 1, 1, 1)).to(conv.weight.dtype)
    new_bias = ((conv_bias - norm.running_mean.double()) * scale + bias.double()).to(conv.weight.dtype)
    memory_format = torch.channels_last if conv.weight.is_contiguous(memory_format=torch.channels_last) \
        and not conv.weight.is_contiguous() else torch.contiguous_format
    conv.weight = nn.Parameter(new_weight.contiguous(memory_format=memory_format),
                               requires_grad=conv.weight.requires_grad)
    conv.bias = nn.Parameter(new_bias, requires_grad=conv.weight.requires_grad)


def fold_frozen_norms(model: nn.Module) -> int:
    """Fold every frozen BatchNorm that directly follows a convolution into it, in place.

    Pairs are found by structure, as the backbones are written: ``convK`` / ``bnK`` attributes of one
    module (``K`` empty or a digit) and adjacent ``(Conv2d, BatchNorm)`` entries of an ``nn.Sequential``
    (downsample branches). A folded norm is replaced by ``nn.Identity``. BatchNorm layers in training mode
    are left alone.

    Returns:
        The number of norms folded.
    """
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            items = list(module._modules.items())
            for (_, conv), (norm_name, norm) in zip(items, items[1:]):
                if _foldable(conv, norm):
                    _fold(conv, norm)
                    module._modules[norm_name] = nn.Identity()
                    folded += 1
            continue
        for name, norm in list(module._modules.items()):
            if not name.startswith("bn"):
                continue
            conv = module._modules.get("conv" + name[2:])
            if conv is not None and _foldable(conv, norm):
                _fold(conv, norm)
                setattr(module, name, nn.Identity())
                folded += 1
    return folded


class PointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-1, ungrouped convolution that runs on oneDNN for float32 CPU tensors without autograd.

    Same parameters and state-dict names as the ``nn.Conv2d`` it replaces; anything else (another device
    or dtype, gradients, TorchScript, tracing, ONNX export) takes ``nn.Conv2d``'s own path.
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> PointwiseConv2d:
        new = cls.__new__(cls)
        new.__dict__.update(conv.__dict__)  # the same Parameter objects, hooks and attributes
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and not torch.is_grad_enabled() and not torch.jit.is_scripting() and not torch.jit.is_tracing()
                and not torch.onnx.is_in_onnx_export()):
            return torch.ops.aten.mkldnn_convolution(x, self.weight, self.bias, [0, 0], [1, 1], [1, 1], 1)
        return super().forward(x)


def _pointwise(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
            and conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def use_onednn_pointwise(model: nn.Module) -> int:
    """Replace every 1x1, stride-1 ``nn.Conv2d`` of ``model`` by :class:`PointwiseConv2d`, in place.

    Returns:
        The number of convolutions replaced (0 where torch has no oneDNN).
    """
    if not torch.backends.mkldnn.is_available():
        return 0
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            if child is not None and _pointwise(child):
                module._modules[name] = PointwiseConv2d.from_conv(child)
                replaced += 1
    return replaced


def prepare_for_inference(model: nn.Module, *, channels_last: bool = False) -> nn.Module:
    """Put ``model`` into its inference mode, in place: eval, frozen norms folded, optional channels-last.

    Only for a model that will not be trained further (evaluation of a copy, export, deployment): the
    folded weights are no longer the checkpoint's parameters. With ``channels_last`` the 1x1 convolutions
    also run on oneDNN in eager CPU inference (:class:`PointwiseConv2d`).
    """
    model.eval()
    folded = fold_frozen_norms(model)
    pointwise = 0
    if channels_last:
        model.to(memory_format=torch.channels_last)
        pointwise = use_onednn_pointwise(model)
    logger.info("inference mode: %d frozen norms folded into convolutions%s", folded,
                f", channels-last, {pointwise} 1x1 convolutions on oneDNN" if channels_last else "")
    return model
