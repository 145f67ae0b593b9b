"""Evaluating SSD-ResNet34 with train.py (mode=eval) stops with one line naming deploy.py before any data is
generated or a worker starts: the model predicts only on its own square input (every image stretched to
300x300, as deploy.py preprocesses it), and train.py's aspect-keeping resize ended in a traceback ('Kernel size
can't be greater than actual input size' on small images, 'SSD default boxes need a square input, got
800x1184' at COCO scale)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_support import compose_train_cfg, refused_at_start
from omegaconf import OmegaConf

from solo_npu.config.values import ConfigValueError, check_evaluable

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


@pytest.mark.parametrize("model", ["fcos", "ssd_resnet34", "yolact_edge", "solov2_tiny"])
def test_refused_exactly_when_the_model_cannot_predict_on_the_eval_canvas(model: str) -> None:
    cfg = _cfg(f"model={model}", "checkpoint=x.pth")
    if _predicts_on_keep_ratio_canvas(cfg["model"]):
        check_evaluable(cfg, model)
        return
    with pytest.raises(ConfigValueError) as info:
        check_evaluable(cfg, model)
    assert str(info.value) == (
        f"model={model}: SSD-ResNet34 predicts only on its own square input (every image stretched to 300x300), "
        "not on the aspect-keeping resize of train.py's evaluation; python deploy.py "
        f"model={model} checkpoint=PATH evaluates it on that input")


def test_training_is_not_this_check() -> None:
    check_evaluable(_cfg("model=ssd_resnet34", "mode=train"), "ssd_resnet34")  # check_trainable refuses it


def test_train_py_says_it_in_one_line_before_any_data_or_worker(tmp_path: Path) -> None:
    assert refused_at_start(tmp_path, "+experiment=[smoke,eval]", "model=ssd_resnet34", "checkpoint=x.pth") == (
        "[Error] model=ssd_resnet34: SSD-ResNet34 predicts only on its own square input (every image stretched to "
        "300x300), not on the aspect-keeping resize of train.py's evaluation; python deploy.py model=ssd_resnet34 "
        "checkpoint=PATH evaluates it on that input")
