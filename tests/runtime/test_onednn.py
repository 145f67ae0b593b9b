"""oneDNN's matrix product for eager CPU inference (``solo_npu.runtime.onednn.matmul_nt``)."""

from __future__ import annotations

import pytest
import torch

import solo_npu.runtime.onednn as onednn
from solo_npu.runtime.compat import has_onednn_matmul

pytestmark = pytest.mark.skipif(not has_onednn_matmul(), reason="this torch has no oneDNN matrix product")


def _ops_called(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_matmul_nt_is_a_product_on_onednn():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(37, 256, generator=g), torch.randn(1000, 256, generator=g)
    out = onednn.matmul_nt(a, b)
    assert out.shape == (37, 1000)
    torch.testing.assert_close(out.double(), a.double() @ b.double().t(), rtol=0, atol=1e-4)
    assert "mkldnn::_linear_pointwise" in _ops_called(lambda: onednn.matmul_nt(a, b))
    torch.testing.assert_close(out, a @ b.t(), rtol=0, atol=1e-4)  # torch's product, up to rounding


def test_matmul_nt_keeps_torch_product_where_oneDNN_must_not_run():
    a = torch.randn(4, 8, requires_grad=True)
    b = torch.randn(6, 8)
    assert "mkldnn::_linear_pointwise" not in _ops_called(lambda: onednn.matmul_nt(a, b))
    onednn.matmul_nt(a, b).sum().backward()  # autograd records the product
    torch.testing.assert_close(a.grad, b.sum(0).expand(4, 8))
    for x in (a.detach().double(), a.detach().bfloat16()):  # other dtypes keep their own product
        assert onednn.matmul_nt(x, b.to(x.dtype)).dtype == x.dtype
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert onednn.matmul_nt(a.detach(), b).dtype == torch.bfloat16
    traced = torch.jit.trace(lambda x, y: onednn.matmul_nt(x, y), (a.detach(), b))
    assert "mkldnn" not in str(traced.graph)


def test_select_gives_the_same_instances_with_either_product(monkeypatch):
    from solo_npu.models.solov2.postprocess import SOLOv2TestConfig, select_exact

    g = torch.Generator().manual_seed(1)
    cells, classes, embed = 400, 8, 64
    scores = torch.rand(cells, classes, generator=g) * 0.3
    kernels = torch.randn(cells, embed, generator=g) * 0.3
    feats = torch.randn(embed, 48, 64, generator=g)
    strides = torch.full((cells,), 8.0)
    cfg = SOLOv2TestConfig()
    with torch.no_grad():
        fast = select_exact(scores, kernels, feats, strides, cfg)
        assert "mkldnn::_linear_pointwise" in _ops_called(lambda: select_exact(scores, kernels, feats, strides, cfg))
        monkeypatch.setattr(onednn, "has_onednn_matmul", lambda: False)
        plain = select_exact(scores, kernels, feats, strides, cfg)
    assert len(plain[2]) == len(fast[2]) > 20
    assert torch.equal(plain[1], fast[1])
    torch.testing.assert_close(fast[2], plain[2], rtol=0, atol=1e-5)
    assert torch.equal(fast[0] > 0.5, plain[0] > 0.5)
