"""COCO instance segmentation dataset over pycocotools, robust to bad input.

Annotation-level faults are found once at construction without reading any image; unreadable
images are found when read. Training uses the annotations and images mmdet's CocoDataset uses
(mmdet/datasets/coco.py): the annotations its parser keeps, and the images with an annotation of the
classes whose shorter side is at least ``min_size`` (32) px, an image none of whose annotations is usable
included, as a negative. Training skips the other images and those it cannot read (the dataset serves
another index, chosen deterministically); evaluation keeps every image, with whatever ground truth is
valid. Every fault is counted per kind and reported once per kind on the ``solo_npu.data`` logger;
:meth:`CocoInstanceDataset.fault_counts` returns the counts, including those found inside DataLoader
worker processes.

Before pycocotools indexes the json, annotations whose ``image_id`` names no image (orphans) are
dropped, and of several annotations with one ``id`` only the first is kept: pycocotools would index
the last one by id but list every one under its image, so training and COCOeval would see different
ground truth. Both are counted (``orphan_annotation``, ``duplicate_annotation_id``) and logged in one
WARNING line; the cleaned index (:attr:`CocoInstanceDataset.coco`) is what evaluation scores against.
"""

from __future__ import annotations

import contextlib
import glob
import io
import itertools
import json
import logging
import math
import numbers
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset

logger = logging.getLogger("solo_npu.data")

INIT_FAULTS = ("orphan_annotation", "duplicate_annotation_id", "bad_category", "degenerate_segmentation",
               "box_outside_image", "zero_area", "degenerate_box", "missing_image", "empty_image", "small_image",
               "too_many_instances")
READ_FAULTS = ("unreadable_image", "image_size_mismatch", "empty_mask")
FAULT_KINDS = INIT_FAULTS + READ_FAULTS
_LOG_NAMES = 10  # file names listed per kind in the log
# mmdet's filter_cfg=dict(filter_empty_gt=True, min_size=32) (open-mmlab/mmdetection
# configs/_base_/datasets/coco_instance.py); data.min_size in the config
DEFAULT_MIN_SIZE = 32
# Read faults are counted in shared memory, one row per process (row 0: the process that owns the dataset,
# row 1 + w: DataLoader worker w), so that workers never update the same number at once.
_COUNT_ROWS = 65


def _polygon_area(flat: list[float]) -> float:
    # Plain Python: polygons are short and COCO has ~10^6 of them, where numpy call overhead dominates.
    x, y = flat[0::2], flat[1::2]
    return 0.5 * abs(sum(x[i] * y[i - 1] - x[i - 1] * y[i] for i in range(len(x))))


def _has_area(flat: list[Any], height: int, width: int) -> bool:
    """Whether a flat polygon is numbers that draw pixels (a NaN area draws none); a polygon of other things (point
    pairs as lists, strings) fails the arithmetic instead of a per-value check, which doubled the cost per polygon.
    A self-crossing polygon whose parts cancel in the signed area (a bowtie) still draws pixels, as pycocotools
    rasterises it for mmdet's ``poly2mask``: a zero area is decided by that rasterisation (a rare case)."""
    try:
        area = _polygon_area(flat)
    except TypeError:
        return False
    if area > 0:
        return True
    return area == 0 and float(mask_utils.area(mask_utils.frPyObjects([flat], height, width))[0]) > 0


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def rle_string_counts(counts: str) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string, or None where it is not one.

    The format of pycocotools' ``rleToString`` / ``rleFrString`` (common/maskApi.c): each count is written in
    5-bit groups, least significant first, each group + 48 as one character, 0x20 marking that another group
    follows and 0x10 in the last group the sign; from the third count on a count is stored as its difference
    to the count two before it.
    """
    out: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                return None  # the string ends inside a count
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def rle_runs_fill(counts: Any, height: int, width: int) -> bool:
    """Whether an RLE's run lengths are non-negative whole numbers that add up to exactly ``height * width``.
    pycocotools' ``decode`` trusts them: runs that end early leave the rest of its mask buffer as it was
    allocated (garbage), runs that go past raise "Invalid RLE mask representation" when the mask is read."""
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")  # a character outside the code is no count: None below
    runs = rle_string_counts(counts) if isinstance(counts, str) else counts
    if not isinstance(runs, list) or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 0
                                             for r in runs):
        return False
    return sum(runs) == height * width


def _clean_segmentation(seg: Any, height: int, width: int) -> Any | None:
    """The usable part of a segmentation (polygons of >= 3 points given as numbers that draw pixels, or an RLE of
    the image's size whose runs cover it exactly)."""
    if isinstance(seg, list):
        polys = [p for p in seg if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
                 and _has_area(p, height, width)]
        return polys or None
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if not isinstance(seg["size"], list) or [int(s) for s in seg["size"]] != [height, width]:
            return None
        if not rle_runs_fill(seg["counts"], height, width):
            return None
        rle = mask_utils.frPyObjects(seg, height, width) if isinstance(seg["counts"], list) else seg
        return seg if float(mask_utils.area(_as_bytes_rle(rle))) > 0 else None
    return None


def _as_bytes_rle(rle: dict[str, Any]) -> dict[str, Any]:
    if isinstance(rle["counts"], str):
        return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return rle


def segmentation_to_rle(seg: Any, height: int, width: int) -> dict[str, Any]:
    """Polygons, uncompressed RLE or compressed RLE -> one compressed RLE (pycocotools)."""
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg["counts"], list):
        return mask_utils.frPyObjects(seg, height, width)
    return _as_bytes_rle(seg)


