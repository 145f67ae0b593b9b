"""COCO segm/bbox evaluation shared by training and deployment.

Predictions (one dict per image: ``masks`` bool [N, H0, W0], ``labels`` [N], ``scores`` [N],
optional ``boxes`` [N, 4] x1y1x2y2) become COCO result entries with RLE masks; :class:`CocoEvaluator`
collects them batch by batch, gathers them across ranks and runs COCOeval on rank 0.
"""

from __future__ import annotations

import contextlib
import io
import logging
import numbers
import os
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from solo_npu.utils.files import write_json_atomic

logger = logging.getLogger("solo_npu.evaluation")
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()  # numpy has no bfloat16
    return np.asarray(x)


def image_id_of(value: Any) -> Any:
    """An image id as the annotation file has it: numpy and torch scalars become Python ones, and any other
    id (a string) stays as it is; pycocotools indexes images by any hashable ``id``."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    return value.item() if isinstance(value, np.generic) else value


def _sorted_ids(ids: Iterable[Any]) -> list[Any]:
    return sorted(set(ids), key=lambda i: (type(i).__name__, i))  # one annotation file may mix int and str ids


def load_coco(coco_gt: COCO | str | os.PathLike) -> COCO:
    """A COCO object from an object or an annotation file path, read as the datasets read it
    (:func:`solo_npu.data.coco.load_clean_coco`: orphan annotations skipped, duplicate ids resolved), so that a
    file scored by path (deploy) gives the AP its evaluation during training gives."""
    if isinstance(coco_gt, COCO):
        return coco_gt
    if not Path(coco_gt).is_file():
        raise FileNotFoundError(f"annotation file not found: {coco_gt}")
    from solo_npu.data.coco import load_clean_coco

    return load_clean_coco(coco_gt)[0]


def results_to_coco(image_ids: Sequence[Any], results: Sequence[dict[str, Any]],
                    label_to_cat: Sequence[int]) -> list[dict[str, Any]]:
    """Per-image predictions -> COCO result entries (``segmentation`` RLE with str counts, ``bbox`` xywh).

    ``masks`` may be absent for box-only detectors (FCOS, SSD): their entries carry only ``bbox``.

    Boxes are derived from the masks when a result has no ``boxes``; labels are mapped back to COCO
    category ids through ``label_to_cat``.
    """
    if len(image_ids) != len(results):
        raise ValueError(f"{len(image_ids)} image ids for {len(results)} results")
    cat_lut = np.asarray(label_to_cat, dtype=np.int64)
    entries: list[dict[str, Any]] = []
    for image_id, res in zip(image_ids, results):
        labels = _numpy(res["labels"]).astype(np.int64).reshape(-1)
        if labels.size == 0:
            continue
        if labels.min() < 0 or labels.max() >= len(cat_lut):
            raise ValueError(
                f"image {image_id}: labels must be in [0, {len(cat_lut)}), got {labels.min()}..{labels.max()}")
        scores = _numpy(res["scores"]).astype(np.float64).reshape(-1)
        if scores.size != labels.size:
            raise ValueError(f"image {image_id}: {scores.size} scores for {labels.size} labels")
        rles: list[dict[str, Any]] | None = None
        if res.get("masks") is not None:
            masks = _numpy(res["masks"])
            if masks.ndim != 3 or masks.shape[0] != labels.size:
                raise ValueError(
                    f"image {image_id}: masks must be [N, H, W] with N={labels.size}, got {masks.shape}")
            rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
        if res.get("boxes") is not None:
            boxes = _numpy(res["boxes"]).astype(np.float64).reshape(-1, 4)
            if boxes.shape[0] != labels.size:
                raise ValueError(f"image {image_id}: {boxes.shape[0]} boxes for {labels.size} labels")
            boxes = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        elif rles is not None:
            boxes = mask_utils.toBbox(rles)
        else:
            raise ValueError(f"image {image_id}: a result needs masks or boxes")
        cats = cat_lut[labels]
        for i, (cat, score, box) in enumerate(zip(cats.tolist(), scores.tolist(), boxes.tolist())):
            entry = {"image_id": image_id_of(image_id), "category_id": int(cat), "score": float(score),
                     "bbox": [float(v) for v in box]}  # unrounded, as mmdet's results2json writes them
            if rles is not None:
                rle = rles[i]
                entry["segmentation"] = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
            entries.append(entry)
    return entries


def _is_polygon(p: Any) -> bool:
    return isinstance(p, list) and all(isinstance(v, numbers.Real) for v in p)


def _mask_readable(seg: Any) -> bool:
    """Whether pycocotools' ``COCO.annToRLE`` turns ``seg`` into a mask without failing."""
    if isinstance(seg, dict):  # runs that do not cover the mask exactly decode to garbage (rle_runs_fill)
        from solo_npu.data.coco import rle_runs_fill

        size = seg.get("size")
        return (isinstance(size, list) and len(size) == 2 and isinstance(seg.get("counts"), (list, str, bytes))
                and rle_runs_fill(seg["counts"], int(size[0]), int(size[1])))
    # frPyObjects reads a list by the length of its first element: 4 numbers are a box (frBbox), more are
    # polygons (frPoly, each a flat list of numbers); anything else, or an empty list, fails.
    return isinstance(seg, list) and bool(seg) and all(_is_polygon(p) for p in seg) and len(seg[0]) > 4


