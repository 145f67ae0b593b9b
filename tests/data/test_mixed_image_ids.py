"""One annotation file may mix int and str image ids: pycocotools indexes any hashable id and never sorts them
(cocoapi PythonAPI/pycocotools/coco.py, ``getImgIds``), and the evaluator already accepts such files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from solo_npu.data import CocoInstanceDataset


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