_JPEG_SOI = b"\xff\xd8\xff"  # the signature cv2 picks its JPEG decoder by (opencv imgcodecs grfmt_jpeg.cpp)


def jpeg_truncated(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a JPEG file whose data ends before its end-of-image marker (FF D9).

    libjpeg reads such a file to its end, warns "Premature end of JPEG file" on stderr and inserts a fake end
    marker (``fill_input_buffer`` in jdatasrc.c, which OpenCV's JpegDecoder reads files through with
    ``jpeg_stdio_src``), so ``cv2.imread`` returns the image with its missing rows grey and no error. A file whose
    last bytes (after trailing zero or whitespace padding) are FF D9 is whole; otherwise its markers are walked
    to find the end of the first image, so that data appended after it (phones append a video to a photo) is no
    fault. Files that are not JPEG, and markers this walk does not understand, are left to the decoder (``False``).
    """
    with open(path, "rb") as f:
        if f.read(3) != _JPEG_SOI:
            return False
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 64))
        if f.read().rstrip(b"\x00 \t\r\n").endswith(b"\xff\xd9"):
            return False
        f.seek(0)
        data = f.read()
    return not _jpeg_has_end(data)


def _jpeg_has_end(data: bytes) -> bool:
    """Whether the marker segments of a JPEG file reach an end-of-image marker (ITU-T T.81 annex B: a marker is
    FF xx; after a start-of-scan segment, entropy-coded data runs to the next marker, in which FF 00 (a stuffed
    FF) and FF D0..D7 (restart markers) do not end it). ``True`` where the walk loses its way."""
    pos, n = 2, len(data)
    while pos + 1 < n:
        if data[pos] != 0xFF:
            return True  # not at a marker: a layout this walk does not know, the decoder decides
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xD9:
            return True
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        if pos + 4 > n:
            return False
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker != 0xDA:
            continue
        while True:  # entropy-coded data of the scan
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= n:
                return False
            following = data[pos + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7:
                pos += 2
            elif following == 0xFF:
                pos += 1
            else:
                break
    return False


def read_image(path: str | os.PathLike, flags: int = cv2.IMREAD_COLOR) -> np.ndarray | None:
    """The image of ``path`` decoded from its bytes with ``flags`` (``cv2.imdecode``, as mmcv's ``imfrombytes``
    decodes what ``LoadImageFromFile`` reads; OpenCV 5.1's ``cv2.imread`` fails on a TIFF whose orientation tag is
    5 to 8, which ``imdecode`` reads turned), ``None`` where it cannot be read: cv2 gives nothing, raises, or the
    file is a JPEG cut short (:func:`jpeg_truncated`, checked first: such a file is not decoded, so libjpeg prints
    nothing), which cv2 would return half grey."""
    image = None
    with contextlib.suppress(cv2.error, OSError, ValueError):
        if not jpeg_truncated(path):
            data = np.fromfile(str(path), np.uint8)
            if data.size:
                image = cv2.imdecode(data, flags)
    return image


STORED_ORIENTATION = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION


def stored_orientation(path: str | os.PathLike, turned: np.ndarray, size: tuple[int, int]) -> np.ndarray | None:
    """The image of ``path`` as stored, when only that has the annotation's ``size`` (height, width), else ``None``.

    ``cv2.imdecode`` turns a JPEG upright by its EXIF orientation tag (as mmcv's and detectron2's readers do),
    and COCO's own images are annotated that way. A dataset annotated on the stored pixels (most annotation
    tools, phone photos tagged "rotate 90") has the stored width and height instead: then the image is read
    without the turn, so the masks fall where they were drawn. A turn that keeps the size (180 degrees) cannot be
    told apart and stays applied. ``turned``: the image as read with the turn."""
    if turned.shape[:2] != tuple(size[::-1]):
        return None
    stored = read_image(path, STORED_ORIENTATION)
    if stored is None or stored.shape[:2] != tuple(size):
        return None
    logger.info("%s: read without its EXIF turn, the annotation's %dx%d is the stored size", Path(path).name,
                size[1], size[0])
    return stored


class AnnotationFileError(ValueError):
    """An annotation file that cannot be read as COCO instances, or a split with no usable image: one line."""


class ImagesNotFoundError(AnnotationFileError):
    """An image folder that holds none of the images its annotation file names."""


def read_annotation_json(ann_file: str | os.PathLike) -> dict[str, Any]:
    """The json object of a COCO instances file, with ``images`` and ``categories`` lists.

    Raises:
        AnnotationFileError: the file is not JSON (cut short, binary) or not such an object.
    """
    try:
        with open(ann_file, encoding="utf-8") as f:
            dataset = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # truncated, not JSON, not text
        raise AnnotationFileError(f"{ann_file} is not a JSON file ({exc})") from None
    if not isinstance(dataset, dict):
        raise AnnotationFileError(f"{ann_file} is not a COCO annotation file: the top level is a "
                                  f"{type(dataset).__name__}")
    for key in ("images", "categories"):  # "annotations" may be absent (an image-info file such as test-dev's)
        if not isinstance(dataset.get(key), list):
            raise AnnotationFileError(f"{ann_file} is not a COCO instances file: it has no {key!r} list "
                                      f"(its keys: {', '.join(map(str, dataset)) or 'none'})")
    return dataset


def class_name_key(name: Any) -> str:
    """A class name as names are compared: mmdet 1.x and the original SOLO repository spell COCO's names with
    underscores ("traffic_light"), mmdet 2.x/3.x and COCO's files with spaces; case is ignored."""
    return str(name).strip().lower().replace("_", " ")


