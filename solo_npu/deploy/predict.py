"""Predict on images: mask-overlay PNGs and a COCO-style ``predictions.json``.

``python deploy.py task=predict checkpoint=PATH input=IMG_OR_DIR output=DIR`` ends here, as does
any caller holding a model (:func:`run_predict` with a module as first argument).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from solo_npu.data import build_collate, build_transforms
from solo_npu.data.coco import class_name_key, read_image, stored_orientation
from solo_npu.evaluation.coco_eval import results_to_coco
from solo_npu.runtime import DeviceInfo, resolve_device
from solo_npu.utils.files import write_json_atomic
from solo_npu.utils.visualize import draw_result, save_image

logger = logging.getLogger(__name__)

__all__ = ["COCO_CATEGORY_IDS", "COCO_CLASS_NAMES", "IMAGE_SUFFIXES", "default_category_ids", "list_images",
           "model_input", "run_predict"]

# the image suffixes of torchvision's IMG_EXTENSIONS (torchvision/datasets/folder.py), which cv2 decodes
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Overlays of small images are enlarged to at least this shorter side, as training's prediction images
# (solo_npu.utils.visualize.ground_truth_beside_prediction), so that labels and contours stay legible.
OVERLAY_MIN_SIDE = 512

# The 80 COCO classes in label order: the ``id`` and ``name`` of each entry of the ``categories`` list of the
# official COCO 2017 annotation files (instances_val2017.json), ids 1..90 with 10 of them unused. A model
# trained on COCO predicts label k for the k-th of them, as mmdet's CocoMetric writes ``cat_ids[label]``.
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)
COCO_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)


def list_images(inputs: str | os.PathLike) -> list[Path]:
    """The image files of ``inputs``: one file, or the images directly in a directory, sorted by name.

    Subfolders are not read, as mmdet's and detectron2's demos read a folder (mmengine's
    ``BaseInferencer._inputs_to_list`` lists it with ``list_dir_or_file(inputs, list_dir=False)``, not recursive by
    default, mmengine/infer/infer.py; mmdet 3.x's ``DetInferencer`` the same with ``suffix=IMG_EXTENSIONS``;
    detectron2's demo/demo.py takes files or one ``glob.glob`` pattern); a folder that has some says how many,
    once.
    """
    path = Path(inputs)
    if path.is_file():
        return [path]
    if path.is_dir():
        entries = sorted(path.iterdir())
        files = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        folders = sum(p.is_dir() for p in entries)
        subfolders, are = (f"{folders} subfolders", "are") if folders != 1 else ("1 subfolder", "is")
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}"
                                    + (f" (its {subfolders} {are} not read)" if folders else ""))
        if folders:
            logger.warning("%s of %s %s not read: only the images directly in it are predicted (give a subfolder as "
                           "input= to predict its images)", subfolders, path, are)
        return files
    raise FileNotFoundError(f"input not found: {path}")


def overlay_paths(files: Sequence[Path], out: Path) -> list[Path]:
    """The overlay of each input file in ``out``, no two the same: ``<stem>.png``; ``<stem>_<suffix>.png``, the
    suffix as the file spells it, for files whose stems are the same (``x.png`` and ``x.jpg``: ``x_png.png`` and
    ``x_jpg.png``); and ``_2``, ``_3``, ... added to a name another overlay already has (``x.jpg``, ``x.png`` and
    ``x_jpg.png``: ``x_jpg.png``, ``x_png.png``, ``x_jpg_2.png``). Names are compared ignoring case, so that no
    overlay replaces another on a file system that ignores it either (``x.JPG`` and ``x.jpg``: ``x_JPG.png``,
    ``x_jpg_2.png``).

    Raises:
        FileExistsError: an overlay would replace an input image (``output`` is the input folder); one line.
    """
    stems: dict[str, int] = {}
    for file in files:
        stems[file.stem.casefold()] = stems.get(file.stem.casefold(), 0) + 1
    taken: set[str] = set()
    paths = []
    for file in files:
        base = file.stem if stems[file.stem.casefold()] == 1 else f"{file.stem}_{file.suffix.lstrip('.')}"
        name, count = base, 1
        while name.casefold() in taken:
            count += 1
            name = f"{base}_{count}"
        taken.add(name.casefold())
        paths.append(out / f"{name}.png")
    inputs = {f.resolve() for f in files}
    clash = next((p for p in paths if p.resolve() in inputs), None)
    if clash is not None:
        raise FileExistsError(f"output={out} would overwrite the input image {clash.name} with its overlay: "
                              "choose another output folder")
    return paths


def _device(device: Any) -> torch.device:
    if isinstance(device, DeviceInfo):
        return device.device
    if device is None or isinstance(device, str):
        return resolve_device(device or "auto").device
    return torch.device(device)


def default_category_ids(num_classes: int, class_names: Sequence[str] | None = None) -> list[int]:
    """label -> category id in ``predictions.json`` when no annotation file gives the dataset's ids.

    The 80 COCO classes (by name, in any order; or 80 classes without names) get COCO's category ids
    (:data:`COCO_CATEGORY_IDS`); any other class list gets ``label + 1``, with a WARNING that says so.
    """
    coco = {name: cat for name, cat in zip(COCO_CLASS_NAMES, COCO_CATEGORY_IDS)}
    if class_names is not None:
        names = [class_name_key(n) for n in class_names]
        if len(names) == len(coco) and set(names) == set(coco):
            return [coco[n] for n in names]
    elif num_classes == len(coco):
        logger.warning("the model's 80 classes have no names: taken to be COCO's, category_id in predictions.json "
                       "is COCO's (1..90); configure the dataset (data.root and its ann_file) to write its ids")
        return list(COCO_CATEGORY_IDS)
    logger.warning("category_id in predictions.json is label + 1 (1..%d): the classes are not COCO's 80 and no "
                   "annotation file gives their ids (configure the dataset: data.root and its ann_file)", num_classes)
    return list(range(1, num_classes + 1))


def model_input(model: nn.Module, data_cfg: Any = None,
                input_shape: Sequence[int] | None = None) -> tuple[Callable[..., dict[str, Any]],
                                                                  Callable[[list[dict[str, Any]]], dict[str, Any]]]:
    """(transforms, collate) that make one image the model's input.

    A model with its own :class:`~solo_npu.models.contract.Preprocessing` (FCOS, SSD-ResNet34, YolactEdge) gets
    what deploy's preprocess stage makes of an image: :meth:`ModelAdapter.transforms` (its resize, channel order
    and mean) and :func:`~solo_npu.deploy.preprocess.collate_canvas` on its static ``input_shape`` (H, W). SOLOv2,
    which leaves both to the data config, gets the data config's transforms and collate, as training evaluates.

    Raises:
        ValueError: the model needs ``input_shape``, or ``data_cfg``, and it is not given.
    """
    from solo_npu.deploy.adapters import ModelAdapter

    adapter = ModelAdapter(model)
    if adapter.preprocessing.style is None:
        if data_cfg is None:
            raise ValueError("run_predict needs data_cfg (the data config's resize, normalisation and padding)")
        return build_transforms(data_cfg, train=False), build_collate(data_cfg)
    if input_shape is None:
        raise ValueError(f"run_predict needs input_shape for {type(model).__name__}: the (H, W) of its static input "
                         "(deploy.input_shape), which its preprocessing fits every image to")
    from solo_npu.deploy.preprocess import collate_canvas

    canvas = (int(input_shape[0]), int(input_shape[1]))

    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        images, metas = collate_canvas(samples, canvas, adapter.pad_position)
        return {"images": images, "metas": metas}

    return adapter.transforms(canvas), collate


def _sample(image_rgb: np.ndarray, image_id: int, file_name: str) -> dict[str, Any]:
    h, w = image_rgb.shape[:2]
    return {"image": image_rgb, "masks": None, "boxes": np.zeros((0, 4), np.float32),
            "labels": np.zeros((0,), np.int64),
            "meta": {"image_id": image_id, "file_name": file_name, "ori_shape": (h, w), "img_shape": (h, w),
                     "scale_factor": (1.0, 1.0), "flip": False, "image_ok": True}}


def _annotated_pixels(file: Path, turned: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``file`` as the annotation file's ``size`` (height, width) says it was annotated: as stored where only that
    has the size (:func:`solo_npu.data.coco.stored_orientation`, as the datasets read it), else as read, with a
    WARNING that its predictions are not in the annotation file's pixels."""
    stored = stored_orientation(file, turned, size)
    if stored is not None:
        return stored
    logger.warning("%s is %dx%d but the annotation file gives %dx%d: its predictions are in the image's own pixels, "
                   "which scoring against that file cannot match (evaluation counts such an image as "
                   "image_size_mismatch)", file.name, turned.shape[1], turned.shape[0], size[1], size[0])
    return turned


