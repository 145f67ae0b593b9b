"""Index arithmetic in int32 after TopK, for graphs that Ascend's ATC compiles.

Post-processing picks the best (cell, class) pairs with TopK and then takes rows of other tensors at those
indices. Done in int64 (TopK's ONNX output type), the division, modulo and expanded gather indices land on ops
that CANN's Ascend 310P AI Core kernels do not take in int64: the operator information of CANN 8.1.RC1
(``opp/built-in/op_impl/ai_core/tbe/config/ascend310p/aic-ascend310p-ops-info.json``) lists Div, Mod and
Expand without int64, and CANN's "supported ONNX operators" list for Atlas inference products gives Mod,
Less and Where as float16, float and int32 (int8/uint8) only, so ATC moves them to AI CPU or refuses them.
The indices are cast to int32 right after TopK, divided with ``rounding_mode="trunc"`` (TopK indices are
never negative, so it is the floor division, without the floor's Mod/Less/Where correction chain in the
graph), and rows are taken with one ``index_select`` on the flattened batch: ONNX Gather with int32
indices, which both lists support, instead of GatherElements over an int64 index expanded to the data's full
shape (30.4M elements for SOLOv2's mask probabilities at 800x1216). ``torch.gather`` itself does not take
int32 indices on every supported torch (2.1 refuses them).

The values are those of the int64 forms bit for bit: the same elements are taken.
"""

from __future__ import annotations

import torch
from torch import Tensor

from solo_npu.models.ops.factories import arange_on

__all__ = ["take_rows", "topk_int32"]


def topk_int32(x: Tensor, k: int, dim: int = -1) -> tuple[Tensor, Tensor]:
    """``x.topk(k, dim)`` with the indices cast to int32 (see the module docstring)."""
    values, index = x.topk(k, dim=dim)
    return values, index.to(torch.int32)


def take_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b, i], ...]`` for ``x [B, N, ...]`` and an integer ``index [B, K]`` (int32 or int64):
    one ``index_select`` over the flattened batch (ONNX Gather on axis 0)."""
    b, n = x.shape[:2]
    offsets = arange_on(index, b, index.dtype) * n
    flat = (index + offsets[:, None]).reshape(-1)
    return x.reshape(b * n, *x.shape[2:]).index_select(0, flat).reshape(*index.shape, *x.shape[2:])
