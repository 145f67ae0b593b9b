"""One annotation file may mix int and str image ids: pycocotools indexes any hashable id and never sorts them
(cocoapi PythonAPI/pycocotools/coco.py, ``getImgIds``); COCOeval does sort them, so the evaluator scores such a
file under int ids it gives the images."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from solo_npu.data import CocoInstanceDataset
from solo_npu.evaluation.coco_eval import evaluate_coco


def test_dataset_reads_a_file_with_int_and_str_image_ids(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    images, anns = [], []
    for k, image_id in enumerate([7, "cam2_0001", 3]):
        name = f"{k}.png"
        cv2.imwrite(str(tmp_path / "img" / name), np.full((40, 50, 3), 60 * k, np.uint8))
        images.append({"id": image_id, "file_name": name, "height": 40, "width": 50})
        anns.append({"id": k + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0, "area": 100.0,
                     "bbox": [5, 5, 10, 10], "segmentation": [[5, 5, 15, 5, 15, 15, 5, 15]]})
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}))
    dataset = CocoInstanceDataset(path, tmp_path / "img", train=False, with_masks=False)
    assert dataset.image_ids == [3, 7, "cam2_0001"]  # ints first, then strs, each ascending
    assert [dataset[i]["meta"]["image_id"] for i in range(3)] == [3, 7, "cam2_0001"]


def _case(ids: list[Any]) -> tuple[COCO, list[dict[str, Any]]]:
    """Three 40x50 images with one object each; the first image's prediction hits it, the second's misses, the
    third has none."""
    images, anns, results = [], [], []
    for k, image_id in enumerate(ids):
        images.append({"id": image_id, "file_name": f"{k}.png", "height": 40, "width": 50})
        anns.append({"id": k + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                     "segmentation": [[5.0, 5.0, 15.0, 5.0, 15.0, 15.0, 5.0, 15.0]], "area": 100.0,
                     "bbox": [5.0, 5.0, 10.0, 10.0]})
    for k, (x, score) in enumerate([(5, 0.9), (30, 0.8)]):
        mask = np.zeros((40, 50), np.uint8, order="F")
        mask[5:15, x:x + 10] = 1
        rle = mask_utils.encode(mask)
        rle["counts"] = rle["counts"].decode()
        results.append({"image_id": ids[k], "category_id": 1, "score": score, "segmentation": rle,
                        "bbox": [float(x), 5.0, 10.0, 10.0]})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, results


def test_evaluation_scores_a_file_with_int_and_str_image_ids_as_the_same_file_with_int_ids() -> None:
    # pycocotools' COCOeval sorts the image ids in __init__ (cocoeval.py: sorted(cocoGt.getImgIds())), a TypeError
    # for int and str, so the reference scores are those of the same file with every id an int.
    mixed = evaluate_coco(*_case(["cam2_0001", 7, 3]))
    ints = evaluate_coco(*_case([100, 7, 3]))
    assert mixed == ints
    # one hit, one miss at a lower score, one object without a prediction: recall reaches 1/3 at precision 1
    assert 0.3 < mixed["segm"]["AP"] < 0.35
    # restricted to one image, each image keeps its own predictions
    assert evaluate_coco(*_case(["cam2_0001", 7, 3]), img_ids=["cam2_0001"])["segm"]["AP"] == pytest.approx(1.0)
    assert evaluate_coco(*_case(["cam2_0001", 7, 3]), img_ids=[7])["segm"]["AP"] == 0.0
