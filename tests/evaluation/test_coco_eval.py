"""results_to_coco / evaluate_coco / CocoEvaluator on the synthetic dataset's ground truth."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from solo_npu.data import CocoInstanceDataset
from solo_npu.evaluation import CocoEvaluator, evaluate_coco, load_coco, results_to_coco


def _gt_predictions(coco, cat_to_label, shift: int = 0):
    """Ground truth as model output: one result dict per image, masks optionally shifted right."""
    image_ids, results = [], []
    for img_id in sorted(coco.getImgIds()):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id]))  # a list: pycocotools iterates a str id
        info = coco.imgs[img_id]
        masks = np.stack([coco.annToMask(a) for a in anns]).astype(bool)
        if shift:
            masks = np.roll(masks, shift, axis=2)
        image_ids.append(img_id)
        results.append({"masks": torch.from_numpy(masks), "labels": torch.tensor([cat_to_label[a["category_id"]]
                                                                                   for a in anns]),
                        "scores": torch.linspace(0.9, 0.5, len(anns))})
        assert masks.shape[1:] == (info["height"], info["width"])
    return image_ids, results


@pytest.fixture(scope="module")
def val_gt(synthetic_coco):
    coco = load_coco(synthetic_coco / "annotations" / "instances_val2017.json")
    return coco, {c: i for i, c in enumerate(sorted(coco.getCatIds()))}, sorted(coco.getCatIds())


def test_ground_truth_as_prediction_scores_one(val_gt):
    coco, cat_to_label, label_to_cat = val_gt
    entries = results_to_coco(*_gt_predictions(coco, cat_to_label), label_to_cat)
    assert len(entries) == len(coco.dataset["annotations"])
    assert {e["category_id"] for e in entries} <= {1, 3, 7}
    # boxes derived from the masks equal the annotation boxes
    first = coco.loadAnns(coco.getAnnIds(imgIds=entries[0]["image_id"]))[0]
    np.testing.assert_allclose(entries[0]["bbox"], first["bbox"], atol=0.01)
    summary = evaluate_coco(coco, entries)
    assert summary["segm"]["AP"] == pytest.approx(1.0) and summary["segm"]["AP50"] == pytest.approx(1.0)
    assert summary["bbox"]["AP"] == pytest.approx(1.0)
    assert set(summary["segm"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}


def test_perturbed_prediction_scores_less(val_gt):
    coco, cat_to_label, label_to_cat = val_gt
    shifted = evaluate_coco(coco, results_to_coco(*_gt_predictions(coco, cat_to_label, shift=3), label_to_cat))
    assert 0.0 < shifted["segm"]["AP"] < 0.95 and shifted["segm"]["AP50"] > shifted["segm"]["AP75"]
    ids, results = _gt_predictions(coco, cat_to_label)
    for r in results:  # wrong class everywhere
        r["labels"] = (r["labels"] + 1) % 3
    assert evaluate_coco(coco, results_to_coco(ids, results, label_to_cat), ("segm",))["segm"]["AP"] == 0.0


def _cocoeval_stats(coco, dets, iou_type):
    """pycocotools on its own: COCO.loadRes and COCOeval's six AP stats (-1: undefined)."""
    import contextlib
    import copy
    import io

    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = copy.deepcopy(coco)
        e = COCOeval(gt, gt.loadRes(dets), iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return [float(v) for v in e.stats[:6]]


def test_empty_results_give_zeros_where_there_is_ground_truth(val_gt):
    """No detections: 0 for the metrics with ground truth to miss, undefined (None) where COCOeval says -1 (the
    synthetic set has no object above 96x96: APl). pycocotools cannot load empty results, so its reference is one
    detection of 1 pixel, far from every object, with the lowest score: it changes no AP."""
    coco, _, _ = val_gt
    image = next(iter(coco.imgs.values()))
    junk = {"image_id": image["id"], "category_id": coco.getCatIds()[0], "score": 1e-6, "bbox": [0.0, 0.0, 1.0, 1.0],
            "segmentation": mask_utils.encode(np.asfortranarray(np.pad(np.ones((1, 1), np.uint8),
                                                                      ((0, image["height"] - 1),
                                                                       (0, image["width"] - 1)))))}
    junk["segmentation"]["counts"] = junk["segmentation"]["counts"].decode()
    got = evaluate_coco(coco, [])
    for iou_type in ("segm", "bbox"):
        stats = _cocoeval_stats(coco, [junk], iou_type)
        want = [None if v < 0 else 0.0 for v in stats]
        assert [got[iou_type][k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")] == want, (iou_type, stats)
        assert None in want and 0.0 in want  # both kinds are checked
    # with detections, an undefined metric is None too, not 0 (COCOeval's -1)
    assert evaluate_coco(coco, [junk])["segm"]["APl"] is None


def test_bad_labels_fail(val_gt):
    coco, _, label_to_cat = val_gt
    empty = {"masks": torch.zeros(0, 4, 4, dtype=torch.bool), "labels": torch.zeros(0, dtype=torch.int64),
             "scores": torch.zeros(0)}
    assert results_to_coco([1], [empty], label_to_cat) == []
    bad = {"masks": torch.ones(1, 4, 4, dtype=torch.bool), "labels": torch.tensor([3]), "scores": torch.ones(1)}
    with pytest.raises(ValueError, match="labels must be in"):
        results_to_coco([1], [bad], label_to_cat)
    bad["labels"] = torch.tensor([0])
    with pytest.raises(ValueError, match="not the image size"):
        evaluate_coco(coco, results_to_coco([1], [bad], label_to_cat))
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate_coco(coco, results_to_coco([999], [bad], label_to_cat))


def test_given_boxes_are_converted_to_xywh(val_gt):
    _, _, label_to_cat = val_gt
    res = {"masks": np.ones((1, 10, 20), bool), "labels": np.array([2]), "scores": np.array([0.5]),
           "boxes": np.array([[1.0, 2.0, 11.0, 7.0]])}
    (entry,) = results_to_coco([4], [res], label_to_cat)
    assert entry["bbox"] == [1.0, 2.0, 10.0, 5.0] and entry["category_id"] == 7
    assert mask_utils.area({"size": entry["segmentation"]["size"],
                            "counts": entry["segmentation"]["counts"].encode()}) == 200


def test_evaluator_batches_subset_and_dump(val_gt, tmp_path):
    coco, cat_to_label, label_to_cat = val_gt
    ids, results = _gt_predictions(coco, cat_to_label)
    evaluator = CocoEvaluator(coco, label_to_cat)
    for start in range(0, 4, 2):  # only the first 4 images, two batches
        evaluator.process([{"image_id": i} for i in ids[start:start + 2]], results[start:start + 2])
    assert evaluator.num_images == 4
    summary = evaluator.evaluate()
    assert summary["segm"]["AP"] == pytest.approx(1.0)  # the subset processed, not the whole file
    dumped = json.loads(evaluator.dump(tmp_path / "out" / "results.json").read_text())
    assert sorted({d["image_id"] for d in dumped}) == ids[:4]
    everything = CocoEvaluator(coco, label_to_cat, iou_types=("segm",), restrict_to_processed=False)
    everything.process([{"image_id": i} for i in ids[:4]], results[:4])
    assert 0.0 < everything.evaluate()["segm"]["AP"] < 1.0  # the other images' objects are missed


def test_box_only_results_score_bbox_and_refuse_segm(synthetic_coco):
    """Box-only detectors (FCOS, SSD): ground-truth boxes as predictions give bbox AP 1.0."""
    from pycocotools.coco import COCO

    from solo_npu.evaluation import evaluate_coco, results_to_coco

    gt = COCO(str(synthetic_coco / "annotations" / "instances_val2017.json"))
    cat_ids = sorted(gt.getCatIds())
    image_ids, results = [], []
    for img_id in gt.getImgIds():
        anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=img_id)) if not a.get("iscrowd", 0)]
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        image_ids.append(img_id)
        results.append({"labels": np.array([cat_ids.index(a["category_id"]) for a in anns]),
                        "scores": np.ones(len(anns)), "boxes": np.array(boxes, dtype=np.float64).reshape(-1, 4)})
    entries = results_to_coco(image_ids, results, cat_ids)
    assert entries and all("segmentation" not in e for e in entries)
    assert evaluate_coco(gt, entries, iou_types=("bbox",))["bbox"]["AP"] > 0.99
    with pytest.raises(ValueError, match="segm evaluation needs masks"):
        evaluate_coco(gt, entries, iou_types=("segm",))