# Built once per ground truth (training evaluates the same COCO object every epoch).
_SEGM_GT: weakref.WeakKeyDictionary[COCO, COCO] = weakref.WeakKeyDictionary()


def _with_annotations(coco_gt: COCO, anns: list[dict[str, Any]]) -> COCO:
    """A copy of ``coco_gt`` (images, categories) holding ``anns``, indexed without pycocotools' prints."""
    copy = COCO()
    copy.dataset = {**coco_gt.dataset, "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        copy.createIndex()
    return copy


def _ids_text(ids: list[Any]) -> str:
    return f"annotation ids {', '.join(map(str, ids[:10]))}{' ...' if len(ids) > 10 else ''}"


_COMPLETE_GT: weakref.WeakKeyDictionary[COCO, COCO] = weakref.WeakKeyDictionary()


def complete_ground_truth(coco_gt: COCO) -> COCO:
    """``coco_gt`` with the fields COCOeval reads from every ground truth filled in where annotations lack them.

    pycocotools' COCOeval (cocoeval.py) reads ``o['iscrowd']`` of every ground truth in ``evaluateImg``, its
    ``area`` for the small/medium/large ranges and, in a bbox evaluation, its ``bbox`` (``computeIoU``): an
    annotation file without them (some converters write only ``segmentation``) fails with a KeyError at the
    end of an evaluation, although the dataset reads it. Here a missing ``iscrowd`` is 0 (what the dataset
    takes), a missing ``area`` the pixel count of the segmentation (as COCO's own areas are) or else the box's
    w x h, a missing ``bbox`` the box of the segmentation; an annotation whose missing ``area`` or ``bbox``
    cannot be made is left out. Returns ``coco_gt`` itself when nothing is missing; otherwise a copy, with
    one WARNING that counts what was filled.
    """
    cached = _COMPLETE_GT.get(coco_gt)
    if cached is not None:
        return cached
    anns: list[dict[str, Any]] = []
    filled = {"iscrowd": 0, "area": 0, "bbox": 0}
    left_out: list[Any] = []
    for ann in coco_gt.dataset.get("annotations", []):
        missing = [key for key in filled if ann.get(key) is None]
        if not missing:
            anns.append(ann)
            continue
        new = dict(ann)
        rle = None
        if ({"area", "bbox"} & set(missing) and _mask_readable(ann.get("segmentation"))
                and ann.get("image_id") in coco_gt.imgs):
            rle = coco_gt.annToRLE(ann)
        if "iscrowd" in missing:
            new["iscrowd"] = 0
        if "bbox" in missing and rle is not None:
            new["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]
        if "area" in missing:
            box = new.get("bbox")
            if rle is not None:
                new["area"] = float(mask_utils.area(rle))
            elif isinstance(box, (list, tuple)) and len(box) == 4:
                new["area"] = float(box[2]) * float(box[3])
        if new.get("area") is None or new.get("bbox") is None:
            left_out.append(ann.get("id"))
            continue
        for key in missing:
            filled[key] += 1
        anns.append(new)
    if not any(filled.values()) and not left_out:
        _COMPLETE_GT[coco_gt] = coco_gt
        return coco_gt
    complete = _with_annotations(coco_gt, anns)
    parts = [f"{n} without {key}" for key, n in filled.items() if n]
    if left_out:
        parts.append(f"{len(left_out)} without a box or a readable segmentation left out ({_ids_text(left_out)})")
    logger.warning("evaluation: ground-truth annotations lack fields COCOeval reads, filled in: %s (iscrowd 0, "
                   "area and bbox from the segmentation)", "; ".join(parts))
    _COMPLETE_GT[coco_gt] = complete
    return complete


def segm_ground_truth(coco_gt: COCO) -> COCO:
    """``coco_gt`` as the segm evaluation scores it: annotations without a mask pycocotools can read repaired.

    pycocotools' ``COCO.annToRLE`` (coco.py), which COCOeval calls on every ground truth of a segm evaluation,
    hands a list to ``frPyObjects`` (_mask.pyx). That takes a list whose first polygon has 4 coordinates for
    boxes and fails in ``frBbox`` (a list, not an ndarray), indexes ``[0]`` of an empty list (IndexError), and
    rejects shorter or nested polygons; a missing or ``null`` segmentation fails too. The dataset already
    leaves such annotations out of training (``degenerate_segmentation``); here, instead of crashing at the end
    of the evaluation:

    - polygons of at least 6 coordinates among them are kept as the mask (the others dropped, as in training);
    - an annotation with none left becomes an ignored region (``iscrowd=1``, its box as the polygon): a
      detection on it is neither a hit nor a false positive, and its object is not a miss, as COCOeval treats
      crowd regions;
    - one without a box either is left out.

    The bbox evaluation needs no mask and scores the unchanged ground truth. Returns ``coco_gt`` itself when
    nothing needs repair; otherwise a copy, with one WARNING naming what was changed.
    """
    cached = _SEGM_GT.get(coco_gt)
    if cached is not None:
        return cached
    anns: list[dict[str, Any]] = []
    changed: dict[str, list[Any]] = {"scored on their usable polygons": [], "made ignored regions": [],
                                     "without a box left out": []}
    for ann in coco_gt.dataset.get("annotations", []):
        seg = ann.get("segmentation")
        if _mask_readable(seg):
            anns.append(ann)
            continue
        polys = [p for p in seg if _is_polygon(p) and len(p) >= 6] if isinstance(seg, list) else []
        box = ann.get("bbox")
        if polys:
            anns.append({**ann, "segmentation": polys})
            changed["scored on their usable polygons"].append(ann.get("id"))
        elif isinstance(box, (list, tuple)) and len(box) == 4 and box[2] > 0 and box[3] > 0:
            x, y, w, h = (float(v) for v in box)
            anns.append({**ann, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]], "iscrowd": 1})
            changed["made ignored regions"].append(ann.get("id"))
        else:
            changed["without a box left out"].append(ann.get("id"))
    if not any(changed.values()):
        _SEGM_GT[coco_gt] = coco_gt
        return coco_gt
    repaired = _with_annotations(coco_gt, anns)
    parts = [f"{len(ids)} {what} ({_ids_text(ids)})" for what, ids in changed.items() if ids]
    logger.warning("segm evaluation: %d ground-truth annotations have no segmentation pycocotools can read (empty, "
                   "or a polygon of fewer than 3 points): %s", sum(map(len, changed.values())), "; ".join(parts))
    _SEGM_GT[coco_gt] = repaired
    return repaired


