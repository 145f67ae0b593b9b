"""Annotations marked ``"ignore": true``: training leaves them out as mmdet's CocoDataset does (2.x
``_parse_ann_info`` and 3.x ``parse_data_info``, mmdet/datasets/coco.py: ``if ann.get('ignore', False): continue``,
before any other check); evaluation scores them as pycocotools does (COCOeval._prepare, cocoeval.py, replaces the
flag with ``iscrowd``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from solo_npu.data.coco import CocoInstanceDataset
from solo_npu.evaluation.coco_eval import evaluate_coco


def _square(ann_id: int, image_id: int, x: float, side: float = 20, category_id: int = 1, **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": 0, "area": float(side * side),
            "bbox": [x, x, side, side], "segmentation": [[x, x, x + side, x, x + side, x + side, x, x + side]],
            **extra}


def _write(tmp_path: Path, annotations: list[dict], images: int = 2) -> tuple[Path, Path]:
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    infos = []
    for i in range(1, images + 1):
        cv2.imwrite(str(img_dir / f"{i}.png"), np.zeros((100, 100, 3), np.uint8))
        infos.append({"id": i, "file_name": f"{i}.png", "height": 100, "width": 100})
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps({"images": infos, "annotations": annotations,
                                    "categories": [{"id": 1, "name": "a"}]}))
    return ann_file, img_dir


def test_training_leaves_out_ignored_annotations(tmp_path, caplog):
    """Image 1: an ordinary instance, one marked ignore, one marked ignore of a category the file does not have
    (mmdet skips it before its category check: not a bad_category fault) and an ignored crowd region. Image 2:
    only an ignored instance: it stays as a negative (mmdet's filter keeps it, cat_img_map lists the annotation).
    The three ignored annotations are counted and logged once."""
    anns = [_square(1, 1, 10), _square(2, 1, 50, ignore=True), _square(3, 1, 30, category_id=7, ignore=1),
            _square(4, 1, 5, iscrowd=1, ignore=True), _square(5, 2, 40, ignore=True)]
    ann_file, img_dir = _write(tmp_path, anns)
    with caplog.at_level(logging.INFO, logger="solo_npu.data"):
        ds = CocoInstanceDataset(ann_file, img_dir, train=True)
    assert ds.image_ids == [1, 2]
    assert [[a["id"] for a in r["anns"]] for r in ds.records] == [[1], []]
    assert ds.ignored_annotations == 4
    assert ds.fault_counts()["bad_category"] == 0
    sample = ds[(0, 0)]
    assert sample["labels"].tolist() == [0] and sample["masks"].shape == (1, 100, 100)
    assert sample["boxes"].tolist() == [[10.0, 10.0, 30.0, 30.0]]
    assert len(ds[(1, 0)]["labels"]) == 0
    logs = [r.getMessage() for r in caplog.records]
    assert [m for m in logs if '4 annotations marked "ignore": true are not used in training' in m], logs


def test_only_ignored_annotations_is_one_line(tmp_path):
    ann_file, img_dir = _write(tmp_path, [_square(1, 1, 10, ignore=True), _square(2, 2, 10, ignore=True)])
    with pytest.raises(ValueError, match=r'no usable training image in .*; 2 annotations marked "ignore": true are '
                                         r"left out of training$"):
        CocoInstanceDataset(ann_file, img_dir, train=True)


def test_evaluation_scores_ignored_annotations_as_pycocotools(tmp_path):
    """Evaluation keeps the file's ground truth: the evaluation dataset's records and its pycocotools index hold the
    ignored annotation, and COCOeval scores it as an ordinary object (a model that finds only the other one misses
    it), as mmdet's CocoMetric, which evaluates the file with COCOeval, does."""
    anns = [_square(1, 1, 10), _square(2, 1, 50, ignore=True)]
    ann_file, img_dir = _write(tmp_path, anns, images=1)
    train = CocoInstanceDataset(ann_file, img_dir, train=True)
    evaluation = CocoInstanceDataset(ann_file, img_dir, train=False)
    assert [a["id"] for a in train.records[0]["anns"]] == [1]
    assert [a["id"] for a in evaluation.records[0]["anns"]] == [1, 2] and evaluation.ignored_annotations == 0
    assert sorted(train.coco.anns) == sorted(evaluation.coco.anns) == [1, 2]

    def found(*ids):
        return [{"image_id": 1, "category_id": 1, "bbox": anns[i - 1]["bbox"], "score": 0.9} for i in ids]

    both = evaluate_coco(evaluation.coco, found(1, 2), iou_types=("bbox",))["bbox"]
    one = evaluate_coco(evaluation.coco, found(1), iou_types=("bbox",))["bbox"]
    assert both["AP"] == pytest.approx(1.0)
    assert one["AP"] == pytest.approx(0.5, abs=0.01)  # recall 1/2 at precision 1: the ignored object is missed
