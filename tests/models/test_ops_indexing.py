"""Row selection with int32 indices (solo_npu.models.ops.indexing) against plain advanced indexing."""

from __future__ import annotations

import pytest
import torch

from solo_npu.models.ops.indexing import take_rows, topk_int32


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("trailing", [(), (4,), (3, 5, 2)])
def test_take_rows_is_batched_advanced_indexing(dtype, trailing):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 11, *trailing, generator=g)
    index = torch.randint(0, 11, (3, 7), generator=g)
    expected = x[torch.arange(3)[:, None], index]  # x[b, index[b, i], ...]
    assert torch.equal(take_rows(x, index.to(dtype)), expected)


def test_topk_int32_gives_topk_with_int32_indices():
    x = torch.randn(2, 50, generator=torch.Generator().manual_seed(1))
    values, index = topk_int32(x, 9, dim=1)
    ref = x.topk(9, dim=1)
    assert index.dtype == torch.int32
    assert torch.equal(values, ref.values) and torch.equal(index.long(), ref.indices)