# COCOeval's area ranges of APs, APm, APl (cocoeval.py Params.setDetParams: areaRng), bounds included.
_AREA_RANGES = {"APs": (0.0, 32.0**2), "APm": (32.0**2, 96.0**2), "APl": (96.0**2, 1e5**2)}


def _zeros(coco_gt: COCO, img_ids: Iterable[Any] | None = None,
           cat_ids: Iterable[Any] | None = None) -> dict[str, float | None]:
    """The metrics of no detections: 0 where there is ground truth to miss (a non-crowd object of the scored
    images and categories, in the metric's area range), else undefined (``None``), as COCOeval's -1; no image
    scored (``img_ids`` empty) is undefined throughout."""
    imgs = None if img_ids is None else {image_id_of(i) for i in img_ids}
    cats = None if cat_ids is None else set(cat_ids)
    areas = [float(a.get("area", 0.0)) for a in coco_gt.anns.values() if not a.get("iscrowd", 0)
             and (imgs is None or a["image_id"] in imgs) and (cats is None or a["category_id"] in cats)]
    out: dict[str, float | None] = {}
    for name in METRIC_NAMES:
        lo, hi = _AREA_RANGES.get(name, (0.0, 1e5**2))
        out[name] = 0.0 if any(lo <= a <= hi for a in areas) else None
    return out


