"""Training or fine-tuning a model this project runs for inference only (FCOS, YolactEdge, SSD-ResNet34: no
training losses) stops with one line naming the model and what it can do instead, before the synthetic set is
generated or a worker starts; it used to start the run and end in the model's NotImplementedError traceback.
Evaluation (mode=eval) of such a model is not refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_support import compose_train_cfg, refused_at_start
from omegaconf import OmegaConf

from solo_npu.config.values import ConfigValueError, check_trainable
from solo_npu.engine.job import check_start

ROOT = Path(__file__).resolve().parents[2]
MODELS = sorted(p.stem for p in (ROOT / "conf" / "model").glob("*.yaml"))


def _cfg(*overrides: str) -> dict:
    return OmegaConf.to_container(compose_train_cfg(["+experiment=smoke", *overrides]), resolve=True)


def _trains(model_cfg: dict) -> bool:
    """Whether the model's own code has a training path: its training-mode forward does not raise
    NotImplementedError (built on the meta device: no weights, no computation before the check)."""
    from solo_npu.models import build_model

    model = build_model(model_cfg, num_classes=3, device="meta").train()
    try:
        model(torch.zeros(1, 3, 64, 64, device="meta"), {})
    except NotImplementedError:
        return False
    except Exception:  # noqa: BLE001 - empty targets: a trainable model fails on them, past the check
        return True
    return True


@pytest.mark.parametrize("model", MODELS)
def test_refused_exactly_when_the_model_cannot_train(model: str) -> None:
    cfg = _cfg(f"model={model}")
    if _trains(cfg["model"]):
        check_trainable(cfg, model)
        return
    with pytest.raises(ConfigValueError) as info:
        check_trainable(cfg, model)
    line = str(info.value)
    assert line.startswith(f"model={model}: ") and "is inference-only in this project (no training losses) and " \
        f"cannot be trained; python deploy.py model={model} checkpoint=PATH exports, verifies, evaluates" in line, line
    assert "\n" not in line


def test_fine_tuning_is_named_and_eval_is_not_refused(synthetic_coco: Path, tmp_path: Path) -> None:
    cfg = _cfg("model=yolact_edge", f"data.root={synthetic_coco}", "data.generate=false", "finetune.enabled=true",
               "checkpoint=x.pth")
    with pytest.raises(ConfigValueError, match=r"^model yolact_edge_r50_fpn: YolactEdge is inference-only .* cannot "
                                               r"be fine-tuned; python deploy.py model=MODEL checkpoint=PATH"):
        check_start(cfg, tmp_path)
    check_start(_cfg("model=fcos", f"data.root={synthetic_coco}", "data.generate=false", "mode=eval",
                     "checkpoint=x.pth", "data.normalize.style=caffe",  # FCOS's own pre-processing (mmdet caffe)
                     "data.normalize.mean=[102.9801,115.9465,122.7717]", "data.normalize.std=[1,1,1]",
                     "data.img_scale=[1333,800]"), tmp_path)


@pytest.mark.parametrize("overrides, what", [(["model=fcos", "launcher.nproc_per_node=2"], "trained"),
                                             (["model=ssd_resnet34", "finetune.enabled=true", "checkpoint=x.pth"],
                                              "fine-tuned")])
def test_train_py_says_it_in_one_line_before_any_data_or_worker(tmp_path: Path, overrides: list[str],
                                                                what: str) -> None:
    model = overrides[0].split("=")[1]
    label = {"fcos": "FCOS", "ssd_resnet34": "SSD-ResNet34"}[model]
    assert refused_at_start(tmp_path, "+experiment=smoke", *overrides) == (
        f"[Error] model={model}: {label} is inference-only in this project (no training losses) and cannot be "
        f"{what}; python deploy.py model={model} checkpoint=PATH exports, verifies, evaluates and benchmarks it, "
        "task=predict input=IMG_OR_DIR predicts with it")
