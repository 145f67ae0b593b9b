"""COCO files as exporters write them, checked before pycocotools reads them: RLE runs that do not cover the mask
(pycocotools' decode trusts them), image ids given to two images, entries without the keys reading needs, annotation
ids COCOeval cannot score, and boxes that are not four numbers."""

from __future__ import annotations

import contextlib
import io
import json
import logging

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval
from test_coco_filters import _image, _square, _write_coco

from solo_npu.data import AnnotationFileError
from solo_npu.data.coco import CocoInstanceDataset, load_clean_coco, rle_runs_fill, rle_string_counts


def _runs(mask: np.ndarray) -> list[int]:
    """Run lengths of a mask read column by column, zeros first (the COCO RLE definition), by plain counting."""
    runs, current, n = [], 0, 0
    for v in mask.flatten(order="F"):
        if v != current:
            runs.append(n)
            current, n = v, 0
        n += 1
    return [*runs, n]


def test_compressed_rle_strings_decode_to_pycocotools_runs():
    rng = np.random.default_rng(0)
    for _ in range(100):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        counts = mask_utils.encode(np.asfortranarray(mask))["counts"].decode()
        assert rle_string_counts(counts) == _runs(mask)
        assert rle_runs_fill(counts, h, w) and not rle_runs_fill(counts, h, w + 1)
    assert rle_string_counts("0") == [0] and rle_string_counts("a") is None  # 'a' - 48 = 49: a group that goes on


@pytest.mark.parametrize("counts", [[100, 50, 20], [100, 5000, 3000], [100, -20, 5000], "Q1"])
def test_rle_whose_runs_do_not_cover_the_image_is_a_counted_degenerate_segmentation(tmp_path, counts):
    """pycocotools' decode of runs that end early leaves the rest of its buffer as allocated (a different garbage
    mask at every read); runs that go past raise "Invalid RLE mask representation" in a loader worker."""
    good = _square(1, 1, 10, 10, 20)
    bad = {**_square(2, 1, 50, 50, 20), "segmentation": {"counts": counts, "size": [100, 100]}}
    ann_file, img_dir = _write_coco(tmp_path, [_image(1)], [good, bad])
    ds = CocoInstanceDataset(ann_file, img_dir, train=True)
    assert ds.fault_counts()["degenerate_segmentation"] == 1
    assert [a["id"] for a in ds.records[0]["anns"]] == [1]  # the good one; the bad one never decoded


def test_a_self_crossing_polygon_of_zero_signed_area_is_drawn_as_pycocotools_draws_it(tmp_path):
    """mmdet's ``poly2mask`` (mmdet/datasets/pipelines/loading.py: ``frPyObjects`` + ``merge``, no area filter)
    draws a bowtie whose two triangles cancel in the signed area; a polygon on one line draws nothing."""
    bowtie = [10.0, 10.0, 30.0, 30.0, 30.0, 10.0, 10.0, 30.0]
    line = [10.0, 10.0, 20.0, 20.0, 30.0, 30.0]
    drawn = [float(mask_utils.area(mask_utils.frPyObjects([p], 100, 100))[0]) for p in (bowtie, line)]
    assert drawn[0] > 100 and drawn[1] == 0  # the reference's rasterisation
    anns = [{**_square(1, 1, 10, 10, 20), "segmentation": [bowtie]},
            {**_square(2, 1, 50, 50, 20), "segmentation": [line]},
            {**_square(3, 1, 60, 10, 20), "segmentation": [line, bowtie]}]
    ann_file, img_dir = _write_coco(tmp_path, [_image(1)], anns)
    ds = CocoInstanceDataset(ann_file, img_dir, train=True)
    assert ds.fault_counts()["degenerate_segmentation"] == 1  # the line alone
    kept = {a["id"]: a["seg"] for a in ds.records[0]["anns"]}
    assert kept == {1: [bowtie], 3: [bowtie]}