def _image_ids(files: Sequence[Path], known: Mapping[str, Any] | None) -> list[Any]:
    """The ``image_id`` of each file in ``predictions.json``: the annotation file's id of its file name (``known``),
    so that ``COCO.loadRes`` against that file accepts the predictions; without such a file, its position in the
    listing. Files that the annotation file does not have get an id above all of the file's (position + the largest
    id + 1), said once (a WARNING when others are in it, else an INFO line): the position itself could be the id
    of another image of the file, whose ground truth ``loadRes`` and COCOeval would then score these predictions
    against without a word, where an id the file does not have makes ``loadRes`` refuse them."""
    positions = list(range(len(files)))
    if not known:
        return positions
    ids = [known.get(f.name) for f in files]
    missing = [f.name for f, i in zip(files, ids) if i is None]
    base = 1 + max((i for i in known.values() if isinstance(i, int) and not isinstance(i, bool)), default=-1)
    if len(missing) == len(files):
        logger.info("none of the images is in the annotation file: image_id in predictions.json is %d + the image's "
                    "position (%d..%d), ids the file does not have", base, base, base + len(files) - 1)
        return [base + k for k in positions]
    if missing:
        ids = [base + k if i is None else i for k, i in enumerate(ids)]
        logger.warning("%d of the %d images are not in the annotation file (%s%s): their image_id in "
                       "predictions.json is %d + their position, an id the file does not have, so COCO's loadRes "
                       "against it needs their entries left out", len(missing), len(files), ", ".join(missing[:3]),
                       ", ..." if len(missing) > 3 else "", base)
    return ids


