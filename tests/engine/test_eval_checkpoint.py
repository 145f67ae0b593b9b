"""The line an evaluation logs about the checkpoint it evaluates: the file, and the epoch and iteration it was
saved at, from this project's training checkpoints and from mmcv's meta."""

from __future__ import annotations

from solo_npu.engine.finetune import checkpoint_position, describe_checkpoint


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
