"""Inference mode of a detector: the same model with frozen normalisation folded into its convolutions.

Evaluation and export share it. A BatchNorm whose statistics no longer change (``FrozenBatchNorm2d``, or
``nn.BatchNorm2d`` in eval mode) is an affine map per channel, so ``bn(conv(x))`` equals one convolution
with scaled weights and a bias: the fold removes a full read and write of every backbone activation.
GroupNorm (the SOLOv2 head) depends on its input and stays as it is.

On the CPU, channels-last adds one more change: the 1x1 convolutions run on oneDNN
(:func:`solo_npu.runtime.onednn.use_onednn_pointwise`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from solo_npu.models.backbones.resnet import FrozenBatchNorm2d
from solo_npu.runtime.onednn import use_onednn_pointwise

logger = logging.getLogger(__name__)

__all__ = ["compile_for_inference", "compile_unsupported", "fold_frozen_norms", "prepare_for_inference"]

_FOLDABLE = (FrozenBatchNorm2d, nn.BatchNorm2d)


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    if not isinstance(conv, nn.Conv2d) or not isinstance(norm, _FOLDABLE):
        return False
    if isinstance(norm, nn.BatchNorm2d) and (norm.training or not norm.track_running_stats):
        return False  # statistics still move: not an affine map yet
    return conv.out_channels == norm.num_features


@torch.no_grad()
def _fold(conv: nn.Conv2d, norm: nn.Module) -> None:
    # In float64 on the host, whatever the device: the NPU's AI Cores have next to no float64 arithmetic.
    def host(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", torch.float64)

    running_mean = host(norm.running_mean)
    weight = host(norm.weight) if norm.weight is not None else torch.ones_like(running_mean)
    bias = host(norm.bias) if norm.bias is not None else torch.zeros_like(running_mean)
    scale = weight * torch.rsqrt(host(norm.running_var) + norm.eps)
    conv_bias = host(conv.bias) if conv.bias is not None else torch.zeros_like(scale)
    like = dict(device=conv.weight.device, dtype=conv.weight.dtype)
    new_weight = (host(conv.weight) * scale.reshape(-1, 1, 1, 1)).to(**like)
    new_bias = ((conv_bias - running_mean) * scale + bias).to(**like)
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


def prepare_for_inference(model: nn.Module, *, channels_last: bool = False) -> nn.Module:
    """Put ``model`` into its inference mode, in place: eval, frozen norms folded, optional channels-last.

    Only for a model that will not be trained further (evaluation of a copy, export, deployment): the
    folded weights are no longer the checkpoint's parameters. With ``channels_last`` the 1x1 convolutions
    also run on oneDNN in eager CPU inference (:class:`solo_npu.runtime.onednn.PointwiseConv2d`).
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


def compile_unsupported(device_type: str) -> str | None:
    """Why :func:`compile_for_inference` cannot serve this device, or None when it can (every supported torch has
    dynamo for its Pythons: torch 2.1's wheels stop at Python 3.11, where its dynamo stops)."""
    if device_type not in ("cpu", "cuda"):
        return f"torch.compile's inductor backend does not generate code for {device_type} devices"
    return None


def compile_for_inference(fn: Callable[..., Any], device_type: str) -> Callable[..., Any]:
    """``torch.compile`` (inductor) of an inference-mode module or method whose weights no longer change; it
    compiles at its first call, once per input shape (``dynamic=False``: a deployment's static inputs).

    On the CPU with inductor's freezing (``torch._inductor.config.freezing``): the weights become constants of the
    graph, so the convolutions are prepacked for oneDNN and fused with their bias and ReLU. Only for a model that
    will not be trained or reloaded: a weight changed after the first call is not seen.
    """
    options = {"freezing": True} if device_type == "cpu" else None
    return torch.compile(fn, options=options, dynamic=False)
