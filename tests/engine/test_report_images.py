"""The end-of-training prediction images: drawn on the image as the dataset read it."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from omegaconf import OmegaConf
from PIL import Image

from solo_npu.data import CocoInstanceDataset, build_collate, build_transforms
from solo_npu.engine.report import save_prediction_images
from solo_npu.runtime import resolve_device
from solo_npu.utils.visualize import palette

ROOT = Path(__file__).resolve().parents[2]


class NoPredictions(torch.nn.Module):
    def predict(self, images, metas):
        return [{"masks": torch.zeros((0, *m["ori_shape"]), dtype=torch.bool), "labels": torch.zeros(0),
                 "scores": torch.zeros(0)} for m in metas]


def test_ground_truth_is_drawn_where_it_was_annotated_on_an_exif_turned_photo(tmp_path):
    """A photo stored 130 wide x 90 high with EXIF orientation 6, annotated on the stored pixels: the dataset reads
    it as stored (without the turn); the report read it again turned, and drew the masks reshaped to its 90x130."""
    root = tmp_path / "exif"
    (root / "img").mkdir(parents=True)
    stored = np.full((90, 130, 3), 60, np.uint8)
    stored[10:40, 10:70] = (250, 40, 40)  # the annotated rectangle, top left of the stored bitmap
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(root / "img" / "a.jpg", quality=95, exif=exif.tobytes())
    ann = {"images": [{"id": 1, "file_name": "a.jpg", "width": 130, "height": 90}],
           "categories": [{"id": 1, "name": "box"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 1800.0,
                            "bbox": [10, 10, 60, 30], "segmentation": [[10, 10, 70, 10, 70, 40, 10, 40]]}]}
    (root / "ann.json").write_text(json.dumps(ann))
    data = OmegaConf.load(ROOT / "conf" / "data" / "synthetic.yaml")
    data.num_classes = 1
    dataset = CocoInstanceDataset(root / "ann.json", root / "img", transforms=build_transforms(data, False),
                                  train=False)
    out = save_prediction_images(NoPredictions(), dataset, tmp_path / "vis", 1, resolve_device("cpu"),
                                 build_collate(data))
    drawn = cv2.imread(str(out[0]))[:, :, ::-1]
    f, bar = 6, 22  # 90 -> 540 (at least 512): factor 6, a caption bar above the panel
    assert drawn.shape[0] == bar + 90 * f
    left = drawn[bar:, : 130 * f].astype(np.float32)
    inside = np.round(0.5 * np.array([250, 40, 40]) + 0.5 * palette(1)[0]).astype(np.float32)
    assert np.abs(left[25 * f, 40 * f] - inside).max() <= 8  # the rectangle, coloured as ground truth
    assert np.abs(left[70 * f, 100 * f] - 60).max() <= 8  # grey, nothing drawn
