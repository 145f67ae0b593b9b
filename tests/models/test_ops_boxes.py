"""IoU, greedy / batched / multi-class NMS and Fast NMS against naive reference implementations."""

from __future__ import annotations

import pytest
import torch

from solo_npu.models.ops import batched_nms, box_iou, fast_nms, multiclass_nms, nms


def random_boxes(n: int, seed: int, size: float = 100.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 3 + 1
    return torch.cat([xy, xy + wh], dim=1)


def naive_iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def naive_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep: list[int] = []
    for i in order:
        if all(naive_iou(boxes[i].tolist(), boxes[j].tolist()) <= thr for j in keep):
            keep.append(i)
    return keep


def test_box_iou_matches_naive() -> None:
    a, b = random_boxes(7, 0), random_boxes(5, 1)
    iou = box_iou(a, b)
    expected = torch.tensor([[naive_iou(x.tolist(), y.tolist()) for y in b] for x in a])
    torch.testing.assert_close(iou, expected, rtol=1e-5, atol=1e-6)
    assert iou.shape == (7, 5)
    torch.testing.assert_close(box_iou(a, a).diagonal(), torch.ones(7))


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_matches_naive_greedy(thr: float) -> None:
    boxes = random_boxes(60, 2)
    scores = torch.rand(60, generator=torch.Generator().manual_seed(3))
    assert nms(boxes, scores, thr).tolist() == naive_nms(boxes, scores, thr)


def test_nms_suppresses_overlaps_and_keeps_disjoint() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.95, 0.5])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes[:0], scores[:0], 0.5).numel() == 0
    half = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 20]], dtype=torch.float32)  # IoU exactly 0.5
    assert nms(half, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0, 1]
    assert nms(half, torch.tensor([0.9, 0.8]), 0.5, inclusive=True).tolist() == [0]


def test_batched_nms_is_per_category() -> None:
    boxes = random_boxes(40, 4)
    scores = torch.rand(40, generator=torch.Generator().manual_seed(5))
    idxs = torch.randint(0, 3, (40,), generator=torch.Generator().manual_seed(6))
    keep = batched_nms(boxes, scores, idxs, 0.4)
    expected = []
    for c in range(3):
        members = torch.nonzero(idxs == c).squeeze(1)
        expected += [int(members[i]) for i in naive_nms(boxes[members], scores[members], 0.4)]
    assert sorted(keep.tolist()) == sorted(expected)
    assert torch.all(scores[keep][:-1] >= scores[keep][1:])  # sorted by score


def test_multiclass_nms_matches_naive_mmdet_order() -> None:
    g = torch.Generator().manual_seed(7)
    boxes = random_boxes(30, 8)
    scores = torch.rand(30, 4, generator=g) * 0.5
    factors = torch.rand(30, generator=g)
    out_boxes, out_scores, out_labels = multiclass_nms(boxes, scores, 0.2, 0.5, max_num=12, score_factors=factors)
    ref = []
    for c in range(4):
        cand = [i for i in range(30) if scores[i, c] > 0.2]  # threshold on the raw class score
        s = torch.stack([scores[i, c] * factors[i] for i in cand])
        ref += [(float(s[k]), c, cand[k]) for k in naive_nms(boxes[cand], s, 0.5)]
    ref = sorted(ref, key=lambda t: -t[0])[:12]
    torch.testing.assert_close(out_scores, torch.tensor([r[0] for r in ref]))
    assert out_labels.tolist() == [r[1] for r in ref]
    torch.testing.assert_close(out_boxes, boxes[[r[2] for r in ref]])


def test_multiclass_nms_max_per_class_keeps_best_per_class() -> None:
    boxes = torch.tensor([[i * 20.0, 0, i * 20.0 + 10, 10] for i in range(6)])  # disjoint
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.7, 0.6], [0.6, 0.9], [0.5, 0.2], [0.4, 0.3]])
    _, s, labels = multiclass_nms(boxes, scores, 0.05, 0.5, max_num=100, max_per_class=2)
    got = sorted((lab, round(score, 4)) for lab, score in zip(labels.tolist(), s.tolist()))
    assert got == [(0, 0.8), (0, 0.9), (1, 0.7), (1, 0.9)]


def naive_fast_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float, top_k: int, max_num: int):
    """YOLACT's Detect.fast_nms written with loops (no second threshold)."""
    dets = []
    for c in range(scores.shape[0]):
        order = sorted(range(scores.shape[1]), key=lambda i: -float(scores[c, i]))[:top_k]
        for rank, i in enumerate(order):
            if float(scores[c, i]) <= 0:
                continue
            iou_max = max([naive_iou(boxes[order[r]].tolist(), boxes[i].tolist()) for r in range(rank)], default=0.0)
            if iou_max <= thr:
                dets.append((float(scores[c, i]), c, i))
    return sorted(dets, key=lambda t: -t[0])[:max_num]


def test_fast_nms_matches_naive_and_pads() -> None:
    boxes = random_boxes(25, 9, size=40)
    scores = torch.rand(3, 25, generator=torch.Generator().manual_seed(10))
    scores[:, 20:] = 0  # invalid candidates
    out_boxes, out_scores, labels, index = fast_nms(boxes, scores, 0.5, top_k=10, max_num=50)
    ref = naive_fast_nms(boxes, scores, 0.5, 10, 50)
    valid = out_scores > 0
    assert int(valid.sum()) == len(ref)
    torch.testing.assert_close(out_scores[valid], torch.tensor([r[0] for r in ref]))
    assert labels[valid].tolist() == [r[1] for r in ref]
    assert index[valid].tolist() == [r[2] for r in ref]
    torch.testing.assert_close(out_boxes[valid], boxes[index[valid]])
    assert out_boxes.shape == (50, 4) and out_scores.shape == (50,)  # fixed size, padded


def test_fast_nms_batched_equals_per_image() -> None:
    boxes = torch.stack([random_boxes(30, s, size=50) for s in (11, 12)])
    scores = torch.rand(2, 4, 30, generator=torch.Generator().manual_seed(13))
    batched = fast_nms(boxes, scores, 0.5, top_k=8, max_num=20)
    for b in range(2):
        single = fast_nms(boxes[b], scores[b], 0.5, top_k=8, max_num=20)
        for x, y in zip(batched, single):
            torch.testing.assert_close(x[b], y)
