"""Hooks keep their state in the checkpoint: a run stopped mid-epoch and resumed ends like an uninterrupted one."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from solo_npu.checkpoints import load_checkpoint
from solo_npu.data import GroupedBatchSampler
from solo_npu.engine.checkpointer import restore_training_state, training_state
from solo_npu.engine.hooks import CheckpointHook, CountsHook, EvalHook, LoggingHook, LRHook, count_summary
from solo_npu.engine.optim import WarmupStepSchedule
from solo_npu.engine.trainer import Trainer
from solo_npu.engine.writers import CSVWriter
from tests.engine.test_loop import CPU, PairDataset, Regressor

AP_BY_EPOCH = {1: 0.2, 2: 0.5, 3: 0.3}  # the best is in the middle: a resumed run must remember it
ITERS_PER_EPOCH = 6  # 24 samples, batches of 4


class CountingRegressor(Regressor):
    """Reports ``dropped_positives``: the samples of the batch whose first feature is positive."""

    def forward(self, images: torch.Tensor, targets: dict) -> dict[str, torch.Tensor]:
        return {**super().forward(images, targets), "dropped_positives": (images[:, 0] > 0).sum()}


def build(run_dir: Path, interval_iters: int = 0) -> tuple[Trainer, WarmupStepSchedule]:
    torch.manual_seed(0)
    model = CountingRegressor()
    sampler = GroupedBatchSampler(24, 4, shuffle=True, seed=3)
    loader = DataLoader(PairDataset(), batch_sampler=sampler)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.5)
    schedule = WarmupStepSchedule(opt, 0.03, [2], 0.1, warmup_iters=3, warmup_ratio=0.1)
    trainer = Trainer(model, opt, loader, CPU, max_epochs=3, iters_per_epoch=len(sampler), batch_size=4)

    def fake_eval() -> dict:
        ap = AP_BY_EPOCH[trainer.epoch + 1]
        return {"segm": {"AP": ap}, "bbox": {"AP": ap / 2}}

    trainer.register_hooks([
        LRHook(schedule), EvalHook(fake_eval, interval=1, at_end=False), CountsHook({}),
        CheckpointHook(run_dir / "checkpoints", lambda: training_state(trainer, schedule), True, 1, interval_iters),
        LoggingHook([CSVWriter(run_dir)], log_interval=2)])
    return trainer, schedule


def _hook(trainer: Trainer, cls: type):
    (hook,) = [h for h in trainer.hooks if type(h) is cls]
    return hook


def _csv_rows(run_dir: Path) -> list[list[str]]:
    """metrics.csv without the timing-dependent values (throughput, memory)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [r if r[2] not in ("train/images_per_sec", "train/memory_mb") else r[:3] for r in csv.reader(f)]


def test_resumed_run_restores_eval_history_best_metric_and_counts(tmp_path: Path) -> None:
    full, _ = build(tmp_path / "full")
    full.train()

    part_dir = tmp_path / "part"
    part, _ = build(part_dir, interval_iters=4)
    part.max_iters = 16  # stops after 4 steps of the third epoch; last.pth is written at iteration 16
    part.train()
    state = load_checkpoint(part_dir / "checkpoints" / "last.pth")  # weights_only: hook state is plain data
    assert state["iteration"] == 16 and set(state["hooks"]) == {"EvalHook", "CountsHook", "CheckpointHook"}
    assert state["hooks"]["CountsHook"]["open_steps"] == 4

    resumed, schedule = build(part_dir)
    torch.manual_seed(123)
    restore_training_state(resumed, state, schedule)
    assert _hook(resumed, CheckpointHook).best == 0.5  # before training on: the restored best
    resumed.train()

    def evals(t: Trainer) -> list[tuple]:
        return [(e["epoch"], e["iteration"], e["results"]) for e in _hook(t, EvalHook).history]

    assert evals(resumed) == evals(full) == [(e, 6 * e, {"segm": {"AP": ap}, "bbox": {"AP": ap / 2}})
                                             for e, ap in AP_BY_EPOCH.items()]
    for t in (full, resumed):
        assert t.storage.latest_value("best_metric") == _hook(t, CheckpointHook).best == 0.5
        assert t.storage.latest_value("val/segm_AP") == 0.3
    # best.pth is the epoch-2 state in both: epoch 3 (0.3) did not replace it after the resume
    for run in ("full", "part"):
        assert load_checkpoint(tmp_path / run / "checkpoints" / "best.pth")["iteration"] == 12

    # Each epoch reads all 24 samples once: its count is the number of samples with a positive first feature.
    positives = int((PairDataset().x[:, 0] > 0).sum())
    expected = [{"epoch": e, "iterations": ITERS_PER_EPOCH, "dropped_positives": positives} for e in (1, 2, 3)]
    assert count_summary(full.storage)["epoch_counts"] == expected
    assert count_summary(resumed.storage)["epoch_counts"] == expected

    # The resumed run appends to the interrupted run's metrics.csv: together they are the uninterrupted file.
    assert _csv_rows(part_dir) == _csv_rows(tmp_path / "full")
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_of_the_older_format_gives_eval_history_and_best_to_the_hooks(tmp_path: Path) -> None:
    src, _ = build(tmp_path / "src")
    src.max_iters = ITERS_PER_EPOCH
    src.train()
    state = load_checkpoint(tmp_path / "src" / "checkpoints" / "last.pth")
    entry = {"epoch": 1, "iteration": 6, "results": {"segm": {"AP": 0.7}}, "seconds": 1.0}
    del state["hooks"]
    state.update({"eval_history": [entry], "best_metric": 0.7})  # how checkpoints kept them before

    dst, schedule = build(tmp_path / "dst")
    restore_training_state(dst, state, schedule)
    assert _hook(dst, EvalHook).history == [entry]
    assert _hook(dst, CheckpointHook).best == 0.7 == dst.storage.latest_value("best_metric")
    assert dst.storage.latest()["val/segm_AP"] == (0.7, 6)
