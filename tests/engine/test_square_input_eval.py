"""Evaluating SSD-ResNet34 with train.py (mode=eval) stops with one line naming deploy.py before any data is
generated or a worker starts: its own pre-processing stretches every image to its 300x300 input, as deploy.py
preprocesses it, and train.py's aspect-keeping resize ended in a traceback ('Kernel size can't be greater than
actual input size' on small images, 'SSD default boxes need a square input, got 800x1184' at COCO scale).
check_eval_preprocessing refuses every model whose pre-processing stretches (YolactEdge too), and with it every
model that cannot predict on train.py's canvas."""

from __future__ import annotations

from pathlib import Path

import torch
from engine_support import compose_train_cfg, refused_at_start
from omegaconf import OmegaConf

from solo_npu.config.values import ConfigValueError, check_eval_preprocessing

ROOT = Path(__file__).resolve().parents[2]


def _cfg(*overrides: str) -> dict:
    return OmegaConf.to_container(compose_train_cfg(["+experiment=[smoke,eval]", *overrides]), resolve=True)


def _predicts_on_keep_ratio_canvas(model_cfg: dict) -> bool:
    """Whether the model predicts on a non-square canvas, such as train.py's evaluation makes (the smoke data's
    img_scale [160, 128] gives 128x160)."""
    from solo_npu.models import build_model

    model = build_model(OmegaConf.create(model_cfg), num_classes=3).eval()
    meta = {"ori_shape": (128, 160), "img_shape": (128, 160), "pad": (0, 0), "scale_factor": (1.0, 1.0),
            "canvas": (128, 160), "image_id": 1}
    try:
        model.predict(torch.zeros(1, 3, 128, 160), [meta])
    except (ValueError, RuntimeError):
        return False
    return True


STRETCH = ("model={model}: SSD-ResNet34's own pre-processing stretches every image to its 300x300 input (resize "
           "stretch), which train.py's evaluation (keep-ratio resize to data.img_scale) cannot do; python deploy.py "
           "model={model} checkpoint=PATH evaluates it on that input")


def _refusal(cfg: dict, model: str) -> str | None:
    try:
        check_eval_preprocessing(cfg, model)
    except ConfigValueError as exc:
        return str(exc)
    return None


def test_every_model_that_cannot_predict_on_the_eval_canvas_is_refused_with_one_line() -> None:
    cannot = []
    for model in ("fcos", "ssd_resnet34", "yolact_edge", "solov2_tiny"):
        cfg = _cfg(f"model={model}", "checkpoint=x.pth")
        if not _predicts_on_keep_ratio_canvas(cfg["model"]):
            cannot.append(model)
            assert _refusal(cfg, model) == STRETCH.format(model=model)
    assert cannot == ["ssd_resnet34"]


def test_training_is_not_this_check() -> None:
    assert _refusal(_cfg("model=ssd_resnet34", "mode=train"), "ssd_resnet34") is None  # check_trainable refuses it


def test_train_py_says_it_in_one_line_before_any_data_or_worker(tmp_path: Path) -> None:
    assert refused_at_start(tmp_path, "+experiment=[smoke,eval]", "model=ssd_resnet34", "checkpoint=x.pth") == (
        "[Error] " + STRETCH.format(model="ssd_resnet34"))
