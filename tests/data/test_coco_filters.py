"""What training takes from a COCO file, as mmdet's CocoDataset takes it: which annotations and images it keeps
(mmdet/datasets/coco.py), and the order of the instances it keeps."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from solo_npu.data.coco import CocoInstanceDataset


def _write_coco(tmp_path: Path, images: list[dict], annotations: list[dict],
                categories: tuple[dict, ...] = ({"id": 1, "name": "a"}, {"id": 2, "name": "b"})) -> tuple[Path, Path]:
    """A COCO annotation file and black PNGs of the images' sizes under ``tmp_path``."""
    img_dir = tmp_path / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    for im in images:
        cv2.imwrite(str(img_dir / im["file_name"]), np.zeros((im["height"], im["width"], 3), np.uint8))
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": list(categories)}))
    return ann_file, img_dir


def _image(image_id: int, height: int = 100, width: int = 100) -> dict:
    return {"id": image_id, "file_name": f"{image_id}.png", "height": height, "width": width}


def _square(ann_id: int, image_id: int, x: float, y: float, side: float, category_id: int = 1, **extra) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": 0, "area": float(side * side),
            "bbox": [x, y, side, side], "segmentation": [[x, y, x + side, y, x + side, y + side, x, y + side]],
            **extra}


def test_truncation_keeps_the_largest_instances_in_annotation_order(tmp_path):
    """max_instances keeps the largest instances, in their annotation order. mmdet keeps every instance in
    annotation order, and its SOLOv2 targets (SOLOV2Head._get_targets_single, mmdet/models/dense_heads/
    solov2_head.py: ``labels[top:(down + 1), left:(right + 1)] = gt_label`` instance after instance) give a cell
    that two instances share to the later one. Leaving out a far-away tiny instance (max_instances 3 -> 2) must not
    change the label of the cell that a small class-a square and a large class-b square around it share."""
    import torch

    from solo_npu.data.collate import FixedShapeCollate
    from solo_npu.models.solov2.targets import build_solov2_targets

    anns = [_square(1, 1, 40, 40, 10, category_id=1), _square(2, 1, 30, 30, 30, category_id=2),
            _square(3, 1, 0, 0, 5, category_id=1)]
    ann_file, img_dir = _write_coco(tmp_path, [_image(1)], anns)
    cell = 14 * 40 + 14  # both centres (45, 45) on the 128x128 canvas: row and column 14 of level 0's 40x40 grid
    for limit in (3, 2):
        ds = CocoInstanceDataset(ann_file, img_dir, train=True, max_instances=limit)
        assert [a["id"] for a in ds.records[0]["anns"]] == [1, 2, 3][:limit]
        sample = ds[(0, 0)]
        assert sample["labels"].tolist() == [0, 1, 0][:limit]
        sample["image"] = torch.zeros(3, 100, 100)  # no transforms: only the ground truth matters here
        batch = FixedShapeCollate(max_instances=limit)([sample])
        targets = build_solov2_targets(batch["gt_masks"], batch["gt_labels"], batch["gt_boxes"], batch["gt_valid"],
                                       [40, 36, 24, 16, 12], ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048)))
        assert int(targets.labels[0, cell]) == 1, limit  # the class-b square, annotated after the class-a one


def test_annotation_filters_follow_mmdet(tmp_path, caplog):
    """The annotations training uses are those of mmdet's CocoDataset._parse_ann_info (2.x; parse_data_info in
    3.x, mmdet/datasets/coco.py): a box that overlaps the image by any amount is kept (``inter_w * inter_h == 0``
    skips it, with ``inter_w = max(0, min(x1 + w, img_w) - max(x1, 0))``), one under 1 px wide or high before
    clipping is left out (``w < 1 or h < 1``), and so is one whose given area is 0 (``ann['area'] <= 0``). Each
    left-out annotation is counted and logged by kind."""
    anns = [
        _square(1, 1, 10, 10, 30, area=0.0),  # area 0: left out
        {**_square(2, 1, -9.5, 40, 10), "bbox": [-9.5, 40, 10, 20], "area": 10.0,
         "segmentation": [[-9.5, 40, 0.5, 40, 0.5, 60, -9.5, 60]]},  # 0.5 px inside: kept
        {**_square(3, 1, 99.5, 10, 10), "area": 5.0},  # 0.5 px inside on the right: kept
        {**_square(4, 1, 60, 60, 20), "bbox": [60, 60, 0.5, 20]},  # inside, 0.5 px wide: left out
        _square(5, 1, 120, 10, 10),  # outside: left out
        _square(6, 1, 60, 60, 20),  # kept
        {k: v for k, v in _square(7, 1, 70, 10, 8).items() if k != "area"},  # no area: kept, area from the box
    ]
    ann_file, img_dir = _write_coco(tmp_path, [_image(1)], anns)
    with caplog.at_level(logging.WARNING, logger="solo_npu.data"):
        ds = CocoInstanceDataset(ann_file, img_dir, train=True)
    kept = ds.records[0]["anns"]
    assert [a["id"] for a in kept] == [2, 3, 6, 7]
    assert [a["box"] for a in kept] == [(0.0, 40.0, 0.5, 60.0), (99.5, 10.0, 100.0, 20.0), (60.0, 60.0, 80.0, 80.0),
                                        (70.0, 10.0, 78.0, 18.0)]
    assert [a["area"] for a in kept] == [10.0, 5.0, 400.0, 64.0]
    counts = ds.fault_counts()
    assert (counts["zero_area"], counts["degenerate_box"], counts["box_outside_image"]) == (1, 1, 1)
    logs = [r.getMessage() for r in caplog.records]
    for kind in ("zero_area", "degenerate_box", "box_outside_image"):
        assert [m for m in logs if m.startswith(f"{kind}: 1 (handled) in ")], kind


