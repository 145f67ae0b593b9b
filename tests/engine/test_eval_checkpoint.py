"""The line an evaluation logs about the checkpoint it evaluates: the file, and the epoch and iteration it was
saved at, from this project's training checkpoints and from mmcv's meta; and what a file of another model says."""

from __future__ import annotations

import pytest
import torch
from engine_support import compose_train_cfg, run_train
from omegaconf import OmegaConf

from solo_npu.checkpoints import CheckpointError
from solo_npu.engine.finetune import checkpoint_position, describe_checkpoint
from solo_npu.models import build_model


def test_position_of_a_training_checkpoint_of_this_project() -> None:
    ckpt = {"model": {}, "epoch": 2, "iteration": 40, "inner_iter": 0,
            "config": {"experiment_name": "finetune", "checkpoint": "/runs/a/last.pth", "finetune": {"enabled": True}}}
    position = checkpoint_position(ckpt)
    assert position == {"epoch": 2, "iteration": 40, "experiment": "finetune", "finetuned_from": "/runs/a/last.pth"}
    assert describe_checkpoint("/runs/b/last.pth", position) == (
        "evaluating checkpoint /runs/b/last.pth (epoch 2, iteration 40, experiment finetune, "
        "fine-tuned from /runs/a/last.pth)")
    # a training run started from checkpoint= without finetune.enabled is not called fine-tuned
    ckpt["config"] = {"experiment_name": "1p", "checkpoint": "/x.pth", "finetune": {"enabled": False}}
    assert describe_checkpoint("b.pth", checkpoint_position(ckpt)) == \
        "evaluating checkpoint b.pth (epoch 2, iteration 40, experiment 1p)"


def test_position_of_mmcv_and_bare_files() -> None:
    # mmcv's EpochBasedRunner.save_checkpoint: meta=dict(epoch=self.epoch + 1, iter=self.iter)
    mmcv = {"meta": {"epoch": 12, "iter": 87960, "CLASSES": ["a"]}, "state_dict": {}}
    assert describe_checkpoint("m.pth", checkpoint_position(mmcv)) == \
        "evaluating checkpoint m.pth (epoch 12, iteration 87960)"
    for bare in ({"state_dict": {}}, {"meta": {"CLASSES": ["a"]}, "state_dict": {}}, {"a.weight": 1}):
        assert describe_checkpoint("w.pth", checkpoint_position(bare)) == \
            "evaluating checkpoint w.pth (the file records no training epoch or iteration)"


def test_eval_of_a_checkpoint_with_another_model_names_what_rebuilds_it(smoke_data, tmp_path) -> None:
    """A checkpoint of this project from another experiment (make demo's narrow light R18 against the light R18
    config): the shape mismatch names the overrides that rebuild its model, a setting the run's config leaves to
    the builder's default included, and the experiment the file came from; those overrides then evaluate it."""
    cfg = compose_train_cfg(["+experiment=smoke", *smoke_data])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    torch.manual_seed(0)
    model = build_model(OmegaConf.create(model_cfg), num_classes=int(cfg.data.num_classes))
    ckpt = tmp_path / "smoke.pth"
    torch.save({"model": model.state_dict(), "epoch": 1, "iteration": 10,
                "config": {"experiment_name": "smoke", "model": model_cfg}}, ckpt)
    base = model_cfg["backbone"]["base_channels"]
    # the run's model config without base_channels: the builder's default (64) is wider than the file's
    with pytest.raises(CheckpointError) as err:
        run_train([*smoke_data, f"checkpoint={ckpt}", "~model.backbone.base_channels"], tmp_path / "a", "eval")
    message = str(err.value)
    assert "shape mismatch for" in message
    assert message.endswith(f"its training config built another model, add ++model.backbone.base_channels={base}, "
                            "or evaluate it with its experiment's settings: '+experiment=[smoke,eval]'")
    summary = run_train([*smoke_data, f"checkpoint={ckpt}", "~model.backbone.base_channels",
                         f"++model.backbone.base_channels={base}"], tmp_path / "b", "eval")
    assert summary["mode"] == "eval" and summary["checkpoint_iteration"] == 10


def test_eval_of_another_models_file_names_its_model_choice_not_an_experiment_that_keeps_the_model(
        smoke_data, tmp_path) -> None:
    """A fine-tuned file (experiment finetune, which does not choose the model) evaluated with another model=: the
    line names model=<the file's model> and no '+experiment=[finetune,eval]', which would keep the wrong model."""
    cfg = compose_train_cfg(["+experiment=smoke", *smoke_data])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model = build_model(OmegaConf.create(model_cfg), num_classes=int(cfg.data.num_classes))
    ckpt = tmp_path / "tuned.pth"
    torch.save({"model": model.state_dict(), "epoch": 1, "iteration": 10,
                "config": {"experiment_name": "finetune", "model": model_cfg}}, ckpt)
    with pytest.raises(CheckpointError) as err:
        run_train([*smoke_data, f"checkpoint={ckpt}", "model=solov2_light_r18", "model.pretrained=null"],
                  tmp_path / "a", "eval")
    message = str(err.value)
    assert "shape mismatch for" in message and "+experiment=" not in message
    assert message.endswith("its training config built another model, add model=solov2_tiny"), message


def test_the_experiments_named_for_a_device_preset_run_keep_the_preset() -> None:
    """A recipe trained under a device preset ([8p,solov2_light_r50_3x]) records the recipe's name alone; evaluated as
    '+experiment=[solov2_light_r50_3x,eval]' it would run without the preset's canvas and precision. Its config's
    runtime.fixed_shapes=npu (set only by the presets) says so; a preset's own run evaluates with [1p,eval]."""
    from solo_npu.engine.job import _eval_experiments

    def ckpt(name: str, fixed_shapes: str) -> dict:
        return {"epoch": 36, "iteration": 9,
                "config": {"experiment_name": name, "runtime": {"fixed_shapes": fixed_shapes}}}

    assert _eval_experiments(ckpt("solov2_light_r50_3x", "npu")) == "1p,solov2_light_r50_3x"
    assert _eval_experiments(ckpt("8p", "npu")) == "1p"
    assert _eval_experiments(ckpt("demo", "always")) == "demo"
