"""Matrix NMS against a per-pair loop written from the SOLOv2 paper."""

from __future__ import annotations

import math

import pytest
import torch

from solo_npu.models.solov2 import matrix_nms, matrix_nms_by_class
from solo_npu.models.solov2.matrix_nms import self_intersections
from solo_npu.runtime import compat


def naive_matrix_nms(masks, labels, scores, kernel, sigma):
    n = len(scores)
    flat = masks.reshape(n, -1).float()
    area = flat.sum(1)

    def iou(i, j):
        inter = (flat[i] * flat[j]).sum()
        return float(inter / (area[i] + area[j] - inter))

    def f(x):
        return math.exp(-sigma * x * x) if kernel == "gaussian" else 1 - x

    out = []
    for j in range(n):
        coef = 1.0
        for i in range(j):
            if labels[i] != labels[j]:
                continue
            comp = max([iou(k, i) for k in range(i) if labels[k] == labels[i]], default=0.0)
            coef = min(coef, f(iou(i, j)) / f(comp))
        out.append(float(scores[j]) * coef)
    return torch.tensor(out)


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_matrix_nms_matches_naive(kernel):
    g = torch.Generator().manual_seed(1)
    n = 12
    base = torch.rand(4, 16, 16, generator=g) > 0.5
    # Overlapping masks: noisy copies of four base shapes.
    masks = base[torch.randint(0, 4, (n,), generator=g)] ^ (torch.rand(n, 16, 16, generator=g) > 0.85)
    labels = torch.randint(0, 2, (n,), generator=g)
    scores = torch.rand(n, generator=g).sort(descending=True).values
    got = matrix_nms(masks, labels, scores, kernel=kernel, sigma=2.0)
    torch.testing.assert_close(got, naive_matrix_nms(masks, labels, scores, kernel, 2.0), rtol=1e-5, atol=1e-6)
    assert (got <= scores + 1e-7).all() and got[0] == scores[0]
    # Unsorted input: the same decayed scores, permuted.
    perm = torch.randperm(n, generator=g)
    torch.testing.assert_close(matrix_nms(masks[perm], labels[perm], scores[perm], kernel=kernel), got[perm])
    # Batched call gives the same numbers per image.
    batched = matrix_nms(torch.stack([masks, masks.flip(0)]), torch.stack([labels, labels.flip(0)]),
                         torch.stack([scores, scores]), kernel=kernel, sigma=2.0)
    torch.testing.assert_close(batched[0], got)
    torch.testing.assert_close(batched[1], naive_matrix_nms(masks.flip(0), labels.flip(0), scores, kernel, 2.0),
                               rtol=1e-5, atol=1e-6)


def test_identical_masks_decay_and_padding_is_inert():
    m = torch.zeros(3, 8, 8, dtype=torch.bool)
    m[:, 2:6, 2:6] = True
    scores = torch.tensor([0.9, 0.8, 0.0])
    out = matrix_nms(m, torch.tensor([0, 0, 1]), scores, kernel="gaussian", sigma=2.0)
    assert out[0] == pytest.approx(0.9) and out[1] == pytest.approx(0.8 * math.exp(-2.0))
    # The zero-score padding entry ranked last does not change the others.
    torch.testing.assert_close(out[:2], matrix_nms(m[:2], torch.tensor([0, 0]), scores[:2]))


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_by_class_equals_full_matrix(kernel):
    g = torch.Generator().manual_seed(3)
    n = 60
    base = torch.rand(6, 20, 24, generator=g) > 0.5
    masks = (base[torch.randint(0, 6, (n,), generator=g)] ^ (torch.rand(n, 20, 24, generator=g) > 0.9)).float()
    labels = torch.randint(0, 5, (n,), generator=g)
    scores = torch.rand(n, generator=g)
    scores[::7] = 0.0  # padding / filtered entries
    scores[1::9] = scores[2]  # ties broken by position
    full = matrix_nms(masks, labels, scores, kernel=kernel, sigma=2.0)
    grouped = matrix_nms_by_class(masks, labels, scores, kernel=kernel, sigma=2.0)
    assert torch.equal(grouped, full)
    assert (grouped[scores == 0] == 0).all() and (grouped < scores).any()
    # The naive per-pair loop agrees too (it needs the input sorted by score).
    order = scores.sort(descending=True, stable=True).indices
    torch.testing.assert_close(grouped[order], naive_matrix_nms(masks[order], labels[order], scores[order], kernel,
                                                                2.0), rtol=1e-5, atol=1e-6)
    assert torch.equal(matrix_nms_by_class(masks, labels, torch.zeros(n)), torch.zeros(n))
    mostly_one = torch.where(labels == 4, labels, torch.zeros_like(labels))  # one class: the whole-matrix path
    assert torch.equal(matrix_nms_by_class(masks, mostly_one, scores, kernel=kernel),
                       matrix_nms(masks, mostly_one, scores, kernel=kernel))
    with pytest.raises(ValueError, match="one image"):
        matrix_nms_by_class(masks[None], labels[None], scores[None])


