"""oneDNN for the CPU convolutions and matrix products that torch would not send there.

torch sends a 1x1, stride-1 convolution of a small batch (fewer than 16 images) on one thread to its
generic GEMM path (``thnn_conv2d``: a bias copy, then an addmm; the rule is in ATen's ConvUtils
``use_mkldnn``), which ran at about half oneDNN's speed per multiply-accumulate on a 2-core AMD EPYC
(SOLOv2 R50 at 800x1216: ``benchmarks/inference_mode.py``). :class:`PointwiseConv2d` calls oneDNN's
convolution directly for those layers in eager CPU inference; a traced or exported graph still records an
ordinary convolution.

Likewise ``a @ b`` of two float32 CPU matrices runs on MKL's sgemm, which on that machine reached 64-93
GFLOP/s on one thread against oneDNN's 158 for a 3x3 convolution: :func:`matmul_nt` sends eager
products without autograd to oneDNN's matrix product instead (SOLOv2's dynamic convolution after the
head: 1.6-2.9x faster at 64-1000 kernels over 200x304 mask features).
"""

from __future__ import annotations

import torch
from torch import nn

from solo_npu.runtime.compat import autocast_enabled, has_onednn_matmul, is_compiling

__all__ = ["PointwiseConv2d", "matmul_nt", "onednn_applies", "use_onednn_pointwise"]


class PointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-1, ungrouped convolution that runs on oneDNN for float32 CPU tensors without autograd.

    Same parameters and state-dict names as the ``nn.Conv2d`` it replaces; anything else (another device
    or dtype, gradients, CPU autocast, TorchScript, tracing, ONNX export, torch.compile) takes
    ``nn.Conv2d``'s own path, so autocast still runs the layer in the precision it asked for and a compiled
    graph holds an ordinary convolution.
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> PointwiseConv2d:
        new = cls.__new__(cls)
        new.__dict__.update(conv.__dict__)  # the same Parameter objects, hooks and attributes
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if onednn_applies(x, self.weight):
            return torch.ops.aten.mkldnn_convolution(x, self.weight, self.bias, [0, 0], [1, 1], [1, 1], 1)
        return super().forward(x)


def onednn_applies(*tensors: torch.Tensor) -> bool:
    """Whether a direct oneDNN call may replace torch's own op for ``tensors``: all float32 on the CPU,
    eager (not scripting, tracing, exporting to ONNX or compiling), nothing for autograd to record (grad
    mode off, or no tensor that requires a gradient) and no CPU autocast, so that every other case keeps
    torch's op, its precision and its graph."""
    # is_compiling first: under torch.compile nothing else is asked (torch 2.1's dynamo cannot trace the
    # autocast query's fallback)
    return (not is_compiling() and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
            and not autocast_enabled("cpu")
            and not torch.jit.is_scripting() and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export())


def matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` for matrices ``a [M, K]`` and ``b [N, K]``: on oneDNN's matrix product where
    :func:`onednn_applies` and torch has it (:func:`solo_npu.runtime.compat.has_onednn_matmul`), else
    ``@``. ``b`` should be contiguous (its rows are the product's columns). The two paths differ by float
    rounding only (about 4e-6 for sums of 256 products of unit-sized terms)."""
    if a.dim() == 2 and b.dim() == 2 and onednn_applies(a, b) and has_onednn_matmul():
        return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return a @ b.transpose(-1, -2)


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