def test_unusable_image_is_scored_without_predictions(val_gt, caplog):
    """Perfect predictions on N images of which one could not be used (``image_ok`` false): the AP is over
    all N, that image's objects missed (COCOeval and mmdet's CocoMetric score every image), not over N - 1."""
    coco, cat_to_label, label_to_cat = val_gt
    ids, results = _gt_predictions(coco, cat_to_label)
    n, faulty = 5, 2
    assert coco.getAnnIds(imgIds=ids[faulty])  # the faulty image has ground truth
    evaluator = CocoEvaluator(coco, label_to_cat)
    for i in range(n):
        meta = {"image_id": ids[i], "image_ok": i != faulty}
        evaluator.process([meta], [results[i]])
    with caplog.at_level(logging.INFO, logger="solo_npu.evaluation"):
        summary = evaluator.evaluate()
    kept = [i for i in range(n) if i != faulty]
    over_n = evaluate_coco(coco, results_to_coco([ids[i] for i in kept], [results[i] for i in kept], label_to_cat),
                           img_ids=ids[:n])
    assert summary == over_n
    assert summary["segm"]["AP"] < 1.0 and summary["bbox"]["AP"] < 1.0
    over_n_minus_1 = evaluate_coco(coco, results_to_coco([ids[i] for i in kept], [results[i] for i in kept],
                                                         label_to_cat), img_ids=[ids[i] for i in kept])
    assert over_n_minus_1["segm"]["AP"] == pytest.approx(1.0)
    assert evaluator.num_images == n and evaluator.num_without_predictions == 1
    assert "1 of the 5 images scored have no predictions" in caplog.text
    assert "evaluated 5 images (1 of them unusable)" in caplog.text
    # The same image read fine by another pass (or another rank) is scored with its predictions.
    evaluator.process([{"image_id": ids[faulty]}], [results[faulty]])
    assert evaluator.num_without_predictions == 0
    assert evaluator.evaluate()["segm"]["AP"] == pytest.approx(1.0)


