"""Candidate selection: the exact eager order and the static budget against mmdet's order.

The expected instances are those of ``select_reference``, mmdet's order as written in
mmdet/models/dense_heads/solov2_head.py ``_predict_by_feat_single`` (score_thr filter -> dynamic conv
-> ``sum_masks > strides`` -> ``scores *= maskness`` -> ``mask_matrix_nms`` with ``nms_pre`` applied
to the score-sorted candidates -> ``filter_thr`` -> ``max_per_img``).
"""

from __future__ import annotations

import pytest
import torch

from solo_npu.models.solov2.postprocess import SOLOv2TestConfig, select_exact, select_reference, select_static

GRIDS, STRIDES = (20, 16, 12, 8, 6), (8, 8, 16, 32, 32)
CLASSES, EMBED, H, W = 8, 8, 24, 32


def synthetic_head(num_above: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Category scores ``[N, C]`` with exactly ``num_above`` pairs above 0.1, kernels ``[N, E]`` and mask
    features ``[E, H, W]`` whose masks range from empty (area filter) to large, so maskness varies."""
    g = torch.Generator().manual_seed(seed)
    cells = sum(s * s for s in GRIDS)
    scores = torch.rand(cells * CLASSES, generator=g) * 0.1  # all <= 0.1: never above score_thr
    chosen = torch.randperm(cells * CLASSES, generator=g)[:num_above]
    # A crowded, early-training-like head: scores within (0.1, 0.5], so maskness reorders them.
    scores[chosen] = 0.1 + 0.4 * torch.rand(num_above, generator=g).clamp(min=1e-4)
    feats = torch.randn(EMBED, H, W, generator=g)
    feats[0] = 1.0  # a constant channel: the kernel's first weight is the mask logit's bias
    # Kernel scales from 0.05 (logits near the bias: maskness near 0.5) to 2 (saturated: near 1).
    kernels = torch.randn(cells, EMBED, generator=g) * torch.empty(cells, 1).uniform_(0.05, 2.0, generator=g)
    kernels[:, 0] = torch.empty(cells).uniform_(-3.0, 1.0, generator=g)
    strides = torch.cat([torch.full((s * s,), float(st)) for s, st in zip(GRIDS, STRIDES)])
    return scores.view(cells, CLASSES), kernels, feats, strides


def assert_same_instances(got: tuple, ref: tuple) -> None:
    masks, labels, scores = got[:3]
    ref_masks, ref_labels, ref_scores = ref
    assert len(scores) == len(ref_scores) > 0
    assert torch.equal(labels, ref_labels)
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=1e-5)
    torch.testing.assert_close(masks, ref_masks, rtol=0, atol=1e-5)
    assert torch.equal(masks > 0.5, ref_masks > 0.5)


def _static_instances(out: tuple, i: int = 0) -> tuple:
    masks, labels, scores = out[0][i], out[1][i], out[2][i]
    keep = scores > 0
    return masks[keep], labels[keep], scores[keep]


@pytest.mark.parametrize("num_above", [100, 500, 1500, 5000])
def test_exact_order_returns_the_reference_instances(num_above):
    scores, kernels, feats, strides = synthetic_head(num_above)
    cfg = SOLOv2TestConfig(max_per_img=500)  # every instance Matrix NMS keeps is compared, not only the top 100
    assert int((scores > cfg.score_thr).sum()) == num_above
    ref = select_reference(scores, kernels, feats, strides, cfg)
    for chunk, pad in ((64, None), (256, None), (100, 64), (256, 64)):  # pad 64: the accelerator's chunk shapes
        *got, exact = select_exact(scores, kernels, feats, strides, cfg, chunk=chunk, pad=pad)
        assert exact
        assert_same_instances(got, ref)
    if num_above > cfg.nms_pre:
        # The order that takes the top nms_pre by category score alone (the static graph with no extra
        # budget) picks other candidates here, so the comparison above can tell the orders apart.
        bounded = select_static(scores[None], kernels[None], feats[None], strides, cfg, pre_budget=cfg.nms_pre)
        b_masks, b_labels, b_scores = _static_instances(bounded)
        assert len(b_scores) != len(ref[2]) or not torch.allclose(b_scores, ref[2], atol=1e-5)


@pytest.mark.parametrize("num_above", [100, 500, 1500, 5000])
def test_static_budget_flag_proves_exactness(num_above):
    scores, kernels, feats, strides = synthetic_head(num_above, seed=1)
    cfg = SOLOv2TestConfig(max_per_img=500)
    ref = select_reference(scores, kernels, feats, strides, cfg)
    flags = {}
    for budget in (500, 1000, 2000, scores.numel()):
        out = select_static(scores[None], kernels[None], feats[None], strides, cfg, pre_budget=budget,
                            return_exact=True)
        flags[budget] = bool(out[3][0])
        if flags[budget]:
            assert_same_instances(_static_instances(out), ref)
    assert flags[scores.numel()]  # every pair in the budget
    if num_above <= 500:
        assert all(flags.values())  # every pair above score_thr fits the smallest budget
    else:
        assert not flags[500]  # nms_pre pairs by category score: the bound cannot prove them


def test_exact_limit_stops_and_says_so():
    scores, kernels, feats, strides = synthetic_head(5000, seed=2)
    cfg = SOLOv2TestConfig(exact_limit=640, max_per_img=500)
    *got, exact = select_exact(scores, kernels, feats, strides, cfg)
    assert not exact
    # What it returns is the static budget's selection with the same number of pairs.
    static = select_static(scores[None], kernels[None], feats[None], strides, cfg, pre_budget=640)
    assert_same_instances(got, _static_instances(static))
    *_, exact = select_exact(scores, kernels, feats, strides, SOLOv2TestConfig(exact_limit=None))
    assert exact


def test_no_pair_above_threshold():
    scores, kernels, feats, strides = synthetic_head(0)
    masks, labels, out_scores, exact = select_exact(scores, kernels, feats, strides, SOLOv2TestConfig())
    assert exact and masks.shape == (0, H, W) and labels.numel() == 0 and out_scores.numel() == 0


@pytest.mark.parametrize("num_above", [300, 1500])
def test_exact_order_breaks_ties_as_the_reference(num_above):
    """Equal final scores in quantity: a head whose kernels repeat (identical masks and maskness) and whose
    category scores take a few values. The reference's stable sorts order ties by mmdet's candidate order
    (cell-major, class-minor); the exact order must return the same instances in the same order."""
    scores, kernels, feats, strides = synthetic_head(num_above, seed=3)
    above = scores > 0.1
    scores[above] = 0.1 + 0.1 * torch.randint(1, 4, (int(above.sum()),), generator=torch.Generator().manual_seed(4))
    kernels = kernels[torch.arange(kernels.shape[0]) % 7]  # 7 distinct masks, each repeated across the cells
    cfg = SOLOv2TestConfig(max_per_img=500)
    ref = select_reference(scores, kernels, feats, strides, cfg)
    for chunk, pad in ((64, None), (256, 64)):
        *got, exact = select_exact(scores, kernels, feats, strides, cfg, chunk=chunk, pad=pad)
        assert exact
        assert torch.equal(got[1], ref[1]) and torch.equal(got[2], ref[2]) and torch.equal(got[0], ref[0])


def test_maskness_of_the_int8_path_equals_the_float_path():
    """select_exact's CPU path (0/1 masks kept as int8, areas and maskness made block by block) gives the
    float path's areas and maskness bit for bit, and the same masks."""
    from solo_npu.models.solov2.postprocess import _masks_and_maskness

    g = torch.Generator().manual_seed(3)
    logits = 4 * torch.randn(70, 40 * 52, generator=g)  # 70 masks: two full blocks of 32 and a partial one
    logits[5] = -10.0  # an empty mask: area 0
    by_float = _masks_and_maskness(logits.clone(), (40, 52), 0.5, torch.float32)
    by_int8 = _masks_and_maskness(logits.clone(), (40, 52), 0.5, torch.int8)
    assert by_int8[1].dtype == torch.int8
    assert torch.equal(by_int8[0], by_float[0])
    assert torch.equal(by_int8[1].float(), by_float[1])
    assert torch.equal(by_int8[2], by_float[2]) and by_float[2][5] == 0
    assert torch.equal(by_int8[3], by_float[3])


@pytest.mark.parametrize("mask_thr", [0.5, 0.4])
def test_masks_areas_and_maskness_are_mmdets(mask_thr):
    """Against mmdet's arithmetic written out in float64 (solov2_head.py: ``masks = probs > mask_thr``,
    ``sum_masks = masks.sum``, ``maskness = (probs * masks).sum / sum_masks``): the same masks and areas
    exactly (probabilities at the threshold included), and maskness within 1e-6 of mmdet's value in float64 on
    masks of 19200 pixels (a float32 dot product over the mask, the former sum, was 6e-6 off here)."""
    from solo_npu.models.solov2.postprocess import _masks_and_maskness

    g = torch.Generator().manual_seed(5)
    logits = 3 * torch.randn(40, 120 * 160, generator=g)
    logits[3] = -12.0  # empty
    logits[4, :100] = float(torch.logit(torch.tensor(mask_thr)))  # at (or a rounding off) the threshold
    logits[7] = 12.0  # full
    probs = logits.float().sigmoid()
    masks = probs > mask_thr
    area = masks.sum(-1).double()
    maskness = (probs.double() * masks).sum(-1) / area.clamp(min=1)
    for dtype in (torch.float32, torch.int8):
        got = _masks_and_maskness(logits.clone(), (120, 160), mask_thr, dtype)
        assert torch.equal(got[0].flatten(-2), probs)
        assert torch.equal(got[1].flatten(-2).bool(), masks)
        assert torch.equal(got[2].double(), area) and got[2][3] == 0 and got[2][7] == 120 * 160
        assert (got[3].double() - maskness).abs().max() < 1e-6, (got[3].double() - maskness).abs().max()