def category_order(categories: list[dict[str, Any]], class_names: Sequence[str] | None = None,
                   source: str = "the annotation file") -> tuple[list[int], list[str]]:
    """(category ids, names) in label order, label 0 first (a ``name`` missing from an entry is its id).

    Without ``class_names``: every category, ids ascending. With them: the category of each name, in that
    order (names compared by :func:`class_name_key`), as mmdet's ``classes`` / ``metainfo.classes`` select and
    order a dataset's categories (``cat_ids = coco.get_cat_ids(cat_names=classes)``, mmdet/datasets/coco.py);
    the names returned are the file's spelling.

    Raises:
        AnnotationFileError: a name that no category of ``source`` has, or that two of them have (one line).
    """
    if class_names is None:
        cats = sorted(categories, key=lambda c: c["id"])
        return [c["id"] for c in cats], [str(c.get("name", c["id"])) for c in cats]
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for cat in categories:
        by_key[class_name_key(cat.get("name", cat["id"]))].append(cat)
    ids, names = [], []
    for name in class_names:
        found = by_key.get(class_name_key(name), [])
        if len(found) != 1:
            listed = ", ".join(str(c.get("name", c["id"])) for c in categories[:12])
            why = "has no category named" if not found else f"has {len(found)} categories named"
            raise AnnotationFileError(f"{source} {why} {str(name)!r} (a class of data.class_names or of the "
                                      f"checkpoint; its categories: {listed}{' ...' if len(categories) > 12 else ''})")
        ids.append(found[0]["id"])
        names.append(str(found[0].get("name", found[0]["id"])))
    if len(set(ids)) != len(ids):
        raise AnnotationFileError(f"the classes {list(class_names)} name one category of {source} twice")
    return ids, names


_IMAGE_KEYS = ("id", "file_name", "height", "width")  # what reading and scoring an image need


def _integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _hashable(value: Any) -> bool:
    return isinstance(value, (int, float, str, bool, type(None)))