def test_string_image_ids_are_kept(synthetic_coco, tmp_path):
    """pycocotools indexes images by any hashable id: an annotation file with string ids evaluates, and the
    results carry the ids as the file has them."""
    ann = json.loads((synthetic_coco / "annotations" / "instances_val2017.json").read_text())
    for image in ann["images"]:
        image["id"] = f"img_{image['id']}"
    for a in ann["annotations"]:
        a["image_id"] = f"img_{a['image_id']}"
    ann_file = tmp_path / "string_ids.json"
    ann_file.write_text(json.dumps(ann))
    dataset = CocoInstanceDataset(ann_file, synthetic_coco / "val2017", train=False, with_masks=False)
    coco = dataset.coco
    cat_to_label = {c: i for i, c in enumerate(dataset.label_to_cat)}
    ids, results = _gt_predictions(coco, cat_to_label)
    evaluator = CocoEvaluator(coco, dataset.label_to_cat)
    for i in range(len(dataset)):
        meta = dataset[(i, 0)]["meta"]
        evaluator.process([meta], [results[ids.index(meta["image_id"])]])
    summary = evaluator.evaluate()
    assert summary["segm"]["AP"] == pytest.approx(1.0) and summary["bbox"]["AP"] == pytest.approx(1.0)
    dumped = json.loads(evaluator.dump(tmp_path / "results.json").read_text())
    assert {d["image_id"] for d in dumped} == set(ids) and all(isinstance(i, str) for i in ids)
    # numpy and torch integer ids become plain ints (json), as before
    (entry, *_) = results_to_coco([np.int64(4)], [results[0]], dataset.label_to_cat)
    assert type(entry["image_id"]) is int
    (entry, *_) = results_to_coco([torch.tensor(4)], [results[0]], dataset.label_to_cat)
    assert type(entry["image_id"]) is int


