"""A small, deterministic COCO-format instance segmentation dataset of coloured shapes.

Images hold 1-6 circles, rectangles and triangles of widely varying size on a textured background.
Later shapes occlude earlier ones, the occluded masks exclude the occluder, and instances that
become tiny are dropped. The output uses the exact COCO layout::

    out_dir/train2017/000000000001.png ...
    out_dir/val2017/...
    out_dir/annotations/instances_train2017.json
    out_dir/annotations/instances_val2017.json

The same arguments always give byte-identical files.

Usage: ``python -m solo_npu.data.synthetic --out data/synthetic --num-train 96 --num-val 24 --size 256``
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from solo_npu.utils.files import write_text_atomic

# Deliberately non-contiguous COCO category ids so the label maps are exercised.
CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "rectangle", "supercategory": "shape"},
    {"id": 7, "name": "triangle", "supercategory": "shape"},
]
MIN_AREA = 24  # pixels; instances whose visible part is smaller are dropped
MIN_VISIBLE = 0.2  # fraction of the drawn area that must stay visible
SPLITS = {"train": 0, "val": 1}


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-frequency colour blobs plus per-pixel noise."""
    gh, gw = int(rng.integers(3, 7)), int(rng.integers(3, 7))
    coarse = rng.uniform(40, 200, size=(gh, gw, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0.0, 12.0, size=(h, w, 3)).astype(np.float32)
    return np.clip(smooth + noise, 0, 255)


SHAPE_SCALE = (0.08, 0.8)  # shape sizes, as fractions of the image's shorter side


def _shape_mask(rng: np.random.Generator, kind: str, h: int, w: int,
                scale: tuple[float, float] = SHAPE_SCALE) -> np.ndarray:
    """Rasterise one shape with a log-uniform size (so every SOLO scale range sees instances)."""
    side = math.exp(rng.uniform(math.log(scale[0] * min(h, w)), math.log(scale[1] * min(h, w))))
    cx, cy = rng.uniform(0.1 * w, 0.9 * w), rng.uniform(0.1 * h, 0.9 * h)
    mask = np.zeros((h, w), np.uint8)
    if kind == "circle":
        cv2.circle(mask, (round(cx), round(cy)), max(2, round(side / 2)), 1, thickness=-1)
    elif kind == "rectangle":
        aspect = math.exp(rng.uniform(-0.7, 0.7))
        bw, bh = side * math.sqrt(aspect), side / math.sqrt(aspect)
        angle = float(rng.uniform(-30, 30))
        pts = cv2.boxPoints(((cx, cy), (bw, bh), angle))
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    else:
        theta = rng.uniform(0, 2 * math.pi) + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, 3)
        radius = side / 2 * rng.uniform(0.8, 1.2, 3)
        pts = np.stack([cx + radius * np.cos(theta), cy + radius * np.sin(theta)], axis=1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask


def _segmentation(mask: np.ndarray) -> list[list[float]] | dict[str, Any]:
    """Polygons from the mask contours, or an uncompressed-size RLE when the mask has holes."""
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    has_holes = hierarchy is not None and bool((hierarchy[0][:, 3] >= 0).any())
    polygons = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
    if has_holes or not polygons:
        rle = mask_utils.encode(np.asfortranarray(mask))
        return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return polygons


def _render_image(rng: np.random.Generator, h: int, w: int, num_instances: int,
                  scale: tuple[float, float] = SHAPE_SCALE) -> tuple[np.ndarray, list]:
    """Draw shapes back to front; return the RGB image and the visible (mask, category id) pairs."""
    image = _background(rng, h, w)
    drawn: list[tuple[np.ndarray, int, int]] = []  # (visible mask, category id, drawn area)
    for _ in range(num_instances):
        cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        mask = _shape_mask(rng, cat["name"], h, w, scale)
        area = int(mask.sum())
        if area == 0:
            continue
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        shade = rng.uniform(0.75, 1.0, size=(h, w, 1)).astype(np.float32)
        image = np.where(mask[..., None] > 0, colour * shade, image)
        drawn = [(m & (1 - mask), c, a) for m, c, a in drawn]  # the new shape occludes the old ones
        drawn.append((mask, cat["id"], area))
    kept = [(m, c) for m, c, a in drawn if m.sum() >= max(MIN_AREA, MIN_VISIBLE * a)]
    return np.round(image).astype(np.uint8), kept


def _image_size(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """Height and width with the area of a ``size`` square and an aspect ratio in [0.6, 1.7]."""
    aspect = math.exp(rng.uniform(math.log(0.6), math.log(1.7)))
    return max(16, round(size / math.sqrt(aspect))), max(16, round(size * math.sqrt(aspect)))


def _make_split(out_dir: Path, split: str, num_images: int, size: int, seed: int,
                scale: tuple[float, float] = SHAPE_SCALE, max_shapes: int = 6) -> dict[str, Any]:
    img_dir = out_dir / f"{split}2017"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = 1
    for i in range(num_images):
        image_id = i + 1
        rng = np.random.default_rng([seed, SPLITS[split], image_id])
        h, w = _image_size(rng, size)
        image, instances = _render_image(rng, h, w, int(rng.integers(1, max_shapes + 1)), scale)
        file_name = f"{image_id:012d}.png"
        ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"could not encode {file_name}")
        (img_dir / file_name).write_bytes(buf.tobytes())
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for mask, cat_id in instances:
            seg = _segmentation(mask)
            # Area and box come from the stored segmentation so that the json is self-consistent.
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w)) if isinstance(seg, list) else seg
            if isinstance(rle, dict) and isinstance(rle["counts"], str):
                rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
            area = float(mask_utils.area(rle))
            if area < 1:
                continue
            bbox = [round(float(v), 2) for v in mask_utils.toBbox(rle)]
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": cat_id, "segmentation": seg,
                "area": area, "bbox": bbox, "iscrowd": 0,
            })
            ann_id += 1
    return {
        "info": {"description": "solo-npu synthetic shapes", "version": "1.0", "year": 2024},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }


