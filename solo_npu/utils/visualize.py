"""Instance mask overlays for inspection: coloured masks, contours, class name and score."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from solo_npu.utils.files import atomic_path


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def palette(num: int) -> np.ndarray:
    """``num`` distinct RGB uint8 colours (golden-ratio hues), the same for every call."""
    hues = (np.arange(num) * 0.618033988749895 % 1.0 * 180).astype(np.uint8)
    hsv = np.stack([hues, np.full(num, 200, np.uint8), np.full(num, 255, np.uint8)], axis=1)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def draw_instances(image_rgb: np.ndarray, masks: Any, labels: Any, scores: Any,
                   class_names: Sequence[str] | None = None, score_thr: float = 0.3,
                   alpha: float = 0.5, boxes: Any = None) -> np.ndarray:
    """Overlay the instances scoring at least ``score_thr`` on a copy of the image.

    Args:
        image_rgb: uint8 [H, W, 3].
        masks: bool/uint8 [N, H, W] (numpy or torch), or ``None`` for a model without masks (then ``boxes``).
        labels: int [N] contiguous labels.
        scores: float [N].
        class_names: label -> name (the label number is shown without it).
        score_thr: instances below it are not drawn.
        alpha: mask opacity.
        boxes: float [N, 4] x1y1x2y2 in pixels, drawn as outlines where ``masks`` is ``None``.

    Returns:
        uint8 [H, W, 3] RGB image.
    """
    image = np.asarray(image_rgb)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image_rgb must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if masks is None and boxes is None:
        raise ValueError("draw_instances needs masks or boxes")
    labels, scores = _numpy(labels).astype(np.int64).reshape(-1), _numpy(scores).reshape(-1)
    keep = scores >= score_thr
    if masks is not None:
        masks = _numpy(masks).astype(bool)
        if masks.shape[0] and masks.shape[1:] != image.shape[:2]:
            raise ValueError(f"masks {masks.shape} do not match the image {image.shape[:2]}")
        masks = masks[keep]
    else:
        boxes = _numpy(boxes).astype(np.float64).reshape(-1, 4)[keep]
    labels, scores = labels[keep], scores[keep]
    height, width = image.shape[:2]
    out = image.astype(np.float32)
    colours = palette(max(int(labels.max()) + 1, 1) if labels.size else 1).astype(np.float32)
    order = np.argsort(scores, kind="stable")  # the best instance is drawn last, on top
    if masks is not None:
        for k in order:
            colour = colours[labels[k]]
            out[masks[k]] = (1 - alpha) * out[masks[k]] + alpha * colour
    out = np.round(out).astype(np.uint8)
    for k in order:
        colour = tuple(int(c) for c in colours[labels[k]])
        if masks is not None:
            mask = masks[k].astype(np.uint8)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, colour, 1)
            ys, xs = np.nonzero(mask)
            if xs.size == 0:
                continue
            x, y = int(xs.min()), int(ys.min())
        else:
            x1, y1, x2, y2 = np.round(np.clip(boxes[k], 0, [width - 1, height - 1] * 2)).astype(int).tolist()
            cv2.rectangle(out, (x1, y1), (x2, y2), colour, 1)
            x, y = x1, y1
        name = class_names[labels[k]] if class_names is not None and labels[k] < len(class_names) else str(labels[k])
        text = f"{name} {scores[k]:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        # above the instance, moved into the image where it would run off an edge
        x, y = max(0, min(x, width - tw)), min(max(y, th + base), height)
        cv2.rectangle(out, (x, y - th - base), (x + tw, y), colour, thickness=-1)
        cv2.putText(out, text, (x, y - base), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def upscale_factor(height: int, width: int, min_side: int, max_side: int = 4096) -> int:
    """The smallest integer factor that brings the shorter side to at least ``min_side`` (1 if it already is),
    at most the one that keeps the longer side within ``max_side`` (a 1x3000 image is not enlarged 512 times)."""
    factor = -(-int(min_side) // max(1, min(height, width)))
    return max(1, min(factor, int(max_side) // max(1, height, width)))


def enlarge(image_rgb: np.ndarray, factor: int) -> np.ndarray:
    """The image enlarged by an integer factor (bilinear), a copy when the factor is 1."""
    h, w = image_rgb.shape[:2]
    return cv2.resize(image_rgb, (w * factor, h * factor), interpolation=cv2.INTER_LINEAR) if factor > 1 \
        else image_rgb.copy()


def enlarge_masks(masks: Any, height: int, width: int, factor: int) -> np.ndarray:
    """[N, H, W] masks of an image of ``height`` x ``width`` enlarged by pixel repetition (every mask pixel becomes
    an exact block).

    Raises:
        ValueError: the masks are not that image's (a mask of another size, or of the image turned).
    """
    masks = _numpy(masks).astype(bool)
    if masks.size == 0:
        masks = masks.reshape(0, height, width)
    if masks.ndim != 3 or masks.shape[1:] != (height, width):
        raise ValueError(f"masks {masks.shape} do not match the image {(height, width)}")
    return masks.repeat(factor, axis=1).repeat(factor, axis=2)


def draw_result(image_rgb: np.ndarray, result: dict[str, Any], class_names: Sequence[str] | None = None,
                score_thr: float = 0.3, min_side: int = 512) -> np.ndarray:
    """One image's predictions (``masks`` or, for a model without masks, ``boxes``; ``labels``, ``scores``) drawn
    on it, enlarged by :func:`upscale_factor` as :func:`ground_truth_beside_prediction` enlarges its panels."""
    image = np.asarray(image_rgb)
    h, w = image.shape[:2]
    f = upscale_factor(h, w, min_side)
    masks = result.get("masks")
    boxes = None
    if masks is not None:
        masks = enlarge_masks(masks, h, w, f)
    else:
        boxes = _numpy(result["boxes"]).astype(np.float64).reshape(-1, 4) * f
    return draw_instances(enlarge(image, f), masks, result["labels"], result["scores"], class_names, score_thr,
                          boxes=boxes)


def _caption(panel: np.ndarray, text: str, height: int = 22) -> np.ndarray:
    bar = np.full((height, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (4, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, panel], axis=0)


def ground_truth_beside_prediction(image_rgb: np.ndarray, gt: dict[str, Any], pred: dict[str, Any],
                                   class_names: Sequence[str] | None = None, score_thr: float = 0.3,
                                   min_side: int = 512) -> np.ndarray:
    """Ground truth (left) and prediction (right) of one image, upscaled so that small images stay legible.

    The image is enlarged by an integer factor (bilinear) and the masks by pixel repetition, so every mask
    pixel becomes an exact block; labels and contours are drawn at the enlarged size. Masks that are not
    ``image_rgb``'s size are a ValueError.

    Args:
        image_rgb: uint8 [H, W, 3].
        gt: ``masks`` [N, H, W] and ``labels`` [N].
        pred: ``masks`` [K, H, W], ``labels`` [K] and ``scores`` [K].
        class_names: label -> name.
        score_thr: predictions below it are not drawn.
        min_side: the shorter side of each panel after enlarging (at least).

    Returns:
        uint8 RGB image: two captioned panels side by side.
    """
    image = np.asarray(image_rgb)
    h, w = image.shape[:2]
    f = upscale_factor(h, w, min_side)
    big = enlarge(image, f)
    gt_labels = _numpy(gt["labels"])
    left = draw_instances(big, enlarge_masks(gt["masks"], h, w, f), gt_labels, np.ones(len(gt_labels), np.float32),
                          class_names, score_thr=0.0)
    right = draw_instances(big, enlarge_masks(pred["masks"], h, w, f), pred["labels"], pred["scores"], class_names,
                           score_thr)
    gap = np.full((left.shape[0] + 22, 6, 3), 255, np.uint8)
    return np.concatenate([_caption(left, "ground truth"), gap,
                           _caption(right, f"prediction (score >= {score_thr:g})")], axis=1)


def save_image(path: str | os.PathLike, image_rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image (format from the extension), creating the directory; atomically: ``path`` holds
    the previous image or the complete new one.

    Raises:
        OSError: the image could not be written (``cv2.imwrite`` returned False, a full disk, ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write image {path}")
    return path