def _with_annotations(synthetic_coco, tmp_path, extra: list[dict]):
    ann = json.loads((synthetic_coco / "annotations" / "instances_val2017.json").read_text())
    ann["annotations"] += extra
    path = tmp_path / "with_extra.json"
    path.write_text(json.dumps(ann))
    return path


@pytest.mark.parametrize("segmentation", [[[2, 2, 14, 12]], []], ids=["4-coordinate polygon", "empty list"])
def test_degenerate_ground_truth_is_an_ignored_region_in_segm(synthetic_coco, tmp_path, segmentation, caplog):
    """A validation annotation the dataset flags as degenerate (pycocotools reads a 4-number polygon as a box
    and fails, and indexes [0] of an empty list) no longer crashes COCOeval: its box is an ignored region in the
    segm evaluation and a plain object in the bbox one."""
    gt = load_coco(synthetic_coco / "annotations" / "instances_val2017.json")
    first = sorted(gt.getImgIds())[0]
    cat = gt.loadAnns(gt.getAnnIds(imgIds=[first]))[0]["category_id"]
    bad = {"id": 10_000, "image_id": first, "category_id": cat, "segmentation": segmentation,
           "bbox": [2, 2, 12, 10], "area": 120, "iscrowd": 0}
    dataset = CocoInstanceDataset(_with_annotations(synthetic_coco, tmp_path, [bad]), synthetic_coco / "val2017",
                                  train=False)
    assert dataset.fault_counts()["degenerate_segmentation"] == 1
    cat_to_label = {c: i for i, c in enumerate(dataset.label_to_cat)}
    ids, results = _gt_predictions(gt, cat_to_label)  # perfect predictions of every other object
    evaluator = CocoEvaluator(dataset.coco, dataset.label_to_cat)
    evaluator.process([{"image_id": i} for i in ids], results)
    with caplog.at_level(logging.WARNING, logger="solo_npu.evaluation"):
        summary = evaluator.evaluate()
    assert summary["segm"]["AP"] == pytest.approx(1.0)  # the region is neither missed nor required
    assert summary["bbox"]["AP"] < 1.0  # the bbox evaluation misses the object's box
    assert "1 made ignored regions (annotation ids 10000)" in caplog.text
    # A detection on the region: ignored by segm (not a false positive), the box found by bbox.
    box_mask = np.zeros((1, *results[0]["masks"].shape[1:]), bool)
    box_mask[0, 2:12, 2:14] = True
    results[0] = {"masks": torch.cat([results[0]["masks"], torch.from_numpy(box_mask)]),
                  "labels": torch.cat([results[0]["labels"], torch.tensor([cat_to_label[cat]])]),
                  "scores": torch.cat([results[0]["scores"], torch.tensor([1.0])])}
    evaluator.reset()
    evaluator.process([{"image_id": i} for i in ids], results)
    summary = evaluator.evaluate()
    assert summary["segm"]["AP"] == pytest.approx(1.0) and summary["bbox"]["AP"] == pytest.approx(1.0)