def _unique_images(images: list[Any], ann_file: str | os.PathLike) -> list[dict[str, Any]]:
    """The ``images`` entries, each checked for what reading and scoring need, an entry that repeats an earlier one
    of its id whole dropped (a file merged with itself).

    Raises:
        AnnotationFileError: an entry without one of :data:`_IMAGE_KEYS` or with a size that is not a positive
            integer; or two different entries with one id (pycocotools would keep the last and give it both
            images' annotations: ``imgs[img['id']] = img`` in ``createIndex``).
    """
    seen: dict[Any, dict[str, Any]] = {}
    unique = []
    for i, image in enumerate(images):
        missing = [k for k in _IMAGE_KEYS if not isinstance(image, dict) or k not in image]
        if missing:
            raise AnnotationFileError(f"{ann_file}: image {i} has no {', '.join(missing)} (a COCO image entry needs "
                                      f"{', '.join(_IMAGE_KEYS)})")
        size = (image["height"], image["width"])
        if not all(_integer(v) and v > 0 for v in size):
            raise AnnotationFileError(f"{ann_file}: image {i} ({image['file_name']}) has height {image['height']!r} "
                                      f"and width {image['width']!r}: they must be positive integers")
        if not _hashable(image["id"]):
            raise AnnotationFileError(f"{ann_file}: image {i} ({image['file_name']}) has the id {image['id']!r}: "
                                      "an image id is a number or a string")
        earlier = seen.get(image["id"])
        if earlier is None:
            seen[image["id"]] = image
            unique.append(image)
        elif earlier != image:
            raise AnnotationFileError(f"{ann_file}: image id {image['id']!r} names both {earlier['file_name']} and "
                                      f"{image['file_name']}, so their annotations cannot be told apart (files merged "
                                      "from exports that each number images from 1?): give each image its own id")
    return unique


def _check_box(ann: dict[str, Any], size: tuple[int, int], ann_file: str | os.PathLike) -> None:
    """An annotation's ``bbox`` as four numbers: one that is not (three values, strings) is taken from its mask,
    as pycocotools' ``toBbox``, where it has a usable one; else a one-line AnnotationFileError. COCOeval's box
    IoU and the training targets read it; an annotation without a ``bbox`` is left to the dataset's own rule."""
    if "bbox" not in ann:
        return
    box = ann["bbox"]
    if isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box):
        return
    seg = _clean_segmentation(ann.get("segmentation"), *size)
    if seg is not None:
        ann["bbox"] = [float(v) for v in mask_utils.toBbox(segmentation_to_rle(seg, *size))]
        return
    raise AnnotationFileError(f"{ann_file}: annotation id {ann['id']!r} has the bbox {box!r} (not 4 numbers) and "
                              "no mask to take one from")


def load_clean_coco(ann_file: str | os.PathLike) -> tuple[COCO, int, int]:
    """A pycocotools index of ``ann_file`` without orphan annotations and with unique annotation ids.

    pycocotools keeps the last annotation of an id in its index and COCOeval then loads that one once per
    duplicate (coco.py ``createIndex``, cocoeval.py ``_prepare``): the first object is never scored and the last
    twice. Here an annotation that repeats an earlier one of its id whole (a file merged with itself) is skipped;
    one that differs (another object an exporter gave the same id) keeps its object under a new id above the
    file's largest. Training, its evaluation and deploy's evaluation all read the file through this function.

    Returns:
        (coco, orphans, duplicates): the index; annotations skipped because their ``image_id`` names no
        image; annotations whose id an earlier one has (skipped when they repeat it, else given a new id).

    Raises:
        AnnotationFileError: see :func:`read_annotation_json`; or an annotation has no ``id``.
    """
    dataset = read_annotation_json(ann_file)
    dataset["images"] = _unique_images(dataset["images"], ann_file)
    image_ids = {image["id"] for image in dataset["images"]}
    annotations = dataset.get("annotations", [])
    kept: list[dict[str, Any]] = []
    first: dict[Any, dict[str, Any]] = {}
    renumber: list[dict[str, Any]] = []
    orphans = duplicates = 0
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or "id" not in ann:
            raise AnnotationFileError(f"{ann_file}: annotation {i} has no id")
        if "category_id" not in ann:
            raise AnnotationFileError(f"{ann_file}: annotation {i} (id {ann['id']!r}) has no category_id")
        if ann.get("image_id") not in image_ids:
            orphans += 1
        elif _hashable(ann["id"]) and ann["id"] in first:
            duplicates += 1
            if ann != first[ann["id"]]:
                renumber.append(ann)
                kept.append(ann)
        else:
            if _hashable(ann["id"]):
                first[ann["id"]] = ann
            kept.append(ann)
    # COCOeval stores the id of the ground truth a detection matched and counts the match only where that id is
    # not 0 (cocoeval.py accumulate: ``tps = np.logical_and(dtm, np.logical_not(dtIg))``), and it cannot store an
    # id that is not a number (``dtm[tind, dind] = gt[m]['id']`` into a float array): such ids get new ones,
    # as detectron2 renumbers ("id" field must start with 1, convert_to_coco_dict).
    renumbered = {id(a) for a in renumber}
    unusable = [a for a in kept if id(a) not in renumbered and not (_integer(a["id"]) and a["id"] != 0)]
    if unusable:
        logger.warning("%s: %d annotation id(s) that COCOeval cannot score as they are (%s) get new ids above the "
                       "file's largest: pycocotools counts a match to a ground truth of id 0 as a false positive and "
                       "cannot store an id that is not an integer", ann_file, len(unusable),
                       ", ".join(repr(a["id"]) for a in unusable[:5]))
    if renumber or unusable:
        numeric = [a["id"] for a in kept if _integer(a["id"])]
        next_id = max(numeric, default=0) + 1
        for offset, ann in enumerate(renumber + unusable):
            ann["id"] = next_id + offset
    if orphans or duplicates:
        dataset["annotations"] = kept
    sizes = {image["id"]: (int(image["height"]), int(image["width"])) for image in dataset["images"]}
    for ann in kept:
        _check_box(ann, sizes[ann["image_id"]], ann_file)
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, orphans, duplicates