def test_two_images_with_one_id_are_refused_and_a_repeated_entry_dropped(tmp_path):
    images = [_image(1), {**_image(1), "file_name": "other.png"}]
    ann_file, _ = _write_coco(tmp_path, images, [_square(1, 1, 10, 10, 20)])
    with pytest.raises(AnnotationFileError, match=r"image id 1 names both 1\.png and other\.png"):
        load_clean_coco(ann_file)
    ann_file.write_text(json.dumps({"images": [_image(1), _image(1)], "annotations": [_square(1, 1, 10, 10, 20)],
                                    "categories": [{"id": 1, "name": "a"}]}))
    assert len(load_clean_coco(ann_file)[0].dataset["images"]) == 1


@pytest.mark.parametrize("change, message", [
    (lambda d: d["images"][0].pop("height"), r"image 0 has no height"),
    (lambda d: d["images"][0].update(width="100"), r"has height 100 and width '100': they must be positive"),
    (lambda d: d["annotations"][0].pop("category_id"), r"annotation 0 \(id 1\) has no category_id"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3], segmentation=[]), r"has the bbox \[1, 2, 3\] \(not 4 "
                                                                             r"numbers\) and no mask"),
])
def test_entries_reading_cannot_use_are_one_line(tmp_path, change, message):
    ann_file, _ = _write_coco(tmp_path, [_image(1)], [_square(1, 1, 10, 10, 20)])
    data = json.loads(ann_file.read_text())
    change(data)
    ann_file.write_text(json.dumps(data))
    with pytest.raises(AnnotationFileError, match=message):
        load_clean_coco(ann_file)


def test_a_box_that_is_not_four_numbers_is_taken_from_the_mask(tmp_path):
    ann_file, _ = _write_coco(tmp_path, [_image(1)], [{**_square(1, 1, 10, 20, 30), "bbox": [10, 20, 30]}])
    assert load_clean_coco(ann_file)[0].anns[1]["bbox"] == [10.0, 20.0, 30.0, 30.0]


def test_annotation_ids_cocoeval_cannot_score_get_new_ones(tmp_path, caplog):
    """COCOeval counts a match to a ground truth of id 0 as a false positive (cocoeval.py accumulate:
    ``tps = np.logical_and(dtm, np.logical_not(dtIg))``, dtm holding the matched id) and cannot store a string id:
    a perfect detector scores AP 1 on the renumbered file."""
    anns = [_square(0, 1, 10, 10, 30), _square("x", 1, 50, 50, 30)]
    ann_file, _ = _write_coco(tmp_path, [_image(1)], anns)
    with caplog.at_level(logging.WARNING):
        coco = load_clean_coco(ann_file)[0]
    assert sorted(coco.anns) == [1, 2] and "2 annotation id(s) that COCOeval cannot score" in caplog.text
    dets = [{"image_id": 1, "category_id": 1, "bbox": a["bbox"], "score": 0.9} for a in anns]
    assert _score_boxes(coco, dets) == pytest.approx(1.0)


def _score_boxes(coco, dets) -> float:
    """pycocotools' bbox AP of ``dets`` against ``coco``."""
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def test_file_names_that_hold_their_folder_get_a_hint(tmp_path):
    """Some converters write ``file_name`` "val2017/1.png"; with img_dir the val2017 folder itself, nothing is
    found there, and the message names the folder above it."""
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    image = {**_image(1), "file_name": "val2017/1.png"}
    ann_file, _ = _write_coco(tmp_path, [], [])
    ann_file.write_text(json.dumps({"images": [image], "annotations": [_square(1, 1, 10, 10, 20)],
                                    "categories": [{"id": 1, "name": "a"}]}))
    cv2.imwrite(str(root / "val2017" / "1.png"), np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ValueError, match=rf"the file names hold a folder \(val2017/\), and val2017/1\.png is under "
                                         rf"{root}: point the split's img_dir there"):
        CocoInstanceDataset(ann_file, root / "val2017", train=True)
    assert len(CocoInstanceDataset(ann_file, root, train=True)) == 1
