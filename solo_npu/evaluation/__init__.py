"""Evaluation: predictions -> COCO json (RLE), COCOeval segm/bbox, distributed gathering."""

from solo_npu.evaluation.coco_eval import (
    METRIC_NAMES,
    CocoEvaluator,
    evaluate_coco,
    load_coco,
    results_to_coco,
    score_types,
)

__all__ = ["METRIC_NAMES", "CocoEvaluator", "evaluate_coco", "load_coco", "results_to_coco", "score_types"]
