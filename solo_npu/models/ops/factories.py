"""Ranges, grids and device moves that follow another tensor's device, also in a traced graph.

``torch.jit.trace`` records the device of a factory call as a constant: ``torch.arange(n, device=x.device)``,
``torch.linspace(..., device=x.device)`` and ``t.to(x.device)`` become ``prim::Constant[value="cpu"]`` in a
graph traced on the CPU, so the exported ``.ts`` keeps making those tensors on the CPU when it is loaded with
``map_location="cuda"`` or run on an NPU (a device mismatch, or parts of the graph left on the host).

The functions here take the device from a reference tensor through ops whose traced form has no device:

* ``ref.new_empty(size, dtype=...)``: the tracer records ``aten::new_empty(ref, size, dtype, None, None,
  None)``, the device left to ``ref`` when the graph runs (pytorch/pytorch
  ``tools/autograd/gen_trace_type.py``, ``format_trace_inputs``: an unset TensorOptions device is traced
  as None);
* ``torch.arange(..., out=buf)`` / ``torch.linspace(..., out=buf)``: ``torch.jit.trace`` records the
  ``out`` tensor as an input of the op (the same file: for ``*_out`` functions the out argument is added
  as an input when the trace is not ``force_outplace``);
* ``t.type_as(other)``: traced as ``aten::type_as(t, other)``, which takes the device and dtype from ``other``
  when it runs. ``t.to(other)`` would not do: Python's ``Tensor.to`` turns a tensor argument into its device
  and dtype before dispatching (pytorch/pytorch ``torch/csrc/autograd/python_variable_methods.cpp``,
  ``THPVariable_to`` / ``parse_to_conversion``), so the trace holds ``aten::to(t, device, dtype, ...)``.

Under ``torch.onnx.export`` they make the plain calls: an ONNX graph has no device, and the exporter's
``linspace`` symbolic (torch ``onnx/symbolic_opset9.py``, ``linspace(g, start, end, steps, dtype, layout,
device, pin_memory)``) has no ``out`` form, so the export failed on it. The ONNX graphs stay node for node
as they were.

Eagerly they run the same kernels on the same device as ``torch.arange(..., device=ref.device)``,
``torch.linspace(..., device=ref.device)`` and ``t.to(ref.device)``: the values are equal bit for bit. A tensor
that is no op's output (``t`` of :func:`to_device_of` built with numpy, the YOLACT priors) is a tensor constant
of the graph, which ``aten::type_as`` copies to ``ref``'s device when the graph runs.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["arange_on", "linspace_on", "to_device_of"]


def _onnx_export() -> bool:
    """Whether ``torch.onnx.export`` is tracing the caller (``is_tracing`` first: eager code, and
    torch.compile, never reach the ONNX check)."""
    return torch.jit.is_tracing() and torch.onnx.is_in_onnx_export()


def arange_on(ref: Tensor, end: int, dtype: torch.dtype = torch.long) -> Tensor:
    """``torch.arange(end, dtype=dtype, device=ref.device)`` with no device constant when traced."""
    if _onnx_export():
        return torch.arange(end, dtype=dtype, device=ref.device)
    return torch.arange(end, out=ref.new_empty(end, dtype=dtype))


def linspace_on(ref: Tensor, start: float, end: float, steps: int, dtype: torch.dtype | None = None) -> Tensor:
    """``torch.linspace(start, end, steps, dtype=dtype or ref.dtype, device=ref.device)`` with no device
    constant when traced."""
    dtype = dtype or ref.dtype
    if _onnx_export():
        return torch.linspace(start, end, steps, dtype=dtype, device=ref.device)
    return torch.linspace(start, end, steps, out=ref.new_empty(steps, dtype=dtype))


def to_device_of(t: Tensor, ref: Tensor) -> Tensor:
    """``t`` on ``ref``'s device, its dtype kept (``t`` itself when it is there already), with no device
    constant when traced."""
    return t.type_as(ref.new_empty(0, dtype=t.dtype))
