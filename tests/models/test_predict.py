"""run_predict: overlays and COCO-style predictions for a folder of images, unreadable files skipped."""

from __future__ import annotations

import json

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils
from test_solov2_model import tiny_model

from solo_npu.deploy.predict import run_predict


def test_run_predict_writes_overlays_and_json(tmp_path, synthetic_cfg):
    cfg = synthetic_cfg
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (100, 140), "b.jpg": (120, 90)}.items():
        cv2.imwrite(str(images / name), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    (images / "broken.png").write_bytes(b"not an image")
    model = tiny_model()
    summary = run_predict(model, images, tmp_path / "out", ["circle", "rectangle", "triangle"], cfg, "cpu",
                          score_thr=0.3)
    assert summary["images"] == 2 and summary["skipped"] == 1
    assert (tmp_path / "out" / "a.png").is_file() and (tmp_path / "out" / "b.png").is_file()
    entries = json.loads((tmp_path / "out" / "predictions.json").read_text())
    by_file = {}
    for e in entries:
        by_file.setdefault(e["file_name"], []).append(e)
    assert set(by_file) == {"a.png", "b.jpg"}
    first = by_file["a.png"][0]
    assert mask_utils.decode(first["segmentation"]).shape == (100, 140)
    assert first["category_id"] in (1, 2, 3) and first["category_name"] == ["circle", "rectangle",
                                                                             "triangle"][first["category_id"] - 1]
    overlay = cv2.imread(str(tmp_path / "out" / "b.png"))
    assert overlay.shape == (120 * 6, 90 * 6, 3)  # enlarged to a shorter side of at least 512
    drawn = sum(e["score"] >= 0.3 for e in by_file["b.jpg"])
    assert summary["instances"] == drawn + sum(e["score"] >= 0.3 for e in by_file["a.png"])
    # Scores are those of model.predict (sorted, in (0, 1]).
    scores = torch.tensor([e["score"] for e in by_file["a.png"]])
    assert (scores[:-1] >= scores[1:]).all() and (scores > 0).all() and (scores <= 1).all()
