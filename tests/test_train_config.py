"""The training config tree: every experiment composes, the schema rejects unknown keys by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from solo_npu.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


def _compose(overrides: list[str]):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=False)


def test_defaults_match_the_reference_schedule() -> None:
    cfg = _compose([])
    assert cfg.model.name == "solov2_r50_fpn" and cfg.data.name == "coco"
    assert (cfg.optim.base_lr, cfg.optim.base_batch_size, cfg.optim.momentum) == (0.01, 16, 0.9)
    assert (cfg.optim.weight_decay, cfg.optim.grad_clip, list(cfg.optim.lr_steps)) == (1e-4, 35.0, [9, 11])
    assert cfg.train.epochs == 12 and cfg.runtime.device == "auto"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name: str) -> None:
    overrides = [f"+experiment={name}"]
    if name in ("eval", "finetune"):
        overrides.append("checkpoint=some.pth")
    cfg = _compose(overrides)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert cfg.experiment_name == name
    first = (ROOT / "conf" / "experiment" / f"{name}.yaml").read_text().splitlines()[0]
    assert first == "# @package _global_"


def test_experiment_settings() -> None:
    eight = _compose(["+experiment=8p"])
    assert eight.launcher.nproc_per_node == 8 and eight.train.batch_size == 2
    assert eight.amp.enabled and eight.amp.loss_scale == 128 and eight.optim.fused
    perf = _compose(["+experiment=performance_8p"])
    assert perf.launcher.nproc_per_node == 8 and perf.train.max_iters == 1000 and perf.train.epochs == 1
    assert not perf.train.eval_at_end
    three = _compose(["optim=3x"])
    assert three.train.epochs == 36 and list(three.optim.lr_steps) == [27, 33]
    assert list(three.data.multiscale_short) == [640, 672, 704, 736, 768, 800]
    tune = _compose(["+experiment=finetune", "checkpoint=x.pth"])
    assert tune.finetune.enabled and tune.train.epochs == 6 and list(tune.optim.lr_steps) == [4]
    demo = _compose(["+experiment=demo"])
    assert demo.data.name == "synthetic" and demo.model.name.startswith("solov2_light")


@pytest.mark.parametrize("experiment", ["eval", "finetune"])
def test_eval_and_finetune_require_a_checkpoint(experiment: str, tmp_path: Path) -> None:
    from solo_npu.engine.job import eval_only, train
    from solo_npu.runtime import resolve_device

    cfg = _compose([f"+experiment={experiment}"])
    assert cfg.checkpoint is None
    with pytest.raises(ValueError, match="checkpoint=PATH"):
        (eval_only if experiment == "eval" else train)(cfg, tmp_path, resolve_device("cpu"))


@pytest.mark.parametrize("override, key", [
    ("model.nonexistent_key=1", "nonexistent_key"),
    ("train.epoch=3", "epoch"),
    ("amp.enable=true", "enable"),
    ("launcher.nprocs=2", "nprocs"),
])
def test_unknown_key_fails_naming_it(override: str, key: str) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        _compose([override])
    assert key in str(err.value) + str(err.value.__cause__)


def test_wrong_type_fails() -> None:
    with pytest.raises(ConfigCompositionException) as err:
        _compose(["train.batch_size=two"])
    assert "batch_size" in str(err.value) + str(err.value.__cause__)


def test_cli_prints_the_resolved_8p_config_and_rejects_unknown_keys() -> None:
    out = subprocess.run([sys.executable, "train.py", "+experiment=8p", "--cfg", "job", "--resolve"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    printed = yaml.safe_load(out.stdout)
    assert printed["launcher"]["nproc_per_node"] == 8 and printed["model"]["num_classes"] == 80
    bad = subprocess.run([sys.executable, "train.py", "model.nonexistent_key=1"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "nonexistent_key" in bad.stderr + bad.stdout


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_light_experiments_use_the_reference_scales(depth: int) -> None:
    # WXinlong/SOLO configs/solov2/solov2_light_448_r{18,34,50}_fpn_8gpu_3x.py: train img_scale
    # [(768, 512), (768, 480), ... (768, 352)], test (768, 448), steps [27, 33], 36 epochs;
    # mmdet configs/solov2/solov2-light_r50_fpn_ms-3x_coco.py: the same scales, test Resize scale (448, 768).
    cfg = _compose([f"+experiment=solov2_light_r{depth}_3x"])
    assert cfg.model.name == f"solov2_light_r{depth}_fpn" and cfg.model.backbone.depth == depth
    assert list(cfg.data.img_scale) == [768, 448]
    assert list(cfg.data.multiscale_short) == [352, 384, 416, 448, 480, 512]
    assert cfg.train.epochs == 36 and list(cfg.optim.lr_steps) == [27, 33] and cfg.optim.warmup_ratio == 0.01
    assert cfg.model.pretrained == "auto" and cfg.model.head.stacked_convs == 2


def test_cli_shows_the_light_recipe_scales() -> None:
    out = subprocess.run([sys.executable, "train.py", "+experiment=solov2_light_r50_3x", "--cfg", "job", "--resolve"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    printed = yaml.safe_load(out.stdout)
    assert printed["data"]["img_scale"] == [768, 448]
    assert printed["data"]["multiscale_short"] == [352, 384, 416, 448, 480, 512]
    assert printed["model"]["name"] == "solov2_light_r50_fpn" and printed["train"]["epochs"] == 36


def test_solo_and_mmdet_schedules() -> None:
    # SOLO (configs/solov2/solov2_r50_fpn_8gpu_{1x,3x}.py): lr 0.01, clip 35, linear warm-up 500 from 0.01,
    # steps [9, 11] / 12 epochs and [27, 33] / 36 epochs with short sides 640..800 (long 1333).
    one = _compose(["+experiment=solov2_r50_1x"])
    assert (one.train.epochs, list(one.optim.lr_steps), one.data.multiscale_short) == (12, [9, 11], None)
    assert (one.optim.base_lr, one.optim.grad_clip, one.optim.warmup_iters, one.optim.warmup_ratio) == (
        0.01, 35.0, 500, 0.01)
    for name in ("solov2_r50_3x", "solov2_r101_3x"):
        three = _compose([f"+experiment={name}"])
        assert (three.train.epochs, list(three.optim.lr_steps)) == (36, [27, 33])
        assert list(three.data.img_scale) == [1333, 800]
        assert list(three.data.multiscale_short) == [640, 672, 704, 736, 768, 800]
    # mmdet 3.x: configs/_base_/schedules/schedule_1x.py LinearLR start_factor 0.001 over 500 iterations,
    # MultiStepLR milestones [8, 11]; solov2_r50_fpn_1x_coco.py lr 0.01, clip_grad max_norm 35;
    # solov2_r50_fpn_ms-3x_coco.py / solov2-light_r50_fpn_ms-3x_coco.py LinearLR start_factor 1/3, [27, 33].
    m1 = _compose(["+experiment=solov2_r50_1x", "optim=mmdet_1x"])
    assert (m1.train.epochs, list(m1.optim.lr_steps), m1.optim.warmup_ratio, m1.optim.warmup_iters) == (
        12, [8, 11], 0.001, 499)  # LinearLR(end=500) reaches the full LR at 499 (test below)
    assert (m1.optim.base_lr, m1.optim.grad_clip) == (0.01, 35.0)
    m3 = _compose(["+experiment=solov2_light_r50_3x", "optim=mmdet_3x"])
    assert (m3.train.epochs, list(m3.optim.lr_steps), m3.optim.warmup_iters) == (36, [27, 33], 499)
    assert m3.optim.warmup_ratio == pytest.approx(1 / 3)
    assert list(m3.data.multiscale_short) == [352, 384, 416, 448, 480, 512]  # the light scales stay


def _mmengine_linear_lr(base: float, start: float, begin: int, end: int, steps: int) -> list[float]:
    """The LR of each iteration under mmengine's LinearLR (open-mmlab/mmengine mmengine/optim/scheduler/
    param_scheduler.py, LinearParamScheduler: ``total_iters = end - begin - 1``; ``_get_value`` multiplies the
    group's value by ``start_factor`` at step 0 and by ``1 + (end_factor - start_factor) / (total_iters *
    start_factor + (last_step - 1) * (end_factor - start_factor))`` at each later step before ``end``), in its
    chained form with end_factor 1."""
    total = end - begin - 1
    lrs, lr = [], base
    for t in range(steps):
        if t == 0:
            lr = base * start
        elif t < end:
            lr = lr * (1.0 + (1.0 - start) / (total * start + (t - 1) * (1.0 - start)))
        lrs.append(lr)
    return lrs


@pytest.mark.parametrize("optim, start", [("mmdet_1x", 0.001), ("mmdet_3x", 1 / 3)])
def test_mmdet_warmup_is_mmengines_linear_lr(optim: str, start: float) -> None:
    from solo_npu.engine.optim import WarmupStepSchedule

    cfg = _compose(["+experiment=solov2_r50_1x", f"optim={optim}"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    ours = WarmupStepSchedule(opt, 0.01, list(cfg.optim.lr_steps), float(cfg.optim.gamma),
                              int(cfg.optim.warmup_iters), float(cfg.optim.warmup_ratio))
    reference = _mmengine_linear_lr(0.01, start, 0, 500, 600)  # param_scheduler: LinearLR begin=0, end=500
    got = [ours.lr_at(t, 0) for t in range(600)]
    assert max(abs(a - b) for a, b in zip(got, reference)) < 1e-12
    assert got[499] == 0.01 and got[498] < 0.01


@pytest.mark.parametrize("experiments, norm", [
    ("[8p]", "pairs"), ("[1p]", "pairs"), ("[performance_8p]", "pairs"),  # the ModelZoo port of SOLO
    ("[solov2_r50_1x]", "pairs"), ("[8p,solov2_r50_3x]", "pairs"), ("[solov2_light_r18_3x]", "pairs"),  # SOLO's
    ("[demo]", "cells"), ("[smoke]", "cells"),  # the model default: mmdetection's SOLOV2Head
])
def test_the_mask_loss_normalisation_of_each_recipe(experiments: str, norm: str) -> None:
    """SOLO (solov2_head.py: ``torch.cat(loss_ins).mean()``) and the Ascend ModelZoo port of it average the dice
    loss over the (instance, cell) pairs; mmdetection divides its sum by the positive cells."""
    from config_support import compose_config

    assert compose_config(f"+experiment={experiments}")["model"]["head"]["loss_mask_norm"] == norm