def test_self_intersections_upper_blocks_equal_the_full_product():
    g = torch.Generator().manual_seed(5)
    flat = (torch.rand(2, 300, 257, generator=g) > 0.6).float()
    full = flat @ flat.transpose(-1, -2)
    for block in (64, 100, 128):
        assert torch.equal(self_intersections(flat, block=block), full)
    assert torch.equal(self_intersections(flat[0, :40]), full[0, :40, :40])  # small N: one matmul


def test_int8_intersections_equal_float_ones(monkeypatch: pytest.MonkeyPatch):
    """Where the CPU has an int8 matrix product, one image's intersections are int8 products with int32
    sums; they equal a float64 product and the float32 path bit for bit, and Matrix NMS decays the same."""
    assert not compat.has_int8_matmul("cuda") and not compat.has_int8_matmul("npu")
    if not compat.has_int8_matmul("cpu"):
        pytest.skip("this torch has no CPU int8 matrix product (torch._int_mm arrived on the CPU after 2.1)")
    g = torch.Generator().manual_seed(7)
    base = torch.rand(5, 3000, generator=g) > 0.5
    flat = base[torch.randint(0, 5, (300,), generator=g)] ^ (torch.rand(300, 3000, generator=g) > 0.8)  # bool
    labels = torch.randint(0, 4, (300,), generator=g)
    scores = torch.rand(300, generator=g)
    expected = (flat.double() @ flat.double().t()).float()
    int8 = self_intersections(flat)
    assert torch.equal(int8, expected) and torch.equal(self_intersections(flat.float()), expected)
    by_int8 = (matrix_nms(flat, labels, scores), matrix_nms_by_class(flat.float(), labels, scores))
    monkeypatch.setattr(compat, "has_int8_matmul", lambda device_type: False)
    assert torch.equal(self_intersections(flat.float()), int8)
    assert torch.equal(matrix_nms(flat, labels, scores), by_int8[0])
    assert torch.equal(matrix_nms_by_class(flat.float(), labels, scores), by_int8[1])


def test_tie_rank_orders_equal_scores_as_the_input_order_would():
    """Masks given in a shuffled order with ``tie_rank`` = their position in the original order decay
    exactly as the original order does; without it, the shuffled order decides the ties (and differs)."""
    g = torch.Generator().manual_seed(5)
    n = 48
    masks = (torch.rand(n, 16, 20, generator=g) > 0.4).float()
    masks[1::2] = masks[::2] * (torch.rand(n // 2, 16, 20, generator=g) > 0.2)  # overlapping pairs
    labels = torch.randint(0, 3, (n,), generator=g)
    scores = 0.1 * torch.randint(1, 4, (n,), generator=g).float()  # three values: ties everywhere
    perm = torch.randperm(n, generator=g)
    ref = matrix_nms(masks, labels, scores)
    for fn in (matrix_nms, matrix_nms_by_class):
        assert torch.equal(fn(masks[perm], labels[perm], scores[perm], tie_rank=perm), ref[perm])
    assert not torch.equal(matrix_nms(masks[perm], labels[perm], scores[perm]), ref[perm])
    mostly_one = torch.zeros_like(labels)  # the whole-matrix path of matrix_nms_by_class
    assert torch.equal(matrix_nms_by_class(masks[perm], mostly_one[perm], scores[perm], tie_rank=perm),
                       matrix_nms(masks, mostly_one, scores)[perm])


def test_intersections_stay_exact_under_autocast(monkeypatch: pytest.MonkeyPatch):
    """An evaluation with amp.enabled runs post-processing under autocast; the float mask product must not run in
    half precision there (CPU autocast is bf16: 1001 is not a bf16 value; on CUDA/NPU fp16 sums above 65504 are
    inf and decay a mask to 0). The float path is the one of accelerators and of batched masks."""
    monkeypatch.setattr(compat, "has_int8_matmul", lambda device_type: False)
    flat = torch.zeros(2, 3000)
    flat[0, :1001] = 1
    flat[1, :1500] = 1
    expected = flat @ flat.t()
    assert expected[0, 1] == 1001
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert float((flat @ flat.t())[0, 1]) != 1001  # what autocast does to a plain product
        got = self_intersections(flat)
        batched = self_intersections(flat[None])
        decayed = matrix_nms(flat, torch.zeros(2, dtype=torch.long), torch.tensor([0.9, 0.8]))
    assert got.dtype == torch.float32 and torch.equal(got, expected) and torch.equal(batched[0], expected)
    assert torch.equal(decayed, matrix_nms(flat, torch.zeros(2, dtype=torch.long), torch.tensor([0.9, 0.8])))