@torch.no_grad()
def run_predict(model: nn.Module | Any, inputs: str | os.PathLike | None = None,
                output_dir: str | os.PathLike | None = None, class_names: Sequence[str] | None = None,
                data_cfg: Any = None, device: Any = None, score_thr: float = 0.3,
                label_to_cat: Sequence[int] | None = None,
                input_shape: Sequence[int] | None = None,
                image_ids: Mapping[str, Any] | None = None,
                image_sizes: Mapping[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """Run ``model.predict`` on every image of ``inputs`` and write overlays and predictions.

    Args:
        model: a detector with ``predict(images, metas)``, or a deploy config (``task=predict``):
            then the model, checkpoint, ``input``, ``output``, ``data`` and device come from it.
        inputs: an image file or a directory of images.
        output_dir: where ``<stem>.png`` overlays (:func:`overlay_paths`; small images enlarged by an integer
            factor to a shorter side of at least :data:`OVERLAY_MIN_SIDE`) and ``predictions.json`` go.
        class_names: label -> name for the overlays and the json (``category_name``).
        data_cfg: the ``data`` config (resize scale, normalisation, padding), as in training: the input of a
            model without preprocessing of its own (SOLOv2); see :func:`model_input`.
        device: a DeviceInfo, torch.device, name, or ``None`` for automatic selection.
        score_thr: instances drawn on the overlays score at least this; the json keeps all.
        label_to_cat: label -> category id in the json, e.g. the dataset's ``label_to_cat`` (default:
            :func:`default_category_ids`: COCO's ids for the 80 COCO classes, otherwise ``label + 1``).
        input_shape: (H, W) of the static input of a model with its own preprocessing (FCOS, SSD-ResNet34,
            YolactEdge: ``deploy.input_shape``), which deploy's preprocess stage fits every image to.
        image_ids: file name -> image id of the annotation file (:func:`_image_ids`); default: positions.
        image_sizes: file name -> (height, width) of the annotation file: an image read turned by its EXIF
            orientation whose stored pixels have that size is read as stored (as the training data is, the
            annotation's pixels); another size is a WARNING (its predictions cannot be scored against the file).

    Returns:
        ``{"images", "skipped", "instances", "output_dir", "predictions"}``. An image that cannot be read (also a
        JPEG cut short) or predicted is skipped with a WARNING and counted.

    Raises:
        DeployError: no image could be predicted (``predictions.json`` is written, empty).
    """
    if not isinstance(model, nn.Module):
        return _run_from_config(model)
    if inputs is None or output_dir is None:
        raise ValueError("run_predict needs inputs and output_dir")
    transforms, collate = model_input(model, data_cfg, input_shape)
    files = list_images(inputs)
    out = Path(output_dir)
    overlays = overlay_paths(files, out)
    out.mkdir(parents=True, exist_ok=True)
    dev = _device(device)
    model = model.to(dev).eval()
    names = list(class_names) if class_names is not None else None
    if label_to_cat is None:
        num = len(names) if names is not None else int(getattr(model, "num_classes", 0) or 0)
        label_to_cat = default_category_ids(num, names)
    cats = list(label_to_cat)
    ids = _image_ids(files, image_ids)
    entries: list[dict[str, Any]] = []
    drawn: list[dict[str, Any]] = []  # overlays.json: which image each overlay shows (names can be _2, _3, ...)
    skipped = instances = 0
    for position, (image_id, file) in enumerate(zip(ids, files)):
        bgr = read_image(file)  # None also for a JPEG cut short, which cv2 would give half grey
        if bgr is None:
            skipped += 1
            logger.warning("skipped unreadable image %s (%d skipped so far)", file, skipped)
            continue
        annotated = (image_sizes or {}).get(file.name)
        if annotated is not None and bgr.shape[:2] != tuple(annotated):
            bgr = _annotated_pixels(file, bgr, tuple(annotated))
        try:  # one image that cannot be predicted or drawn does not cost the others their results
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            sample = transforms(_sample(rgb, image_id, file.name), np.random.default_rng(0))
            batch = collate([sample])
            result = model.predict(batch["images"].to(dev), batch["metas"])[0]
            result = {k: v.cpu() for k, v in result.items()}
            found = results_to_coco([image_id], [result], cats)
            save_image(overlays[position], draw_result(rgb, result, names, score_thr, OVERLAY_MIN_SIDE))
        except Exception as exc:  # counted and named; the run goes on
            skipped += 1
            logger.warning("skipped %s: %s: %s (%d skipped so far)", file, type(exc).__name__, exc, skipped)
            continue
        drawn.append({"overlay": overlays[position].name, "file": str(file), "file_name": file.name,
                      "image_id": image_id})
        for entry in found:
            entry["file_name"] = file.name
            if names is not None:
                entry["category_name"] = names[cats.index(entry["category_id"])]
            entries.append(entry)
        instances += int((result["scores"] >= score_thr).sum())
    pred_path = out / "predictions.json"
    write_json_atomic(pred_path, entries)
    write_json_atomic(out / "overlays.json", drawn, indent=1)
    if skipped == len(files):
        from solo_npu.deploy.context import DeployError

        raise DeployError(f"no image of {inputs} could be predicted ({skipped} skipped, see the WARNINGs above)")
    logger.info("predicted %d images (%d skipped), %d instances >= %.2f, written to %s", len(files) - skipped,
                skipped, instances, score_thr, out)
    return {"images": len(files) - skipped, "skipped": skipped, "instances": instances, "output_dir": str(out),
            "predictions": str(pred_path)}


def _dataset_categories(cfg: Any, num_classes: int, names: Sequence[str] | None = None
                        ) -> tuple[list[int], list[str], dict[str, Any], dict[str, tuple[int, int]]] | None:
    """(label -> category id, class names, file name -> image id, file name -> (height, width)) of the configured
    annotation file: the label
    map evaluation uses, the categories of the model's class ``names`` when the file has each of them, else all
    of its categories in id order; ``None`` when no annotation file is there or its class count is not the
    model's. Image ids are by ``file_name``, and by its last part where that names one image only."""
    from solo_npu.data import AnnotationFileError
    from solo_npu.data.coco import category_order, read_annotation_json
    from solo_npu.deploy.context import DeployError
    from solo_npu.deploy.preprocess import dataset_files

    split = str(OmegaConf.select(cfg, "deploy.split", default="val") or "val")
    try:
        ann_file = dataset_files(cfg.data, split)[0]
    except DeployError:
        return None
    if not ann_file.is_file():
        logger.info("no annotation file at %s: category ids are not the dataset's", ann_file)
        return None
    try:
        dataset = read_annotation_json(ann_file)
        categories = dataset["categories"]
        try:
            label_to_cat, names = category_order(categories, names, str(ann_file))
        except AnnotationFileError:  # not every class of the model is there by name: the file's own order
            label_to_cat, names = category_order(categories)
    except (AnnotationFileError, KeyError, TypeError) as exc:  # the dataset's faults are evaluation's business
        logger.info("%s: category ids are not the dataset's (%s)", ann_file, exc)
        return None
    if len(label_to_cat) != num_classes:
        logger.info("%s has %d categories and the model %d: its category ids are not used", ann_file,
                    len(label_to_cat), num_classes)
        return None
    entries: dict[str, dict[str, Any]] = {}  # file name (and a last part naming one image only) -> its entry
    by_base: dict[str, list[dict[str, Any]]] = {}
    for image in dataset["images"]:
        if isinstance(image, dict) and isinstance(image.get("file_name"), str) and "id" in image:
            entries.setdefault(image["file_name"], image)
            by_base.setdefault(Path(image["file_name"]).name, []).append(image)
    for base, found in by_base.items():
        if len(found) == 1:
            entries.setdefault(base, found[0])
    image_ids = {name: image["id"] for name, image in entries.items()}
    sizes = {name: (image["height"], image["width"]) for name, image in entries.items()
             if all(isinstance(image.get(k), int) and image[k] > 0 for k in ("height", "width"))}
    logger.info("category and image ids from %s", ann_file)
    return label_to_cat, names, image_ids, sizes


def _run_from_config(cfg: Any) -> dict[str, Any]:
    """``task=predict`` of deploy.py: model and checkpoint from the deploy config.

    Category ids: the configured annotation file's categories of the model's class names, else of its class
    count (what evaluation writes), else :func:`default_category_ids`; image ids: that file's, by file name
    (:func:`_image_ids`). Names: the checkpoint's, else the data config's, else the annotation file's. A
    SOLOv2 checkpoint trained on another canvas than the data config's is a WARNING, as in ``train.py``'s
    evaluation (:func:`~solo_npu.config.shapes.checkpoint_notices`), and so is another test scale.
    """
    from solo_npu.config.shapes import checkpoint_notices
    from solo_npu.deploy.context import load_trained_model, start_device

    device = start_device(cfg)  # the runtime section applied, as the deploy stages apply it
    model, classes, trained = load_trained_model(cfg)
    num = classes.num_classes
    configured = cfg.data.get("class_names")
    configured = [str(n) for n in configured] if configured is not None and len(configured) == num else None
    # The checkpoint's names say what its outputs are; the data config's only name a model without them.
    names = list(classes.names) if classes.names is not None else configured
    if configured is not None and [class_name_key(n) for n in configured] != [class_name_key(n) for n in names]:
        logger.warning("data.class_names (%s, ...) are not the checkpoint's classes (%s, ...): predictions are named "
                       "and numbered as the checkpoint's", ", ".join(configured[:3]), ", ".join(names[:3]))
    found = _dataset_categories(cfg, num, names)
    image_ids = image_sizes = None
    if found is not None:
        label_to_cat, dataset_names, image_ids, image_sizes = found
        if names is not None and [class_name_key(n) for n in names] != [class_name_key(n) for n in dataset_names]:
            logger.warning("the model's class names (%s, ...) are not the annotation file's (%s, ...); its category "
                           "ids are written by label", ", ".join(names[:3]), ", ".join(dataset_names[:3]))
        names = names or dataset_names
    else:
        label_to_cat = default_category_ids(num, names)
    input_shape = None
    if getattr(model, "preprocessing", None) is not None and model.preprocessing.style is not None:
        from solo_npu.deploy.context import resolve_settings

        input_shape = resolve_settings(cfg, int(getattr(model, "size_divisor", 1)),
                                       getattr(model, "check_input_shape", None)).input_shape
    else:  # the data config's canvas, as train.py's evaluation compares it
        for notice in checkpoint_notices(trained, cfg.data, cfg.model.get("name"), "prediction"):
            logger.warning(notice)
    return run_predict(model, cfg.input, str(cfg.output), names, cfg.data, device, float(cfg.score_thr),
                       label_to_cat=label_to_cat, input_shape=input_shape, image_ids=image_ids,
                       image_sizes=image_sizes)