def _check_results(coco_gt: COCO, coco_results: list[dict[str, Any]]) -> None:
    """Clear errors for results that COCOeval would reject with an assertion or a size mismatch."""
    for r in coco_results:
        info = coco_gt.imgs.get(r["image_id"])
        if info is None:
            raise ValueError(f"result for image_id {r['image_id']}, which is not in the ground truth")
        seg = r.get("segmentation")
        if isinstance(seg, dict) and list(seg["size"]) != [info["height"], info["width"]]:
            raise ValueError(f"image {r['image_id']}: mask size {list(seg['size'])} is not the image size "
                             f"{[info['height'], info['width']]} (masks must be in original-image coordinates)")


def _one_kind_of_image_id(coco_gt: COCO, coco_results: list[dict[str, Any]], img_ids: Iterable[Any] | None
                          ) -> tuple[COCO, list[dict[str, Any]], list[Any] | None]:
    """The ground truth, results and image ids with the image ids numbered 1.. in :func:`_sorted_ids` order where
    the file mixes int and str ids, else as they are. COCOeval sorts the ids (``sorted(cocoGt.getImgIds())`` in
    ``__init__``: a TypeError for int and str) and passes them through ``np.unique`` (``evaluate``: one array of
    strings, which no longer name the int images); the scores do not depend on the ids' values."""
    ids = coco_gt.getImgIds()
    if img_ids is not None:
        img_ids = [image_id_of(i) for i in img_ids]
    if len({isinstance(i, str) for i in ids}) < 2:
        return coco_gt, coco_results, img_ids
    number = {image_id: n for n, image_id in enumerate(_sorted_ids(ids), start=1)}
    dataset = coco_gt.dataset
    renumbered = COCO()
    renumbered.dataset = {**dataset, "images": [{**im, "id": number[im["id"]]} for im in dataset["images"]],
                          "annotations": [{**a, "image_id": number[a["image_id"]]}
                                          for a in dataset.get("annotations", [])]}
    with contextlib.redirect_stdout(io.StringIO()):
        renumbered.createIndex()
    results = [{**r, "image_id": number[r["image_id"]]} for r in coco_results]
    return renumbered, results, None if img_ids is None else [number[i] for i in img_ids]


