"""Predict on images: mask-overlay PNGs and a COCO-style ``predictions.json``.

``python deploy.py task=predict checkpoint=PATH input=IMG_OR_DIR output=DIR`` ends here, as does
any caller holding a model (:func:`run_predict` with a module as first argument).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from solo_npu.data import build_collate, build_transforms
from solo_npu.evaluation.coco_eval import results_to_coco
from solo_npu.runtime import DeviceInfo, resolve_device
from solo_npu.utils.visualize import draw_instances, save_image

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "list_images", "run_predict"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(inputs: str | os.PathLike) -> list[Path]:
    """The image files of ``inputs`` (one file, or the images of a directory, sorted by name)."""
    path = Path(inputs)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
        return files
    raise FileNotFoundError(f"input not found: {path}")


def _device(device: Any) -> torch.device:
    if isinstance(device, DeviceInfo):
        return device.device
    if device is None or isinstance(device, str):
        return resolve_device(device or "auto").device
    return torch.device(device)


def _sample(image_rgb: np.ndarray, image_id: int, file_name: str) -> dict[str, Any]:
    h, w = image_rgb.shape[:2]
    return {"image": image_rgb, "masks": None, "boxes": np.zeros((0, 4), np.float32),
            "labels": np.zeros((0,), np.int64),
            "meta": {"image_id": image_id, "file_name": file_name, "ori_shape": (h, w), "img_shape": (h, w),
                     "scale_factor": (1.0, 1.0), "flip": False, "image_ok": True}}


@torch.no_grad()
def run_predict(model: nn.Module | Any, inputs: str | os.PathLike | None = None,
                output_dir: str | os.PathLike | None = None, class_names: Sequence[str] | None = None,
                data_cfg: Any = None, device: Any = None, score_thr: float = 0.3,
                label_to_cat: Sequence[int] | None = None) -> dict[str, Any]:
    """Run ``model.predict`` on every image of ``inputs`` and write overlays and predictions.

    Args:
        model: a detector with ``predict(images, metas)``, or a deploy config (``task=predict``):
            then the model, checkpoint, ``input``, ``output``, ``data`` and device come from it.
        inputs: an image file or a directory of images.
        output_dir: where ``<stem>.png`` overlays and ``predictions.json`` go.
        class_names: label -> name for the overlays and the json.
        data_cfg: the ``data`` config (resize scale, normalisation, padding), as in training.
        device: a DeviceInfo, torch.device, name, or ``None`` for automatic selection.
        score_thr: instances drawn on the overlays score at least this; the json keeps all.
        label_to_cat: label -> category id in the json (default ``label + 1``).

    Returns:
        ``{"images", "skipped", "instances", "output_dir", "predictions"}``.
    """
    if not isinstance(model, nn.Module):
        return _run_from_config(model)
    if inputs is None or output_dir is None or data_cfg is None:
        raise ValueError("run_predict needs inputs, output_dir and data_cfg")
    files = list_images(inputs)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = _device(device)
    model = model.to(dev).eval()
    transforms = build_transforms(data_cfg, train=False)
    collate = build_collate(data_cfg)
    names = list(class_names) if class_names is not None else None
    if label_to_cat is None:
        num = len(names) if names is not None else int(getattr(model, "num_classes", 0) or 0)
        label_to_cat = list(range(1, num + 1))
    cats = list(label_to_cat)
    entries: list[dict[str, Any]] = []
    skipped = instances = 0
    for image_id, file in enumerate(files):
        bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if bgr is None:
            skipped += 1
            logger.warning("skipped unreadable image %s (%d skipped so far)", file, skipped)
            continue
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        sample = transforms(_sample(rgb, image_id, file.name), np.random.default_rng(0))
        batch = collate([sample])
        result = model.predict(batch["images"].to(dev), batch["metas"])[0]
        result = {k: v.cpu() for k, v in result.items()}
        for entry in results_to_coco([image_id], [result], cats):
            entry["file_name"] = file.name
            if names is not None:
                entry["category_name"] = names[cats.index(entry["category_id"])]
            entries.append(entry)
        instances += int((result["scores"] >= score_thr).sum())
        overlay = draw_instances(rgb, result["masks"], result["labels"], result["scores"], names, score_thr)
        save_image(out / f"{file.stem}.png", overlay)
    pred_path = out / "predictions.json"
    pred_path.write_text(json.dumps(entries))
    logger.info("predicted %d images (%d skipped), %d instances >= %.2f, written to %s", len(files) - skipped,
                skipped, instances, score_thr, out)
    return {"images": len(files) - skipped, "skipped": skipped, "instances": instances, "output_dir": str(out),
            "predictions": str(pred_path)}


def _run_from_config(cfg: Any) -> dict[str, Any]:
    """``task=predict`` of deploy.py: model and checkpoint from the deploy config."""
    from omegaconf import OmegaConf

    from solo_npu.deploy.context import build_eager_model

    device = resolve_device(str(OmegaConf.select(cfg, "runtime.device", default="auto")))
    model = build_eager_model(cfg)
    names = cfg.data.get("class_names")
    return run_predict(model, cfg.input, str(cfg.output), list(names) if names is not None else None, cfg.data,
                       device, float(cfg.score_thr))