class CocoInstanceDataset(Dataset):
    """COCO-format instance segmentation dataset.

    Args:
        ann_file: ``instances_*.json``.
        img_dir: directory holding the ``file_name`` of every image.
        transforms: callable ``(sample, rng) -> sample`` (see :mod:`solo_npu.data.transforms`).
        train: skip the images mmdet's filter leaves out and those that cannot be read; leave out crowd
            instances and annotations marked ``"ignore": true`` (counted: :attr:`ignored_annotations`); decode
            masks.
        max_instances: keep at most this many instances per image (the largest, in annotation order).
        seed: base seed; sample randomness comes from ``(seed, epoch, index)``.
        with_masks: decode instance masks (default: ``train``; evaluation reads the json instead).
        min_size: training skips an image whose shorter side is under this many pixels (``data.min_size``;
            mmdet's ``filter_cfg=dict(filter_empty_gt=True, min_size=32)``, configs/_base_/datasets/coco_instance.py);
            0 keeps every size.

    Indexing with an int uses :attr:`epoch` (see :meth:`set_epoch`); indexing with an
    ``(index, epoch)`` tuple, as the project's samplers do, makes persistent workers epoch-exact.
    """

    def __init__(self, ann_file: str | os.PathLike, img_dir: str | os.PathLike, transforms: Any = None,
                 train: bool = True, max_instances: int = 100, seed: int = 0,
                 with_masks: bool | None = None, class_names: Sequence[str] | None = None,
                 min_size: int = DEFAULT_MIN_SIZE) -> None:
        if not Path(ann_file).is_file():
            raise FileNotFoundError(f"annotation file not found: {ann_file}")
        if not Path(img_dir).is_dir():
            raise FileNotFoundError(f"image directory not found: {img_dir}")
        self.coco, orphans, duplicates = load_clean_coco(ann_file)
        self.ann_file = Path(ann_file)
        self.img_dir = Path(img_dir)
        self.transforms = transforms
        self.train = train
        self.max_instances = int(max_instances)
        self.seed = int(seed)
        self.with_masks = train if with_masks is None else with_masks
        self.min_size = int(min_size)
        self.epoch = 0

        listed = self.coco.getCatIds()  # the order of the file's `categories` (pycocotools)
        self.cat_ids, self.class_names = category_order(self.coco.loadCats(listed), class_names, str(ann_file))
        self.cat_to_label: dict[int, int] = {c: i for i, c in enumerate(self.cat_ids)}
        self.label_to_cat: list[int] = list(self.cat_ids)
        # Objects of the file's other categories are not used (not counted as faults): a subset on purpose.
        self.unselected = sorted(set(listed) - set(self.cat_ids), key=lambda c: (type(c).__name__, c))
        self._unselected_objects = 0
        self._ignored_objects = 0  # training: annotations marked ``"ignore": true``, left out as mmdet leaves them
        if class_names is None and list(listed) != self.cat_ids:
            # mmdet (mmdet/datasets/coco.py: cat_ids = coco.get_cat_ids(cat_names=classes), cat2label by position)
            # and the original SOLO number the classes in the order pycocotools' getCatIds returns them: the file's.
            shown = ", ".join(str(c) for c in listed[:8]) + (", ..." if len(listed) > 8 else "")
            logger.warning("%s lists its categories in another order than their ids (ids %s): labels here follow "
                           "the ids in ascending order (label 0 = id %d %r); mmdet and SOLO number them in the "
                           "file's order, so a checkpoint trained there has its classes in another order "
                           "(reordered by name where the checkpoint names them)", ann_file, shown,
                           self.cat_ids[0], self.class_names[0])

        self._fault_files: dict[str, dict[str, None]] = defaultdict(dict)  # ordered sets of file names
        self._init_counts: dict[str, int] = defaultdict(int)
        self._init_counts.update(orphan_annotation=orphans, duplicate_annotation_id=duplicates)
        if orphans or duplicates:
            logger.warning("%s: %d orphan annotations (image_id names no image; skipped), %d duplicate annotation "
                           "ids (a repeat of an earlier annotation skipped, another object given a new id)",
                           ann_file, orphans, duplicates)
        self.records = self._scan()
        if self._unselected_objects:
            names = [str(self.coco.cats[c].get("name", c)) for c in self.unselected]
            logger.info("%s: %d objects of the %d categories not among the classes (%s) are not used",
                        ann_file, self._unselected_objects, len(names),
                        ", ".join(names[:8]) + (" ..." if len(names) > 8 else ""))
        if self._ignored_objects:
            logger.info("%s: %d annotations marked \"ignore\": true are not used in training (as mmdet's CocoDataset)",
                        ann_file, self._ignored_objects)
        # Read-time faults may be found in worker processes; shared memory makes them visible here.
        self._read_counts = torch.zeros(_COUNT_ROWS, len(READ_FAULTS), dtype=torch.int64).share_memory_()
        self._logged_files: set[tuple[str, str]] = set()
        for kind, names in self._fault_files.items():
            shown = ", ".join(list(names)[:_LOG_NAMES]) + (" ..." if len(names) > _LOG_NAMES else "")
            action = "skipped" if self.train and kind in ("missing_image", "empty_image", "small_image") else "handled"
            logger.warning("%s: %d (%s) in %s: %s", kind, self._init_counts[kind], action, ann_file, shown)

    # ------------------------------------------------------------------ scanning
    def _fault(self, kind: str, file_name: str) -> None:
        self._init_counts[kind] += 1
        self._fault_files[kind][file_name] = None

    def _scan(self) -> list[dict[str, Any]]:
        """Validate every annotation once and keep the usable images (all of them in evaluation)."""
        records = []
        # One file may mix int and str image ids (pycocotools indexes any hashable id and never sorts them).
        for image_id in sorted(self.coco.getImgIds(), key=lambda i: (type(i).__name__, i)):
            info = self.coco.imgs[image_id]
            h, w, name = int(info["height"]), int(info["width"]), info["file_name"]
            if not (self.img_dir / name).is_file():
                self._fault("missing_image", name)
                if not self.train:  # scored with no predictions, as an unreadable image: leaving it out raises AP
                    records.append({"image_id": image_id, "file_name": name, "height": h, "width": w, "anns": [],
                                    "missing": True})
                continue
            anns = []
            # Whether the image has an annotation of the classes, usable or not, a crowd region included: mmdet's
            # filter (filter_empty_gt) keeps such an image, as it keeps every image of ``cat_img_map`` (3.x
            # CocoDataset.filter_data; 2.x _filter_imgs: ``if self.filter_empty_gt and img_id not in ids_in_cat``).
            annotated = False
            for ann in self.coco.imgToAnns.get(image_id, []):
                annotated = annotated or ann.get("category_id") in self.cat_to_label
                if self.train and ann.get("ignore", False):
                    # mmdet's parser skips it first, whatever else it holds (open-mmlab/mmdetection
                    # mmdet/datasets/coco.py, 2.x CocoDataset._parse_ann_info and 3.x parse_data_info:
                    # ``if ann.get('ignore', False): continue``); its image still counts as annotated above
                    # (cat_img_map lists it). Evaluation leaves the flag to pycocotools, whose COCOeval._prepare
                    # (cocoeval.py) replaces it with ``iscrowd``.
                    self._ignored_objects += 1
                    continue
                if ann.get("iscrowd", 0):
                    continue  # crowd regions are never training targets; COCOeval handles them itself
                if ann.get("category_id") not in self.cat_to_label:
                    if ann.get("category_id") in self.coco.cats:
                        self._unselected_objects += 1
                    else:
                        self._fault("bad_category", name)
                    continue
                seg = _clean_segmentation(ann.get("segmentation"), h, w)
                if seg is None:
                    self._fault("degenerate_segmentation", name)
                    continue
                box = ann.get("bbox") or mask_utils.toBbox(segmentation_to_rle(seg, h, w)).tolist()
                # The checks of mmdet's CocoDataset._parse_ann_info (2.x; parse_data_info in 3.x,
                # mmdet/datasets/coco.py), in its order: a box that overlaps the image by any amount stays
                # (``inter_w = max(0, min(x1 + w, img_w) - max(x1, 0))``, ``if inter_w * inter_h == 0: continue``),
                # then ``if ann['area'] <= 0 or w < 1 or h < 1: continue`` on the given area and the unclipped box.
                # The box kept is clipped to the image, as mmdet's Resize clips it.
                bx, by, bw, bh = (float(v) for v in box[:4])
                x1, y1, x2, y2 = max(bx, 0.0), max(by, 0.0), min(bx + bw, w), min(by + bh, h)
                if max(0.0, x2 - x1) * max(0.0, y2 - y1) == 0:
                    self._fault("box_outside_image", name)
                    continue
                given = ann.get("area")  # mmdet needs it; a file without it gets the clipped box's area here
                if given is not None and float(given) <= 0:
                    self._fault("zero_area", name)
                    continue
                if bw < 1 or bh < 1:
                    self._fault("degenerate_box", name)
                    continue
                area = float(given) if given is not None else (x2 - x1) * (y2 - y1)
                anns.append({"id": ann["id"], "seg": seg, "box": (x1, y1, x2, y2),
                             "label": self.cat_to_label[ann["category_id"]], "area": area})
            if not annotated and (self.train or self.coco.anns):  # an image-info file has no annotations
                self._fault("empty_image", name)
                if self.train:
                    continue
            # An image whose annotations are only crowd regions or unusable (degenerate, outside the image, area 0)
            # stays in training as a negative (no instance), as mmdet trains it.
            if self.train and min(h, w) < self.min_size:  # mmdet: ``if min(width, height) >= min_size`` keeps it
                self._fault("small_image", name)
                continue
            if len(anns) > self.max_instances:
                # The largest instances, kept in annotation order: mmdet keeps every instance in that order, and
                # where two share a grid cell its SOLOv2 targets give the cell to the later one
                # (SOLOV2Head._get_targets_single, mmdet/models/dense_heads/solov2_head.py:
                # ``labels[top:(down + 1), left:(right + 1)] = gt_label`` instance after instance).
                self._fault("too_many_instances", name)
                largest = sorted(range(len(anns)), key=lambda k: -anns[k]["area"])[: self.max_instances]
                anns = [anns[k] for k in sorted(largest)]
            records.append({"image_id": image_id, "file_name": name, "height": h, "width": w, "anns": anns})
        total = len(self.coco.imgs)
        if total and self._init_counts["missing_image"] == total:  # evaluation too: an AP of no image read
            raise ImagesNotFoundError(self._none_found(total))
        if self.train and not any(r["anns"] for r in records):  # negatives alone teach nothing
            anns = self.coco.dataset.get("annotations") or []
            boxes_only = bool(anns) and not any(a.get("segmentation") for a in anns if not a.get("iscrowd", 0))
            why = (f"; {self.ann_file.name} has boxes but no masks ('segmentation'), and SOLOv2 learns from "
                   "instance masks" if boxes_only else "")
            if self._ignored_objects:
                why += f"; {self._ignored_objects} annotations marked \"ignore\": true are left out of training"
            raise AnnotationFileError(f"no usable training image in {self.img_dir}: {dict(self._init_counts)}{why}")
        return records

    def _none_found(self, total: int) -> str:
        """The one line for an image folder that holds none of the annotation file's images, with the folder
        that does when it is one level off (an archive unpacked into a folder of its own name, ``images/val2017``)."""
        first = next(iter(self._fault_files["missing_image"]))
        name = glob.escape(first)
        folder = glob.escape(self.img_dir.name)
        places = (self.img_dir.glob(f"*/{name}"), self.img_dir.parent.glob(f"*/{folder}/{name}"),
                  self.img_dir.parent.glob(f"*/{name}"))
        found = next(itertools.chain(*places), None)
        hint = f"; {first} is in {found.parent}: point the split's img_dir there" if found is not None else ""
        if Path(first).parent != Path(".") and (self.img_dir.parent / first).is_file():
            # a file_name with its folder in it ("val2017/000000000139.jpg"), as some converters write
            hint = (f"; the file names hold a folder ({Path(first).parent}/), and {first} is under "
                    f"{self.img_dir.parent}: point the split's img_dir there")
        return (f"no images found in {self.img_dir}: none of the {total} images {self.ann_file.name} names is there "
                f"(first: {first}){hint}")

    # ------------------------------------------------------------------ public API
    def __len__(self) -> int:
        return len(self.records)

    @property
    def aspect_flags(self) -> np.ndarray:
        """bool [N]: True where the image is landscape or square (w >= h); used for batch grouping."""
        return np.array([r["width"] >= r["height"] for r in self.records], dtype=bool)

    @property
    def ignored_annotations(self) -> int:
        """Annotations left out of training because they are marked ``"ignore": true`` (0 in evaluation)."""
        return self._ignored_objects

    @property
    def image_ids(self) -> list[int]:
        return [r["image_id"] for r in self.records]

    def set_epoch(self, epoch: int) -> None:
        """Epoch used when indexing with a plain int."""
        self.epoch = int(epoch)

    def fault_counts(self) -> dict[str, int]:
        """Faults per kind found so far (annotation faults at init, image faults when read, all workers)."""
        counts = {k: int(self._init_counts.get(k, 0)) for k in INIT_FAULTS}
        counts.update({k: int(v) for k, v in zip(READ_FAULTS, self._read_counts.sum(0).tolist())})
        return counts

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), self.epoch)
        n = len(self.records)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for dataset of size {n}")
        rng = np.random.default_rng([self.seed, epoch, index])
        sample = self._load(index)
        if sample is None and not self.train:  # keep the image slot: blank image, no ground truth
            sample = self._blank(self.records[index])
        for step in range(1, n if sample is None else 0):  # training: the next usable image, deterministically
            sample = self._load((index + step) % n)
            if sample is not None:
                break
        if sample is None:
            raise RuntimeError(f"no readable training image left in {self.img_dir}")
        if self.transforms is not None:
            sample = self.transforms(sample, rng)
        return sample

    # ------------------------------------------------------------------ loading
    def _read_fault(self, kind: str, file_name: str) -> None:
        worker = torch.utils.data.get_worker_info()
        row = 0 if worker is None else 1 + worker.id % (_COUNT_ROWS - 1)
        self._read_counts[row, READ_FAULTS.index(kind)] += 1
        if (kind, file_name) not in self._logged_files:
            self._logged_files.add((kind, file_name))
            if kind == "empty_mask":
                action = "the instances whose mask is empty left out"
            else:
                action = "skipped" if self.train else "kept without ground truth"
            logger.warning("%s: %s (%s)", kind, file_name, action)

    def _stored_orientation(self, rec: dict[str, Any], turned: np.ndarray) -> np.ndarray | None:
        """:func:`stored_orientation` of the record's image; a file read so is decoded once without the turn in
        later reads of this process."""
        stored = stored_orientation(self.img_dir / rec["file_name"], turned, (rec["height"], rec["width"]))
        if stored is not None:
            rec["imread_flags"] = STORED_ORIENTATION
        return stored

    def _blank(self, rec: dict[str, Any]) -> dict[str, Any]:
        h, w = rec["height"], rec["width"]
        masks = np.zeros((0, h, w), np.uint8) if self.with_masks else None
        sample = self._sample(rec, np.zeros((h, w, 3), np.uint8), masks, [])
        sample["meta"]["image_ok"] = False
        return sample

    def _sample(self, rec: dict[str, Any], image: np.ndarray, masks: np.ndarray | None,
                anns: list[dict[str, Any]]) -> dict[str, Any]:
        h, w = image.shape[:2]
        return {
            "image": image,
            "masks": masks,
            "boxes": np.array([a["box"] for a in anns], dtype=np.float32).reshape(-1, 4),
            "labels": np.array([a["label"] for a in anns], dtype=np.int64),
            "meta": {"image_id": rec["image_id"], "file_name": rec["file_name"], "ori_shape": (h, w),
                     "img_shape": (h, w), "scale_factor": (1.0, 1.0), "flip": False, "image_ok": True},
        }

    def _load(self, i: int) -> dict[str, Any] | None:
        rec = self.records[i]
        if rec.get("missing"):  # counted as missing_image when the file was scanned
            return None
        # the flags a first read found for this file, if any
        image = read_image(self.img_dir / rec["file_name"], rec.get("imread_flags", cv2.IMREAD_COLOR))
        if image is None:
            self._read_fault("unreadable_image", rec["file_name"])
            return None
        if image.shape[:2] != (rec["height"], rec["width"]) and "imread_flags" not in rec:
            image = self._stored_orientation(rec, image)
        if image is None:
            self._read_fault("image_size_mismatch", rec["file_name"])
            return None
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        anns = rec["anns"]
        masks = None
        if self.with_masks:
            h, w = rec["height"], rec["width"]
            if anns:
                rles = [segmentation_to_rle(a["seg"], h, w) for a in anns]
                # [N, H, W] view of pycocotools' column-major [H, W, N]; Resize's gathers write it in C order.
                masks = mask_utils.decode(rles).transpose(2, 0, 1)
                nonempty = masks.any(axis=(1, 2))
                if not nonempty.all():
                    self._read_fault("empty_mask", rec["file_name"])
                    masks = masks[nonempty]
                    anns = [a for a, keep in zip(anns, nonempty) if keep]
            else:
                masks = np.zeros((0, h, w), np.uint8)
            # An image whose masks all decode empty trains as a negative, as in mmdet, whose SOLOv2 targets skip
            # an empty mask (SOLOV2Head._get_targets_single: ``if not valid_mask_flag: continue``).
        return self._sample(rec, image, masks, anns)