def evaluate_coco(coco_gt: COCO | str | os.PathLike, coco_results: list[dict[str, Any]],
                  iou_types: Iterable[str] = ("segm", "bbox"),
                  img_ids: Iterable[Any] | None = None,
                  cat_ids: Iterable[Any] | None = None) -> dict[str, dict[str, float | None]]:
    """Run COCOeval per IoU type; returns ``{iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl"}}`` in 0..1.

    Metrics that COCO leaves undefined (COCOeval's -1: no ground truth in an area range, or none at all) are
    ``None``; empty results give 0 where there is ground truth to miss. ``img_ids`` restricts the evaluation to
    those images (default: all of them); ``cat_ids`` to those categories (default: all of them), as mmdet's
    CocoMetric scores only the categories of its classes (``coco_eval.params.catIds = self.cat_ids``,
    mmdet/evaluation/metrics/coco_metric.py).
    """
    coco_gt = load_coco(coco_gt)
    _check_results(coco_gt, coco_results)
    coco_gt, coco_results, img_ids = _one_kind_of_image_id(coco_gt, coco_results, img_ids)
    summary: dict[str, dict[str, float | None]] = {}
    for iou_type in iou_types:
        if iou_type not in ("segm", "bbox"):
            raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
        if not coco_results:  # the ground truth COCOeval would score (unreadable segm ground truth ignored)
            gt = complete_ground_truth(coco_gt)
            summary[iou_type] = _zeros(segm_ground_truth(gt) if iou_type == "segm" else gt, img_ids, cat_ids)
            continue
        if iou_type == "segm" and not all("segmentation" in r for r in coco_results):
            raise ValueError("segm evaluation needs masks in every result (box-only models: iou_types=['bbox'])")
        if iou_type == "segm":
            # Without a bbox key, loadRes takes the area from the mask, so small/medium/large use mask area.
            dets = [{k: v for k, v in r.items() if k != "bbox"} for r in coco_results]
        else:
            dets = [{k: v for k, v in r.items() if k != "segmentation"} for r in coco_results]
        gt = complete_ground_truth(coco_gt)
        gt = segm_ground_truth(gt) if iou_type == "segm" else gt
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            coco_dt = gt.loadRes(dets)
            evaluator = COCOeval(gt, coco_dt, iou_type)
            if img_ids is not None:
                evaluator.params.imgIds = _sorted_ids(image_id_of(i) for i in img_ids)
            if cat_ids is not None:
                evaluator.params.catIds = _sorted_ids(cat_ids)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        logger.info("COCO %s evaluation\n%s", iou_type, text.getvalue().split("DONE", 1)[-1].strip())
        # COCOeval's -1: no ground truth in that area range (or at all): undefined, not 0 (detectron2 reports NaN)
        summary[iou_type] = {name: None if v < 0 else float(v) for name, v in zip(METRIC_NAMES, evaluator.stats[:6])}
    return summary


def score_types(iou_types: Iterable[str]) -> tuple[str, ...]:
    """The iou types a model's results are scored on: the model's own (its ``iou_types``, see
    solo_npu/models/contract.py) plus ``bbox``, since every COCO result carries a box (taken from the mask when
    the model gives none). Mask models (SOLOv2, YolactEdge) are scored on ``segm`` and ``bbox``, box-only models
    (FCOS, SSD-ResNet34) on ``bbox`` alone: a ``segm`` AP of results without masks would mean nothing. Deploy's
    evaluate stage scores the same types (solo_npu/deploy/evaluate.py)."""
    types = tuple(dict.fromkeys([*iou_types, "bbox"]))
    unknown = [t for t in types if t not in ("segm", "bbox")]
    if unknown:
        raise ValueError(f"iou_type must be 'segm' or 'bbox', got {unknown[0]!r}")
    return types


def scored_categories(coco_gt: COCO, label_to_cat: Sequence[Any]) -> list[Any] | None:
    """The categories a model of these labels is scored on: its own when the annotation file has others too
    (a subset of classes), ``None`` (all of them) otherwise."""
    cats = set(label_to_cat)
    return None if cats >= set(coco_gt.getCatIds()) else _sorted_ids(cats)