def generate_synthetic_coco(
    out_dir: str | os.PathLike, num_train: int, num_val: int, size: int = 256, seed: int = 0,
    shape_scale: tuple[float, float] = SHAPE_SCALE, max_shapes: int = 6,
) -> Path:
    """Write the synthetic dataset under ``out_dir`` and return ``out_dir`` as a Path.

    Args:
        out_dir: dataset root; ``train2017/``, ``val2017/`` and ``annotations/`` are created in it.
        num_train: number of training images.
        num_val: number of validation images.
        size: the side of a square with the area of every image (aspect ratios vary around it).
        seed: random seed; the same seed gives byte-identical output.
        shape_scale: (min, max) shape size as fractions of the image's shorter side; sizes are
            log-uniform in between. Raising the minimum leaves out the small objects.
        max_shapes: each image draws 1..max_shapes shapes (fewer stay visible after occlusion).
    """
    if num_train < 0 or num_val < 0 or size < 16:
        raise ValueError(f"need num_train, num_val >= 0 and size >= 16, got {num_train}, {num_val}, {size}")
    lo, hi = (float(v) for v in shape_scale)
    if not 0 < lo <= hi <= 1 or max_shapes < 1:
        raise ValueError(f"need 0 < shape_scale[0] <= shape_scale[1] <= 1 and max_shapes >= 1, "
                         f"got {shape_scale}, {max_shapes}")
    out = Path(out_dir)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split, num in (("train", num_train), ("val", num_val)):
        dataset = _make_split(out, split, num, size, seed, (lo, hi), int(max_shapes))
        text = json.dumps(dataset, separators=(",", ":"))
        write_text_atomic(out / "annotations" / f"instances_{split}2017.json", text)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="dataset root directory")
    parser.add_argument("--num-train", type=int, default=96)
    parser.add_argument("--num-val", type=int, default=24)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape-scale", type=float, nargs=2, default=SHAPE_SCALE, metavar=("MIN", "MAX"),
                        help="shape sizes as fractions of the shorter image side")
    parser.add_argument("--max-shapes", type=int, default=6)
    args = parser.parse_args(argv)
    root = generate_synthetic_coco(args.out, args.num_train, args.num_val, size=args.size, seed=args.seed,
                                   shape_scale=tuple(args.shape_scale), max_shapes=args.max_shapes)
    print(f"wrote synthetic COCO dataset to {root}")


if __name__ == "__main__":
    main()
