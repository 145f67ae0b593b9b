"""Training data loader throughput: images/s that one worker delivers and the bytes of each batch.

A COCO-layout set of 640x480 JPEG images with 5-15 polygon instances each is written to a temporary
directory; the training pipeline of ``conf/data/coco.yaml`` (keep-ratio resize to 1333x800, flip,
normalise, collate) reads it through a DataLoader with one worker, batch 2. Rows compare the collate's
instance slots: ``100 in the loader`` pads every image to ``max_instances`` (100) slots in the worker (what
``fixed`` did before the padding moved to the device), ``fixed`` hands over the ladder's slots marked to be
padded to 100 on the device, ``ladder`` sizes the slots to the batch from the instance ladder.

Usage: ``python benchmarks/data_throughput.py [--images 64] [--batches 24] [--no-write]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# Before anything imports torch (as in train.py): torch >= 2.5 imports installed device backends at `import torch`,
# and a torch_npu that cannot load CANN's libraries would end the benchmark there, on the CPU too. A set value wins.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import describe_machine, publish  # noqa: E402

from solo_npu.data.build import build_dataloader  # noqa: E402

HEADING = "## Data loader throughput"


def write_coco_like(root: Path, num_images: int, seed: int = 0) -> None:
    """640x480 JPEGs with 5-15 random polygons (COCO's image size and a typical instance count)."""
    rng = np.random.default_rng(seed)
    (root / "train2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, anns = [], []
    for i in range(1, num_images + 1):
        h, w = (480, 640) if i % 4 else (640, 480)  # a quarter portrait, as in COCO
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        for _ in range(int(rng.integers(5, 16))):
            cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
            r = rng.uniform(0.03, 0.3) * min(h, w)
            angles = np.sort(rng.uniform(0, 2 * np.pi, 8))
            poly = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).clip(0, [w - 1, h - 1])
            cv2.fillPoly(image, [poly.round().astype(np.int32)], [int(v) for v in rng.integers(0, 255, 3)])
            x1, y1 = poly.min(0)
            x2, y2 = poly.max(0)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, 81)),
                         "segmentation": [poly.reshape(-1).round(2).tolist()], "iscrowd": 0,
                         "area": float((x2 - x1) * (y2 - y1)), "bbox": [float(x1), float(y1), float(x2 - x1),
                                                                         float(y2 - y1)]})
        name = f"{i:012d}.jpg"
        cv2.imwrite(str(root / "train2017" / name), image)
        images.append({"id": i, "file_name": name, "height": h, "width": w})
    cats = [{"id": c, "name": f"class{c}"} for c in range(1, 81)]
    (root / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))


def batch_bytes(batch: dict) -> int:
    return sum(v.numel() * v.element_size() for v in batch.values() if isinstance(v, torch.Tensor))


ROWS = {  # row -> (data.instance_slots, data.slot_ladder; None: conf/data/coco.yaml's)
    "100 in the loader": ("ladder", [100]),  # no rung below max_instances
    "fixed (100 on the device)": ("fixed", None),
    "ladder": ("ladder", None),
}


def measure(root: Path, row: str, batches: int, workers: int) -> dict[str, float]:
    cfg = OmegaConf.load(ROOT / "conf" / "data" / "coco.yaml")
    cfg.root = str(root)
    cfg.instance_slots, ladder = ROWS[row]
    if ladder is not None:
        cfg.slot_ladder = ladder
    loader = build_dataloader(cfg, "train", batch_size=2, num_workers=workers, pin_memory=False)
    loader.batch_sampler.set_epoch(0)
    it = iter(loader)
    first = next(it)  # worker start-up and the first batch are not timed
    sizes, slot_counts = [batch_bytes(first)], [first["gt_labels"].shape[1]]
    start = time.perf_counter()
    n = 0
    for batch in it:
        sizes.append(batch_bytes(batch))
        slot_counts.append(batch["gt_labels"].shape[1])
        n += 1
        if n == batches:
            break
    seconds = time.perf_counter() - start
    del it, loader
    return {"img_s": 2 * n / seconds / max(1, workers), "mb": float(np.mean(sizes)) / 1e6,
            "slots": float(np.mean(slot_counts))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batches", type=int, default=24, help="timed batches per row")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "coco_like"
        write_coco_like(root, args.images)
        results = {row: measure(root, row, args.batches, args.workers) for row in ROWS}
    base = results["100 in the loader"]["img_s"]
    for slots, r in results.items():
        rows.append(f"| {slots} | {r['slots']:.1f} | {r['mb']:.1f} | {r['img_s']:.2f} | {r['img_s'] / base:.2f}x |")
    publish(HEADING, [
        HEADING, "",
        f"{datetime.date.today()}, {describe_machine()}.",
        f"Command: `python benchmarks/data_throughput.py --images {args.images} --batches {args.batches} "
        f"--workers {args.workers}`. Training pipeline of conf/data/coco.yaml (resize to 1333x800, flip, "
        f"normalise, collate) over 640x480 JPEGs with 5-15 instances, batch 2, {args.workers} worker(s); "
        "images/s per worker, mean MB of tensors per batch as the loader hands it over (what passes through "
        "shared memory). `100 in the loader`: every image padded to max_instances=100 slots in the worker "
        "(what `fixed` did before); `fixed (100 on the device)`: the ladder's slots, padded to 100 after the "
        "copy to the device (the model still sees 100); `ladder`: the ladder's slots.", "",
        "| instance slots | mean slots in the loader | MB / batch | images/s per worker | vs 100 in the loader |",
        "| --- | ---: | ---: | ---: | ---: |",
        *rows,
    ], write=not args.no_write)


if __name__ == "__main__":
    main()