def test_image_filters_follow_mmdet(tmp_path, caplog):
    """The images training uses are those of mmdet's filter (CocoDataset.filter_data in 3.x, _filter_imgs in 2.x,
    mmdet/datasets/coco.py, with configs/_base_/datasets/coco_instance.py's ``filter_cfg=dict(filter_empty_gt=True,
    min_size=32)``): an image with an annotation of the classes stays, even when none of its annotations is usable
    (a degenerate polygon, area 0, a mask that decodes empty): it trains as a negative, as mmdet trains it (its
    SOLOv2 targets skip an empty mask: ``if not valid_mask_flag: continue``). An image with no annotation of the
    classes is skipped, and so is one whose shorter side is under 32 px. Evaluation keeps every image (mmdet's
    test_mode does not filter)."""
    anns = [
        _square(1, 1, 10, 10, 20),
        {**_square(2, 2, 10, 10, 20), "segmentation": [[10, 10, 20, 20, 30, 30]]},  # degenerate polygon only
        {**_square(3, 3, 10, 10, 20), "segmentation": [[200, 10, 210, 10, 210, 20, 200, 20]]},  # decodes empty
        _square(4, 4, 10, 10, 20, area=0.0),  # area 0 only
        _square(5, 5, 2, 2, 10),  # a 20x24 image
        _square(7, 7, 2, 2, 10),  # a 32x200 image: kept
        _square(8, 8, 2, 2, 10),  # a 200x31 image
    ]
    images = [_image(1, 64, 80), _image(2, 64, 80), _image(3, 64, 80), _image(4, 64, 80), _image(5, 20, 24),
              _image(6, 64, 80), _image(7, 32, 200), _image(8, 200, 31)]
    ann_file, img_dir = _write_coco(tmp_path, images, anns)
    with caplog.at_level(logging.WARNING, logger="solo_npu.data"):
        ds = CocoInstanceDataset(ann_file, img_dir, train=True)
    assert ds.image_ids == [1, 2, 3, 4, 7]
    counts = ds.fault_counts()
    assert (counts["empty_image"], counts["small_image"]) == (1, 2)  # image 6; images 5 and 8
    assert (counts["degenerate_segmentation"], counts["zero_area"]) == (1, 1)
    logs = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("small_image: 2 (skipped) in ") and "5.png, 8.png" in m for m in logs)
    assert any(m.startswith("empty_image: 1 (skipped) in ") and "6.png" in m for m in logs)
    for index, image_id in enumerate(ds.image_ids):
        sample = ds[(index, 0)]
        assert sample["meta"]["image_id"] == image_id and sample["meta"]["image_ok"]
        assert len(sample["labels"]) == (0 if image_id in (2, 3, 4) else 1)
        assert sample["masks"].shape == (len(sample["labels"]), *sample["image"].shape[:2])
    assert ds.fault_counts()["empty_mask"] == 1  # image 3: its instance left out, the image kept
    assert any(m.startswith("empty_mask: 3.png (") and "skipped" not in m for m in
               [r.getMessage() for r in caplog.records])

    evaluation = CocoInstanceDataset(ann_file, img_dir, train=False)
    assert evaluation.image_ids == [1, 2, 3, 4, 5, 6, 7, 8]
    assert evaluation.fault_counts()["small_image"] == 0 and evaluation.fault_counts()["empty_image"] == 1


def test_training_set_without_any_instance_is_one_line(tmp_path):
    """Images kept as negatives do not make a training set: one whose images hold no usable instance at all (every
    annotation degenerate) stops with the one line, as one with no annotation does."""
    anns = [{**_square(1, 1, 10, 10, 20), "segmentation": [[10, 10, 20, 20, 30, 30]]},
            _square(2, 2, 10, 10, 20, area=0.0)]
    ann_file, img_dir = _write_coco(tmp_path, [_image(1), _image(2)], anns)
    with pytest.raises(ValueError, match=r"no usable training image in .*img: .*'degenerate_segmentation': 1.*"
                                         r"'zero_area': 1"):
        CocoInstanceDataset(ann_file, img_dir, train=True)
    assert len(CocoInstanceDataset(ann_file, img_dir, train=False)) == 2
