"""End-of-training artefacts: loss / AP curves and validation images with predicted masks."""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from solo_npu.engine.checkpointer import unwrap
from solo_npu.runtime import DeviceInfo
from solo_npu.utils.files import atomic_path

logger = logging.getLogger(__name__)


def read_metrics(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """``metrics.csv`` as ``{name: [(iteration, value), ...]}`` (later rows win for repeated iterations).

    Iterations are whole numbers (``int``) except for the rows logged before a resume in another number of
    iterations per epoch, renumbered to fractions of the run's iterations (:class:`~solo_npu.engine.writers.CSVWriter`).
    """
    series: dict[str, dict[float, float]] = defaultdict(dict)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            text = row["iteration"]
            series[row["name"]][int(text) if text.isdigit() else float(text)] = float(row["value"])
    return {name: sorted(points.items()) for name, points in series.items()}


def save_plots(run_dir: str | Path) -> list[Path]:
    """``loss.png`` (training losses) and ``ap.png`` (validation AP) from the run's ``metrics.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    series = read_metrics(path)
    written = []
    for file_name, prefix, title in (("loss.png", "train/loss", "training loss"), ("ap.png", "val/", "validation AP")):
        names = [n for n in series if n.startswith(prefix) and (prefix != "val/" or n.endswith("_AP"))]
        if not names:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for name in sorted(names):
            xs, ys = zip(*series[name])
            ax.plot(xs, ys, marker="o" if prefix == "val/" else None, label=name.split("/", 1)[1])
        ax.set_xlabel("iteration")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        try:  # a by-product: a full disk here is a WARNING, the run's results are already written
            with atomic_path(run_dir / file_name) as tmp:
                fig.savefig(tmp, dpi=100)
            written.append(run_dir / file_name)
        except OSError as exc:
            logger.warning("plot %s not written: %s", run_dir / file_name, exc)
        finally:
            plt.close(fig)
    return written


def _ground_truth(dataset: Any, image_id: int) -> dict[str, np.ndarray]:
    """The image's non-crowd instance masks and contiguous labels, from the dataset's COCO annotations."""
    coco = dataset.coco
    anns = [a for a in coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)
            and a.get("category_id") in dataset.cat_to_label]
    info = coco.imgs[image_id]
    masks = np.stack([coco.annToMask(a) for a in anns]) if anns else np.zeros((0, info["height"], info["width"]),
                                                                               np.uint8)
    return {"masks": masks, "labels": np.array([dataset.cat_to_label[a["category_id"]] for a in anns], np.int64)}


@torch.no_grad()
def save_prediction_images(model: nn.Module, dataset: Any, out_dir: str | Path, count: int, info: DeviceInfo,
                           collate: Any = None) -> list[Path]:
    """Draw the ground truth beside the model's predictions for the first ``count`` images of ``dataset`` (PNG
    files, enlarged so that small images stay legible)."""
    if count <= 0:
        return []
    try:
        import cv2

        from solo_npu.data import FixedShapeCollate
        from solo_npu.data.coco import read_image
        from solo_npu.utils.visualize import ground_truth_beside_prediction, save_image
    except ImportError as exc:
        logger.warning("prediction images skipped: %s", exc)
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    net = unwrap(model)
    net.eval()
    collate = collate or FixedShapeCollate(max_instances=int(getattr(dataset, "max_instances", 100)))
    written, failed, skipped = [], 0, 0
    for i in range(min(count, len(dataset))):
        batch = collate([dataset[i]])
        meta = batch["metas"][0]
        result = net.predict(batch["images"].to(info.device), batch["metas"])[0]
        # read as the dataset read it: a photo annotated on its stored pixels without its EXIF turn
        flags = dataset.records[i].get("imread_flags", cv2.IMREAD_COLOR) if hasattr(dataset, "records") \
            else cv2.IMREAD_COLOR
        image = read_image(Path(dataset.img_dir) / meta["file_name"], flags)
        if image is None:
            continue
        try:
            drawn = ground_truth_beside_prediction(image[:, :, ::-1].copy(), _ground_truth(dataset, meta["image_id"]),
                                                   result, class_names=getattr(dataset, "class_names", None))
        except ValueError as exc:  # masks of another size than the image: not drawn scrambled
            skipped += 1
            logger.warning("prediction image of %s skipped: %s", meta["file_name"], exc)
            continue
        path = out_dir / f"{Path(meta['file_name']).stem}.png"
        try:
            save_image(path, drawn)
            written.append(path)
        except OSError as exc:  # a by-product, as the plots
            failed += 1
            logger.warning("prediction image %s not written: %s", path, exc)
    if failed or skipped:
        logger.warning("%d of %d prediction images not written", failed + skipped, failed + skipped + len(written))
    return written