def test_segm_ground_truth_keeps_usable_polygons_and_leaves_out_boxless_annotations(synthetic_coco, tmp_path,
                                                                                    caplog):
    from solo_npu.evaluation.coco_eval import segm_ground_truth

    extra = [{"id": 10_001, "image_id": 1, "category_id": 1, "bbox": [2, 2, 12, 10], "area": 120, "iscrowd": 0,
              "segmentation": [[1, 1, 2, 2], [2, 2, 14, 2, 14, 12, 2, 12]]},  # first polygon 4 numbers
             {"id": 10_002, "image_id": 1, "category_id": 1, "area": 0, "iscrowd": 0, "segmentation": []},
             {"id": 10_003, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 0}]
    gt = load_coco(_with_annotations(synthetic_coco, tmp_path, extra))
    with caplog.at_level(logging.WARNING, logger="solo_npu.evaluation"):
        fixed = segm_ground_truth(gt)
    assert fixed is not gt and segm_ground_truth(gt) is fixed  # built once per ground truth
    assert fixed.anns[10_001]["segmentation"] == [[2, 2, 14, 2, 14, 12, 2, 12]] and not fixed.anns[10_001]["iscrowd"]
    assert 10_002 not in fixed.anns
    assert fixed.anns[10_003]["iscrowd"] == 1 and fixed.anns[10_003]["segmentation"] == [[0, 0, 4, 0, 4, 4, 0, 4]]
    assert len(fixed.anns) == len(gt.anns) - 1 and gt.anns[10_001]["segmentation"][0] == [1, 1, 2, 2]  # a copy
    for ann in fixed.anns.values():
        fixed.annToRLE(ann)  # every ground truth reads as a mask
    assert ("3 ground-truth annotations have no segmentation pycocotools can read" in caplog.text
            and "1 without a box left out (annotation ids 10002)" in caplog.text)
    clean = load_coco(synthetic_coco / "annotations" / "instances_val2017.json")
    assert segm_ground_truth(clean) is clean


def test_ground_truth_without_iscrowd_area_or_bbox_is_completed(synthetic_coco, tmp_path, val_gt, caplog):
    """COCOeval reads iscrowd, area and (bbox evaluation) bbox of every ground truth: an annotation file whose
    annotations lack them scores as the complete file does instead of failing with a KeyError."""
    coco, cat_to_label, label_to_cat = val_gt
    entries = results_to_coco(*_gt_predictions(coco, cat_to_label, shift=2), label_to_cat)
    complete = evaluate_coco(coco, entries)
    ann = json.loads((synthetic_coco / "annotations" / "instances_val2017.json").read_text())
    for i, a in enumerate(ann["annotations"]):
        del a[("iscrowd", "area", "bbox")[i % 3]]
    ann["annotations"].append({"id": 10 ** 6, "image_id": ann["images"][0]["id"], "category_id": 1,
                               "segmentation": []})  # no box and no readable mask: left out
    path = tmp_path / "lacking.json"
    path.write_text(json.dumps(ann))
    with caplog.at_level(logging.WARNING, logger="solo_npu.evaluation"):
        lacking = evaluate_coco(load_coco(path), entries)
    assert lacking == complete and 0 < complete["segm"]["AP"] < 1
    assert "lack fields COCOeval reads" in caplog.text and "1 without a box or a readable segmentation" in caplog.text


def test_boxes_are_written_unrounded(val_gt):
    """Box models' float boxes reach COCOeval as they are, as mmdet's results2json writes them; rounded to 2
    decimals they moved small objects' IoU (bbox AP 0.8002 against pycocotools' 0.8017 on unrounded boxes)."""
    coco, _, label_to_cat = val_gt
    image_id = next(iter(coco.imgs))
    res = {"boxes": torch.tensor([[1.23456, 2.34567, 10.98765, 12.3456789]], dtype=torch.float64),
           "labels": torch.tensor([0]), "scores": torch.tensor([0.5])}
    (entry,) = results_to_coco([image_id], [res], label_to_cat)
    assert entry["bbox"] == pytest.approx([1.23456, 2.34567, 10.98765 - 1.23456, 12.3456789 - 2.34567], abs=1e-12)