class CocoEvaluator:
    """Accumulate predictions batch by batch and evaluate them (across ranks when distributed).

    Args:
        coco_gt: ground truth (COCO object or annotation file).
        label_to_cat: contiguous label -> COCO category id.
        iou_types: which of ``segm`` / ``bbox`` to evaluate.
        restrict_to_processed: evaluate only the images that went through :meth:`process` (so a
            partial or sharded pass is scored on what it saw); otherwise all images of ``coco_gt``.

    An image that went through :meth:`process` with ``image_ok`` false (missing, unreadable, or not the size the
    annotation file gives) is scored with no predictions: its objects count as missed, as COCOeval and
    mmdet's CocoMetric (mmdet/evaluation/metrics/coco_metric.py: ``img_ids = get_img_ids()``) score every
    image of the annotation file. Leaving it out would raise the AP. The log says how many there were.
    """

    def __init__(self, coco_gt: COCO | str | os.PathLike, label_to_cat: Sequence[int],
                 iou_types: Sequence[str] = ("segm", "bbox"), restrict_to_processed: bool = True) -> None:
        self.coco_gt = load_coco(coco_gt)
        self.label_to_cat = list(label_to_cat)
        self.iou_types = tuple(iou_types)
        self.restrict_to_processed = restrict_to_processed
        self.reset()

    def reset(self) -> None:
        self._results: dict[Any, list[dict[str, Any]]] = {}
        self._unusable: set[Any] = set()  # processed, image not usable: scored without predictions
        self._merged: dict[Any, list[dict[str, Any]]] | None = None
        self._merged_unusable: set[Any] = set()

    def process(self, metas: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]]) -> None:
        """Add one batch: ``metas`` from the batch dict, ``results`` from ``model.predict``."""
        for meta, res in zip(metas, results, strict=True):
            image_id = image_id_of(meta["image_id"])
            if not meta.get("image_ok", True):
                # The image could not be used (a data fault): scored with no predictions, not left out.
                self._unusable.add(image_id)
                continue
            self._results[image_id] = results_to_coco([image_id], [res], self.label_to_cat)

    @property
    def num_images(self) -> int:
        """Images processed on this rank: each is scored, those in :attr:`num_without_predictions` too."""
        return len(self._results.keys() | self._unusable)

    @property
    def num_without_predictions(self) -> int:
        """Processed images that could not be used (``image_ok`` false): scored with no predictions."""
        return len(self._unusable - self._results.keys())

    def _gather(self) -> tuple[dict[Any, list[dict[str, Any]]], set[Any]]:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return dict(self._results), self._unusable - self._results.keys()
        parts: list[tuple[dict[Any, list[dict[str, Any]]], set[Any]] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (self._results, self._unusable))
        merged: dict[Any, list[dict[str, Any]]] = {}
        unusable: set[Any] = set()
        for part in parts:  # an image seen by several ranks (padded samplers) counts once
            results, failed = part or ({}, set())
            for image_id, entries in results.items():
                merged.setdefault(image_id, entries)
            unusable |= failed
        return merged, unusable - merged.keys()

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Gather, evaluate on rank 0 and broadcast: every rank returns the same summary."""
        self._merged, self._merged_unusable = self._gather()
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        summary = None
        if not distributed or dist.get_rank() == 0:
            results = [e for image_id in _sorted_ids(self._merged) for e in self._merged[image_id]]
            processed = _sorted_ids(self._merged.keys() | self._merged_unusable)
            img_ids = processed if self.restrict_to_processed else None
            if img_ids is not None and not img_ids:
                summary = {t: _zeros(self.coco_gt, []) for t in self.iou_types}  # nothing scored: undefined
            else:
                summary = evaluate_coco(self.coco_gt, results, self.iou_types, img_ids=img_ids,
                                        cat_ids=scored_categories(self.coco_gt, self.label_to_cat))
            scored = len(processed) if img_ids is not None else len(self.coco_gt.imgs)
            if self._merged_unusable:
                logger.warning("%d of the %d images scored have no predictions: their image could not be used "
                               "(missing, unreadable, or not the size the annotation file gives), so their objects "
                               "count as missed", len(self._merged_unusable), scored)
            logger.info("evaluated %d images (%d of them unusable): %s", scored,
                        len(self._merged_unusable), summary)
        if distributed:
            box = [summary]
            dist.broadcast_object_list(box, src=0)
            summary = box[0]
        return summary

    def dump(self, path: str | os.PathLike) -> Path:
        """Write the results json (gathered ones after :meth:`evaluate`, else this rank's)."""
        source = self._merged if self._merged is not None else self._results
        results = [e for image_id in _sorted_ids(source) for e in source[image_id]]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_json_atomic(path, results)