def test_objects_sharing_an_id_are_all_scored_by_path_and_by_dataset(synthetic_coco, tmp_path):
    """Two objects an exporter gave one annotation id: pycocotools on the raw file never scores the first and
    scores the last twice, and the dataset used to drop the second, so the training evaluation and deploy (which
    scores the file by path) gave two APs, neither right. Both now score every object: the ground truth as
    prediction is AP 1.0, by path and through the dataset's index alike."""
    data = json.loads((synthetic_coco / "annotations" / "instances_val2017.json").read_text())
    by_image: dict = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    one, two = next(anns for anns in by_image.values() if len(anns) >= 2)[:2]
    two["id"] = one["id"]
    path = tmp_path / "dup.json"
    path.write_text(json.dumps(data))
    ds = CocoInstanceDataset(path, synthetic_coco / "val2017", train=False)
    assert len(ds.coco.anns) == len(data["annotations"])  # nobody dropped
    cat_to_label = {c: i for i, c in enumerate(sorted(ds.coco.getCatIds()))}
    ids, results = _gt_predictions(ds.coco, cat_to_label)
    entries = results_to_coco(ids, results, sorted(ds.coco.getCatIds()))
    by_path = evaluate_coco(path, entries, ("segm",))["segm"]["AP"]
    evaluator = CocoEvaluator(ds.coco, sorted(ds.coco.getCatIds()), iou_types=("segm",))
    evaluator.process([{"image_id": i} for i in ids], results)
    assert by_path == pytest.approx(1.0) and evaluator.evaluate()["segm"]["AP"] == pytest.approx(1.0)


def test_no_image_scored_is_undefined_not_zero(val_gt):
    """COCOeval with no image (``params.imgIds = []``) answers -1 for every metric: nothing was scored. An
    evaluator that processed no image, and evaluate_coco on no image, say None, not AP 0.0."""
    coco, _, label_to_cat = val_gt
    nothing = dict.fromkeys(("AP", "AP50", "AP75", "APs", "APm", "APl"))
    assert evaluate_coco(coco, [], img_ids=[]) == {"segm": nothing, "bbox": nothing}
    assert CocoEvaluator(coco, label_to_cat).evaluate() == {"segm": nothing, "bbox": nothing}


def test_results_whose_lengths_disagree_are_refused(val_gt):
    """mmdet's results2json indexes scores[i] and bboxes[i] per label (an IndexError when they are short);
    zipping them would drop detections in silence. bfloat16 scores are read (numpy has no bfloat16)."""
    _, _, label_to_cat = val_gt
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 3)
    with pytest.raises(ValueError, match="2 scores for 3 labels"):
        results_to_coco([1], [{"labels": torch.zeros(3, dtype=torch.long), "scores": torch.ones(2), "boxes": boxes}],
                        label_to_cat)
    with pytest.raises(ValueError, match="1 boxes for 3 labels"):
        results_to_coco([1], [{"labels": torch.zeros(3, dtype=torch.long), "scores": torch.ones(3),
                               "boxes": boxes[:1]}], label_to_cat)
    entries = results_to_coco([1], [{"labels": torch.zeros(3, dtype=torch.long),
                                     "scores": torch.tensor([0.5, 0.25, 0.125], dtype=torch.bfloat16),
                                     "boxes": boxes}], label_to_cat)
    assert [e["score"] for e in entries] == [0.5, 0.25, 0.125]


def test_no_results_ignore_the_segm_ground_truth_that_scoring_ignores(tmp_path):
    """Unreadable segm ground truth (a polygon of 2 points) is an ignored region when results are scored
    (segm_ground_truth); without results it is ignored too: segm undefined, where bbox has its box to miss."""
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "height": 40, "width": 40}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 100,
                         "iscrowd": 0, "segmentation": [[5, 5, 15, 15]]}]}))
    summary = evaluate_coco(load_coco(path), [])
    assert summary["segm"]["AP"] is None and summary["bbox"]["AP"] == 0.0
