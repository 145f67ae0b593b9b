"""Resuming a training checkpoint on another layout (other ranks, another per-rank batch, another total batch) or
on another number of iterations per epoch (images added to the training set, batches without aspect groups).

The synthetic training split (16 images in two aspect groups) has 9 iterations per epoch at 1 rank x 2 images,
5 at 1 x 4 or 2 x 2, and 8 at 2 x 1; without aspect groups 8 at 1 x 2; with 20 images 10 at 1 x 2. The
interrupted run (1 x 2, two epochs) stops at iteration 12; it leaves ``epoch_1.pth`` at the end of epoch 0
(iteration 9) and ``last.pth`` in epoch 1 (iteration 12, batch 3 of 9).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from engine_support import compose_train_cfg, run_train
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from solo_npu.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from solo_npu.data import GroupedBatchSampler
from solo_npu.engine.checkpointer import Layout, ResumePlan, restore_training_state, resume_plan, training_state
from solo_npu.engine.hooks import CheckpointHook, EvalHook, HookBase, LoggingHook, LRHook
from solo_npu.engine.optim import WarmupStepSchedule
from solo_npu.engine.report import read_metrics
from solo_npu.engine.trainer import Trainer
from solo_npu.engine.writers import CSVWriter, TensorBoardWriter
from tests.engine.test_loop import CPU, PairDataset, Regressor

FAST = ["train.plots=false", "train.eval_interval=0", "train.eval_at_end=false", "train.epochs=2",
        "train.log_interval=1", "train.checkpoint_interval_iters=0"]


# --- a stand-in model: the schedule and the hooks' iteration stamps -----------------------------------------

AP_BY_EPOCH = {2: 0.3, 4: 0.6}  # evaluated every 2 epochs; the best comes last, after the resume


class StepLog(HookBase):
    """(epoch, iteration, batch of the epoch, LR) of every step, after the LR hook set it."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int, int, float]] = []

    def before_step(self) -> None:
        t = self.trainer
        self.steps.append((t.epoch, t.iter, t.inner_iter, t.optimizer.param_groups[0]["lr"]))


def stand_in(run_dir: Path, batch_size: int, base_lr: float,
             samples: int = 24) -> tuple[Trainer, WarmupStepSchedule, StepLog]:
    """``samples`` samples in batches of ``batch_size`` over 4 epochs; warm-up and a cosine decay counted in
    iterations."""
    torch.manual_seed(0)
    model = Regressor()
    sampler = GroupedBatchSampler(samples, batch_size, shuffle=True, seed=3)
    opt = torch.optim.SGD(model.parameters(), lr=base_lr, momentum=0.5)
    iters_per_epoch = len(sampler)
    schedule = WarmupStepSchedule(opt, base_lr, [], warmup_iters=30, warmup_ratio=0.1, policy="cosine",
                                  total_iters=4 * iters_per_epoch, min_lr_ratio=0.05)
    trainer = Trainer(model, opt, DataLoader(PairDataset(samples), batch_sampler=sampler), CPU, max_epochs=4,
                      iters_per_epoch=iters_per_epoch, batch_size=batch_size)
    log = StepLog()

    def fake_eval() -> dict:
        ap = AP_BY_EPOCH[trainer.epoch + 1]
        return {"segm": {"AP": ap}, "bbox": {"AP": ap / 2}}

    trainer.register_hooks([LRHook(schedule), log, EvalHook(fake_eval, interval=2, at_end=False),
                            CheckpointHook(run_dir, lambda: training_state(trainer, schedule), True, 1)])
    return trainer, schedule, log


def _hook(trainer: Trainer, cls: type):
    (hook,) = [h for h in trainer.hooks if type(h) is cls]
    return hook


def test_bigger_total_batch_continues_at_the_same_point_of_the_schedule(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Batches of 2 (12 iterations per epoch) stopped after 2 of 4 epochs, resumed with batches of 4 (6 per epoch)."""
    full, _, full_log = stand_in(tmp_path / "full", 2, 0.01)
    full.train()
    old_lr = {it: lr for _, it, _, lr in full_log.steps}

    part, _, _ = stand_in(tmp_path / "part", 2, 0.01)
    part.max_iters = 24
    part.train()
    state = load_checkpoint(tmp_path / "part" / "last.pth")
    assert (state["epoch"], state["inner_iter"], state["iteration"]) == (1, 12, 24)

    resumed, schedule, log = stand_in(tmp_path / "resumed", 4, 0.02)
    with caplog.at_level(logging.WARNING, logger="solo_npu.engine.checkpointer"):
        restore_training_state(resumed, state, schedule)
    # Two epochs done: in iterations of 6 images that is iteration 12, the end of epoch 1.
    assert (resumed.epoch, resumed.inner_iter, resumed.iter) == (1, 6, 12)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "1 rank x 2 images (total batch 2, 12 iterations per epoch)" in warnings[0], warnings[0]
    assert "1 rank x 4 images (total batch 4, 6 iterations per epoch)" in warnings[0], warnings[0]
    resumed.train()
    assert resumed.iter == 24 and resumed.epoch == 4
    assert [(e, i) for e, i, _, _ in log.steps] == [(e, 12 + 6 * (e - 2) + k) for e in (2, 3) for k in range(6)]
    # Warm-up (30 iterations of 2 images) and cosine (48) now count iterations of 4 images: the LR of each step is
    # the uninterrupted run's LR after the same number of images, scaled by the total batch (4 / 2).
    for _, it, _, lr in log.steps:
        assert lr == pytest.approx(2 * old_lr[2 * it], rel=1e-12), it
    assert (schedule.warmup_iters, schedule.total_iters) == (15, 24)
    # The evaluation before the resume is renumbered too: the next one (epoch 4, iteration 24, where the epoch-2 one
    # was before) is compared for the best.
    assert [e["iteration"] for e in _hook(resumed, EvalHook).history] == [12, 24]
    assert _hook(resumed, CheckpointHook).best == 0.6
    assert load_checkpoint(tmp_path / "resumed" / "best.pth")["epoch"] == 3


def test_same_layout_resumes_without_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    part, _, _ = stand_in(tmp_path / "part", 4, 0.02)
    part.max_iters = 8
    part.train()
    state = load_checkpoint(tmp_path / "part" / "last.pth")
    assert state["layout"] == {"world_size": 1, "batch_size": 4, "total_batch": 4, "iters_per_epoch": 6}
    resumed, schedule, _ = stand_in(tmp_path / "resumed", 4, 0.02)
    with caplog.at_level(logging.WARNING):
        restore_training_state(resumed, state, schedule)
    assert (resumed.epoch, resumed.inner_iter, resumed.iter) == (1, 2, 8)
    assert (schedule.warmup_iters, schedule.total_iters) == (30, 24)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_position_near_the_end_of_an_epoch_stays_inside_it() -> None:
    """Batch 8 of 9 in batches 4.5 times as big is batch 2 of 2 by rounding: the run goes on at batch 1 of 2, so that
    the epoch still ends (evaluation, epoch_N.pth); the hooks' stamps stay at or before the resumed iteration."""
    state = {"epoch": 3, "inner_iter": 8, "iteration": 35, "scheduler": {"warmup_iters": 500},
             "layout": {"world_size": 1, "batch_size": 2, "total_batch": 2, "iters_per_epoch": 9}}
    plan = resume_plan(state, Layout(1, 9, 9, 2))
    assert plan.position == (3, 1, 7) and plan.lr_factor == 4.5
    history = [{"epoch": 3, "iteration": 27}, {"epoch": 3, "iteration": 35}]
    hooks = {"EvalHook": {"evaluated_at": 35, "history": history}, "CheckpointHook": {"best": 0.5, "compared_at": 35}}
    assert plan.convert_hooks(hooks) == {
        "EvalHook": {"evaluated_at": 7, "history": [{"epoch": 3, "iteration": 6}, {"epoch": 3, "iteration": 7}]},
        "CheckpointHook": {"best": 0.5, "compared_at": 7}}
    assert "iteration 7 (1 of 2 batches done) instead of 35 (8 of 9 batches done)" in plan.message, plan.message
    assert "warm-up 500 -> 111 iterations" in plan.message and "the LR scaled by 9/2" in plan.message


def test_older_checkpoints_compare_what_their_config_and_schedule_tell() -> None:
    """Without a recorded layout: the per-rank batch from the config, the total batch from the LR when it was scaled."""
    optim = {"base_lr": 0.01, "base_batch_size": 16, "auto_scale_lr": True}
    state = {"epoch": 2, "inner_iter": 100, "iteration": 14760, "scheduler": {"base_lr": 0.01, "warmup_iters": 500},
             "config": {"train": {"batch_size": 2}, "optim": optim}}  # 8 ranks x 2 images
    assert resume_plan(state, Layout(8, 2, 16, 7330)) == ResumePlan((2, 100, 14760))
    same_total = resume_plan(state, Layout(4, 4, 16, 7330))
    assert same_total.position == (2, 100, 14760) and same_total.lr_factor == 1.0
    assert "records no layout (8 ranks x 2 images (total batch 16), the same total batch (from its LR))" in \
        same_total.message, same_total.message
    with pytest.raises(CheckpointError, match=r"^resume: the checkpoint records no layout and its schedule's LR is "
                                              r"for total batch 16, this run has 4 ranks x 2 images \(total batch 8, "
                                              r"14660 iterations per epoch\).*checkpoint=PATH$"):
        resume_plan(state, Layout(4, 2, 8, 14660))
    unscaled = {**state, "config": {"train": {"batch_size": 2}, "optim": {**optim, "auto_scale_lr": False}}}
    plan = resume_plan(unscaled, Layout(4, 4, 16, 7330))
    assert plan.position == (2, 100, 14760) and "a total batch that cannot be told" in plan.message, plan.message
    assert resume_plan(unscaled, Layout(1, 2, 2, 58640)) == ResumePlan((2, 100, 14760))  # as before: nothing differs


def test_lr_kept_without_auto_scale_lr() -> None:
    state = {"epoch": 0, "inner_iter": 9, "iteration": 9, "scheduler": {"warmup_iters": 4},
             "layout": {"world_size": 1, "batch_size": 2, "total_batch": 2, "iters_per_epoch": 9}}
    plan = resume_plan(state, Layout(1, 4, 4, 5), scale_lr=False)
    assert plan.position == (0, 5, 5) and plan.lr_factor == 1.0
    assert "the LR kept (optim.auto_scale_lr=false)" in plan.message, plan.message


# --- the tiny SOLOv2 on the synthetic dataset: position, LR and images of the resumed steps ---------------------

def _record_steps(path: Path, rank: int):
    """A Trainer.run_step that appends (epoch, iteration, batch of the epoch, LR, image ids) to ``path`` first."""
    run_step = Trainer.run_step

    def recording(self: Trainer, batch) -> None:
        entry = {"rank": rank, "epoch": self.epoch, "iter": self.iter, "inner": self.inner_iter,
                 "lr": self.optimizer.param_groups[0]["lr"], "ids": [int(m["image_id"]) for m in batch["metas"]]}
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        run_step(self, batch)

    return recording


def _recording_job(cfg: dict, run_dir: Path, info) -> object:
    """run_job in a spawned rank, with its steps recorded in ``steps.jsonl`` of the run directory."""
    import torch.distributed as dist

    from solo_npu.engine.job import run_job

    rank = dist.get_rank()
    Trainer.run_step = _record_steps(run_dir / f"steps{rank}.jsonl", rank)
    return run_job(cfg, run_dir, info)


def _steps(run_dir: Path) -> list[dict]:
    entries = [json.loads(line) for f in sorted(run_dir.glob("steps*.jsonl")) for line in f.read_text().splitlines()]
    return sorted(entries, key=lambda e: (e["iter"], e["rank"]))


def _train_1p(overrides: list[str], run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    with monkeypatch.context() as m:
        m.setattr(Trainer, "run_step", _record_steps(run_dir / "steps0.jsonl", 0))
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_train(overrides, run_dir)


def _train_2p(overrides: list[str], run_dir: Path) -> dict:
    from solo_npu.engine.launch import launch

    cfg = compose_train_cfg(["+experiment=smoke", "launcher.nproc_per_node=2", *overrides])
    run_dir.mkdir(parents=True, exist_ok=True)
    launch(_recording_job, OmegaConf.to_container(cfg, resolve=True), run_dir)
    return json.loads((run_dir / "summary.json").read_text())


def _warnings(run_dir: Path) -> list[str]:
    return [line.split(": ", 1)[1] for line in (run_dir / "train.log").read_text().splitlines()
            if " WARNING solo_npu.engine.checkpointer: " in line]


@pytest.fixture(scope="module")
def interrupted(smoke_data: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoints of a 1 x 2 run stopped at iteration 12 (epoch 1, batch 3 of 9)."""
    run_dir = tmp_path_factory.mktemp("interrupted")
    mp = pytest.MonkeyPatch()
    try:
        summary = _train_1p([*smoke_data, *FAST, "train.max_iters=12"], run_dir, mp)
    finally:
        mp.undo()
    assert summary["iterations"] == 12
    last = load_checkpoint(run_dir / "checkpoints" / "last.pth")
    assert (last["epoch"], last["inner_iter"], last["iteration"]) == (1, 3, 12)
    first = load_checkpoint(run_dir / "checkpoints" / "epoch_1.pth")
    assert (first["epoch"], first["inner_iter"], first["iteration"]) == (0, 9, 9)
    return run_dir / "checkpoints"


@pytest.fixture(scope="module")
def fresh_1x4(smoke_data: list[str], tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The steps of an uninterrupted run at 1 rank x 4 images (5 iterations per epoch)."""
    run_dir = tmp_path_factory.mktemp("fresh_1x4")
    mp = pytest.MonkeyPatch()
    try:
        _train_1p([*smoke_data, *FAST, "train.batch_size=4"], run_dir, mp)
    finally:
        mp.undo()
    return _steps(run_dir)


def _tail(steps: list[dict], iteration: int) -> list[tuple]:
    return [(s["epoch"], s["iter"], s["inner"], s["lr"], s["ids"]) for s in steps if s["iter"] >= iteration]


@pytest.mark.parametrize(("checkpoint", "position", "where"), [
    ("epoch_1.pth", (1, 5, 0), "epoch 1: iteration 5 (5 of 5 batches done) instead of 9 (9 of 9 batches done)"),
    ("last.pth", (1, 7, 2), "epoch 2: iteration 7 (2 of 5 batches done) instead of 12 (3 of 9 batches done)")],
    ids=["epoch_end", "mid_epoch"])
def test_bigger_per_rank_batch_continues_where_the_new_layout_has_seen_as_much(
        checkpoint: str, position: tuple[int, int, int], where: str, interrupted: Path, fresh_1x4: list[dict],
        smoke_data: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1 x 2 -> 1 x 4: from the converted position on, the steps are those of an uninterrupted 1 x 4 run: same
    epoch, iteration, images and LR (past the warm-up: the LR of total batch 4, 0.04 * 4 / 16)."""
    summary = _train_1p([*smoke_data, *FAST, "train.batch_size=4", f"resume={interrupted / checkpoint}"], tmp_path,
                        monkeypatch)
    steps = _steps(tmp_path)
    iteration = position[1]
    assert (steps[0]["epoch"], steps[0]["iter"], steps[0]["inner"]) == position
    assert _tail(steps, 0) == _tail(fresh_1x4, iteration)
    assert steps[0]["lr"] == pytest.approx(0.01)
    assert summary["iterations"] == 10 and summary["epochs"] == 2
    warnings = _warnings(tmp_path)
    assert len(warnings) == 1, warnings
    assert "1 rank x 2 images (total batch 2, 9 iterations per epoch)" in warnings[0], warnings[0]
    assert "1 rank x 4 images (total batch 4, 5 iterations per epoch)" in warnings[0], warnings[0]
    assert f"continuing at the same point of {where}" in warnings[0], warnings[0]
    assert "the LR scaled by 4/2" in warnings[0], warnings[0]


def test_older_checkpoint_without_layout_stops_on_another_total_batch(
        interrupted: Path, smoke_data: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint written before layouts were recorded: its total batch comes from its schedule's LR."""
    state = load_checkpoint(interrupted / "epoch_1.pth")
    del state["layout"]
    older = save_checkpoint(state, tmp_path / "older.pth")
    with pytest.raises(CheckpointError) as failure:
        _train_1p([*smoke_data, *FAST, "train.batch_size=4", f"resume={older}"], tmp_path / "other", monkeypatch)
    message = str(failure.value)
    assert "\n" not in message
    assert "total batch 2" in message and "total batch 4" in message, message
    assert f"the iterations of {older} cannot" in message and f"checkpoint={older}" in message, message  # by path
    # The same layout resumes as it always did.
    summary = _train_1p([*smoke_data, *FAST, f"resume={older}"], tmp_path / "same", monkeypatch)
    steps = _steps(tmp_path / "same")
    assert (steps[0]["epoch"], steps[0]["iter"], steps[0]["inner"]) == (1, 9, 0)
    assert summary["iterations"] == 18 and not _warnings(tmp_path / "same")


@pytest.fixture
def two_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)


def test_same_total_batch_on_two_ranks_keeps_the_schedule_with_a_warning(
        two_ranks: None, interrupted: Path, smoke_data: list[str], tmp_path: Path) -> None:
    """1 x 2 -> 2 x 1: the same total batch and LR. The two aspect groups padded to batches of 2 make 9 iterations
    per epoch, batches of 1 on 2 ranks 8: batch 3 of 9 of epoch 1 (iteration 12) is batch 3 of 8 (iteration 11)."""
    summary = _train_2p([*smoke_data, *FAST, "train.batch_size=1", f"resume={interrupted / 'last.pth'}"], tmp_path)
    steps = _steps(tmp_path)
    assert (steps[0]["epoch"], steps[0]["iter"], steps[0]["inner"]) == (1, 11, 3)
    assert summary["iterations"] == 16
    # The rest of epoch 1 in the new layout's batches (global batches 6-15), on both ranks, at the same LR.
    assert [(s["rank"], s["epoch"], s["inner"]) for s in steps] == [(r, 1, k) for k in range(3, 8) for r in (0, 1)]
    assert [s["ids"] for s in steps] == _new_layout_batches(smoke_data, 1, 2, epoch=1)[6:]
    assert all(s["lr"] == pytest.approx(0.04 * 2 / 16) for s in steps)
    warnings = _warnings(tmp_path)
    assert len(warnings) == 1, warnings
    assert "1 rank x 2 images (total batch 2, 9 iterations per epoch)" in warnings[0], warnings[0]
    assert "2 ranks x 1 image (total batch 2, 8 iterations per epoch)" in warnings[0], warnings[0]
    assert "LR" not in warnings[0] and warnings[0].endswith("(not an exact resume)"), warnings[0]


def test_same_total_batch_and_epoch_length_continue_at_the_same_iteration() -> None:
    """8 x 2 -> 4 x 4 with as many iterations per epoch (COCO's 7330): nothing to convert, one WARNING."""
    state = {"epoch": 0, "inner_iter": 5000, "iteration": 5000, "scheduler": {"warmup_iters": 500},
             "layout": {"world_size": 8, "batch_size": 2, "total_batch": 16, "iters_per_epoch": 7330}}
    plan = resume_plan(state, Layout(4, 4, 16, 7330))
    assert plan.position == (0, 5000, 5000) and plan.iterations(500) == 500 and plan.lr_factor == 1.0
    assert plan.message == (
        "resume on another layout: the checkpoint's 8 ranks x 2 images (total batch 16, 7330 iterations per epoch), "
        "this run's 4 ranks x 4 images (total batch 16, 7330 iterations per epoch); continuing at iteration 5000 "
        "(epoch 1, 5000 of 7330 batches done); the images from here on differ from those of the uninterrupted run "
        "(not an exact resume)")
    assert resume_plan(state, Layout(8, 2, 16, 7330)) == ResumePlan((0, 5000, 5000))  # same layout: as saved


def test_more_ranks_convert_the_position_and_scale_the_lr(two_ranks: None, interrupted: Path,
                                                          smoke_data: list[str], tmp_path: Path) -> None:
    """1 x 2 -> 2 x 2 (total batch 4, 5 iterations per epoch): batch 3 of 9 in epoch 1 is batch 2 of 5."""
    summary = _train_2p([*smoke_data, *FAST, f"resume={interrupted / 'last.pth'}"], tmp_path)
    steps = _steps(tmp_path)
    assert [(s["rank"], s["epoch"], s["iter"], s["inner"]) for s in steps] == [
        (r, 1, it, it - 5) for it in (7, 8, 9) for r in (0, 1)]
    assert summary["iterations"] == 10
    assert all(s["lr"] == pytest.approx(0.04 * 4 / 16) for s in steps)
    # Batches 2-4 of epoch 1 on each rank: global batches 4-9 of the new layout.
    assert [s["ids"] for s in steps] == _new_layout_batches(smoke_data, 2, 2, epoch=1)[4:]
    warnings = _warnings(tmp_path)
    assert len(warnings) == 1 and "2 ranks x 2 images (total batch 4, 5 iterations per epoch)" in warnings[0]


def _new_layout_batches(smoke_data: list[str], batch_size: int, world_size: int, epoch: int,
                        grouped: bool = True) -> list[list[int]]:
    """The image ids of the global batches of ``epoch`` (rank r takes r, r + world_size, ...) in that layout."""
    from solo_npu.data import build_dataset

    cfg = compose_train_cfg(["+experiment=smoke", *smoke_data])
    dataset = build_dataset(cfg.data, "train", seed=int(cfg.runtime.seed))
    sampler = GroupedBatchSampler(len(dataset), batch_size, dataset.aspect_flags if grouped else None,
                                  seed=int(cfg.runtime.seed), world_size=world_size)
    return [[dataset.image_ids[i] for i in b] for b in sampler.epoch_batches(epoch)]


# --- the same layout, another number of iterations per epoch: the training set or its batches changed ---------

def test_smaller_training_set_continues_at_the_same_point_of_the_schedule(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """24 samples (12 iterations per epoch) stopped at batch 6 of epoch 1, resumed on 20 samples (10 per epoch) with
    the same batches of 2: half of epoch 1 done is batch 5 of 10, and warm-up (30) and cosine (48) count iterations
    of the shorter epoch, so the LR goes on from the checkpoint's without a jump and the run ends after 4 epochs."""
    part, _, part_log = stand_in(tmp_path / "part", 2, 0.01)
    part.max_iters = 18
    part.train()
    state = load_checkpoint(tmp_path / "part" / "last.pth")
    assert state["train_images"] == 24 and state["layout"]["iters_per_epoch"] == 12
    _, uninterrupted, _ = stand_in(tmp_path / "full", 2, 0.01)  # the checkpoint run's schedule

    resumed, schedule, log = stand_in(tmp_path / "resumed", 2, 0.01, samples=20)
    with caplog.at_level(logging.WARNING, logger="solo_npu.engine.checkpointer"):
        restore_training_state(resumed, state, schedule)
    assert (resumed.epoch, resumed.inner_iter, resumed.iter) == (1, 5, 15)
    assert (schedule.warmup_iters, schedule.total_iters) == (25, 40)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "the checkpoint's 1 rank x 2 images (total batch 2, 12 iterations per epoch), this run's 1 rank x 2 " \
           "images (total batch 2, 10 iterations per epoch)" in warnings[0], warnings[0]
    assert "the training set has 20 images, the checkpoint's run had 24" in warnings[0], warnings[0]
    assert "iteration 15 (5 of 10 batches done) instead of 18 (6 of 12 batches done)" in warnings[0], warnings[0]
    assert warnings[0].endswith("(not an exact resume: the training set changed)"), warnings[0]
    resumed.train()
    assert (resumed.epoch, resumed.iter) == (4, 40)
    assert [(e, i, k) for e, i, k, _ in log.steps] == (
        [(1, 15 + k, 5 + k) for k in range(5)] + [(e, 10 * e + k, k) for e in (2, 3) for k in range(10)])
    # At every fifth iteration (a whole number of the checkpoint run's: 6 for 5) the LR is the checkpoint run's
    # at the same point of the schedule, the first resumed step's included (iteration 18, still in the warm-up).
    lrs = {it: lr for _, it, _, lr in log.steps}
    for it in range(15, 40, 5):
        assert lrs[it] == pytest.approx(uninterrupted.lr_at(it * 6 // 5, 0), rel=1e-12), it
    assert part_log.steps[-1][3] < lrs[15] < 0.01


def test_same_epoch_length_with_other_images_warns_and_continues_as_saved() -> None:
    """16 and 18 synthetic images both make 9 iterations per epoch at 1 x 2: the counters stay, the images differ."""
    state = {"epoch": 1, "inner_iter": 3, "iteration": 12, "scheduler": {"warmup_iters": 4}, "train_images": 16,
             "layout": {"world_size": 1, "batch_size": 2, "total_batch": 2, "iters_per_epoch": 9}}
    assert resume_plan(state, Layout(1, 2, 2, 9), train_images=16) == ResumePlan((1, 3, 12))  # exact, silent
    plan = resume_plan(state, Layout(1, 2, 2, 9), train_images=18)
    assert plan.position == (1, 3, 12) and plan.renumber is None and plan.lr_factor == 1.0
    assert plan.message == (
        "resume on another training set: the checkpoint's 1 rank x 2 images (total batch 2, 9 iterations per "
        "epoch), this run's 1 rank x 2 images (total batch 2, 9 iterations per epoch); the training set has 18 "
        "images, the checkpoint's run had 16; continuing at iteration 12 (epoch 2, 3 of 9 batches done); the images "
        "from here on differ from those of the uninterrupted run (not an exact resume: the training set changed)")
    # With another layout as well, the WARNING names both.
    both = resume_plan(state, Layout(1, 4, 4, 5), train_images=18)
    assert both.position == (1, 2, 7) and both.lr_factor == 2.0
    assert both.message.startswith("resume on another layout and training set: ") and \
        "; the training set has 18 images, the checkpoint's run had 16; " in both.message, both.message


def test_checkpoint_without_image_count_converts_another_epoch_length() -> None:
    """A checkpoint that records its layout but not its number of images: another number of iterations per epoch
    at the same layout is converted all the same, and the WARNING says what it cannot tell."""
    state = {"epoch": 1, "inner_iter": 3, "iteration": 12, "scheduler": {"warmup_iters": 4},
             "layout": {"world_size": 1, "batch_size": 2, "total_batch": 2, "iters_per_epoch": 9}}
    assert resume_plan(state, Layout(1, 2, 2, 9), train_images=20) == ResumePlan((1, 3, 12))
    plan = resume_plan(state, Layout(1, 2, 2, 10), train_images=20)
    assert plan.position == (1, 3, 13) and plan.renumber == (9, 10) and plan.lr_factor == 1.0
    assert plan.message.startswith("resume on another epoch length: the checkpoint's 1 rank x 2 images (total "
                                   "batch 2, 9 iterations per epoch), this run's 1 rank x 2 images (total batch 2, "
                                   "10 iterations per epoch); the checkpoint does not record its number of training "
                                   "images; continuing at the same point of epoch 2: "), plan.message
    assert plan.message.endswith("(not an exact resume: the training set or its batching changed)"), plan.message


@pytest.fixture(scope="module")
def grown_data(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Overrides for a synthetic set generated like the session's with 20 training images instead of 16."""
    return [f"data.root={tmp_path_factory.mktemp('grown') / 'synthetic'}", "data.generate=true", "data.num_train=20"]


def test_grown_training_set_continues_at_the_same_point_of_the_epoch(
        interrupted: Path, grown_data: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """16 -> 20 training images at 1 x 2 (9 -> 10 iterations per epoch): batch 3 of 9 of epoch 1 (iteration 12) is
    batch 3 of 10 (iteration 13); the run then takes the rest of epoch 1 of the new set and ends with it."""
    summary = _train_1p([*grown_data, *FAST, f"resume={interrupted / 'last.pth'}"], tmp_path, monkeypatch)
    steps = _steps(tmp_path)
    assert [(s["epoch"], s["iter"], s["inner"]) for s in steps] == [(1, it, it - 10) for it in range(13, 20)]
    assert [s["ids"] for s in steps] == _new_layout_batches(grown_data, 2, 1, epoch=1)[3:]
    assert all(s["lr"] == pytest.approx(0.04 * 2 / 16) for s in steps)
    assert (summary["iterations"], summary["epochs"]) == (20, 2)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pth")["train_images"] == 20
    warnings = _warnings(tmp_path)
    assert len(warnings) == 1, warnings
    assert "the training set has 20 images, the checkpoint's run had 16" in warnings[0], warnings[0]
    assert "(total batch 2, 9 iterations per epoch)" in warnings[0], warnings[0]
    assert "(total batch 2, 10 iterations per epoch)" in warnings[0], warnings[0]
    assert warnings[0].endswith("(not an exact resume: the training set changed)"), warnings[0]


def test_ungrouped_batches_continue_with_the_next_epoch(interrupted: Path, smoke_data: list[str], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The end of epoch 0 (9 of 9 batches) resumed with data.group_by_aspect_ratio=false (8 batches per epoch):
    the run goes on with epoch 1 at iteration 8 and ends with it (epoch_2.pth), in the ungrouped batches."""
    summary = _train_1p([*smoke_data, *FAST, "data.group_by_aspect_ratio=false",
                         f"resume={interrupted / 'epoch_1.pth'}"], tmp_path, monkeypatch)
    steps = _steps(tmp_path)
    assert [(s["epoch"], s["iter"], s["inner"]) for s in steps] == [(1, 8 + k, k) for k in range(8)]
    assert [s["ids"] for s in steps] == _new_layout_batches(smoke_data, 2, 1, epoch=1, grouped=False)
    assert (summary["iterations"], summary["epochs"]) == (16, 2)
    assert load_checkpoint(tmp_path / "checkpoints" / "epoch_2.pth")["iteration"] == 16
    warnings = _warnings(tmp_path)
    assert len(warnings) == 1, warnings
    assert "the same 16 training images in other batches" in warnings[0], warnings[0]
    assert "iteration 8 (8 of 8 batches done) instead of 9 (9 of 9 batches done)" in warnings[0], warnings[0]
    assert warnings[0].endswith("(not an exact resume: the batches changed)"), warnings[0]


# --- the run's records (metrics.csv, the loss plot's data, TensorBoard) across a resume ---------------------------

def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _tensorboard_steps(log_dir: Path, tag: str, purged: bool = False) -> list[int]:
    """The steps of ``tag`` in the event files directly in ``log_dir``, in the order they were written (``purged``:
    as TensorBoard shows them, the events a restart's purge_step hides left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), purge_orphaned_data=purged)
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def _strictly_increasing_per_name(rows: list[list[str]]) -> None:
    for name in {r[2] for r in rows}:
        xs = [float(r[0]) for r in rows if r[2] == name]
        assert all(a < b for a, b in zip(xs, xs[1:])), (name, xs)


def test_records_of_a_converted_resume_go_on_in_the_new_iterations(
        interrupted: Path, smoke_data: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 1 x 2 run stopped at iteration 12 (9 per epoch) resumed with resume=auto in its own run directory at
    1 x 4 (5 per epoch, continuing at iteration 7): metrics.csv keeps every row of before the stop, renumbered to
    the same point of its epoch (iteration * 5 / 9), and goes on with the iterations the trainer logs, never back;
    the loss plot reads all of them; TensorBoard's folder goes on in the new iterations, the old events beside."""
    run_dir = tmp_path / "run"
    shutil.copytree(interrupted.parent, run_dir)
    (run_dir / "steps0.jsonl").unlink()
    before = _rows(run_dir / "metrics.csv")
    before_text = (run_dir / "metrics.csv").read_text()
    _train_1p([*smoke_data, *FAST, "train.batch_size=4", "resume=auto"], run_dir, monkeypatch)
    (warning,) = _warnings(run_dir)
    assert "iteration 7 (2 of 5 batches done) instead of 12 (3 of 9 batches done)" in warning, warning
    resumed_log = (run_dir / "train.log").read_text().split(warning, 1)[1]
    logged = [int(n) for n in re.findall(r"\((\d+)/10\) loss", resumed_log)]
    assert logged == [s["iter"] + 1 for s in _steps(run_dir)] == [8, 9, 10]

    after = _rows(run_dir / "metrics.csv")
    assert after[0] == before[0] == ["iteration", "epoch", "name", "value"]
    old, new = after[1:len(before)], after[len(before):]
    assert [r[1:] for r in old] == [r[1:] for r in before[1:]]  # no row lost, epochs and values as they were
    assert [float(r[0]) for r in old] == pytest.approx([int(r[0]) * 5 / 9 for r in before[1:]], abs=1e-6)
    assert sorted({int(r[0]) for r in new}) == logged and all(r[1] == "1" for r in new)
    _strictly_increasing_per_name(after[1:])
    loss_rows = [r for r in after[1:] if r[2] == "train/loss"]
    assert read_metrics(run_dir / "metrics.csv")["train/loss"] == [(float(r[0]), float(r[3])) for r in loss_rows]
    assert (run_dir / "metrics_before_resume_12.csv").read_text() == before_text
    assert not (run_dir / "metrics.csv.tmp").exists()

    assert _tensorboard_steps(run_dir / "tensorboard", "train/loss") == logged
    assert _tensorboard_steps(run_dir / "tensorboard" / "before_resume_12", "train/loss") == list(range(1, 13))


def _logged_stand_in(run_dir: Path, batch_size: int) -> tuple[Trainer, WarmupStepSchedule]:
    """:func:`stand_in` (24 samples, 4 epochs) writing metrics.csv and TensorBoard into ``run_dir`` every step."""
    trainer, schedule, _ = stand_in(run_dir, batch_size, 0.01 * batch_size / 2)
    trainer.register_hooks([LoggingHook([CSVWriter(run_dir), TensorBoardWriter(run_dir / "tensorboard")], 1)])
    return trainer, schedule


@pytest.mark.parametrize(("checkpoint", "batch_size"), [("last.pth", 2), ("epoch_1.pth", 2), ("epoch_1.pth", 4)],
                         ids=["exact", "exact_from_epoch_end", "converted_from_epoch_end"])
def test_records_after_a_resume_in_the_run_directory(checkpoint: str, batch_size: int, tmp_path: Path) -> None:
    """Batches of 2 (12 iterations per epoch) stopped at iteration 18, resumed in the same run directory. An
    exact resume from last.pth appends to the records as it always did. From epoch_1.pth (iteration 12) the rows of
    13-18, steps the checkpoint does not hold, are left out of metrics.csv (the file as it was is kept beside it) and
    the resumed run's come after the rows up to 12: in batches of 2 as they were, with TensorBoard's events after
    step 12 hidden (purge_step 13); in batches of 4 (6 per epoch) renumbered (12 -> 6), TensorBoard's events of
    before moved apart."""
    part, _ = _logged_stand_in(tmp_path, 2)
    part.max_iters = 18
    part.train()
    before_text = (tmp_path / "metrics.csv").read_text()
    before = _rows(tmp_path / "metrics.csv")
    # Named as if written at time 0: TensorBoard reads a folder's files in name order (time in seconds, host, pid, a
    # counter of the process), and both runs here share one process and often one second.
    for path in (tmp_path / "tensorboard").iterdir():
        path.rename(path.with_name(re.sub(r"^events\.out\.tfevents\.\d+\.", "events.out.tfevents.0000000000.",
                                          path.name)))
    events = sorted(p.name for p in (tmp_path / "tensorboard").iterdir())
    state = load_checkpoint(tmp_path / checkpoint)

    resumed, schedule = _logged_stand_in(tmp_path, batch_size)
    restore_training_state(resumed, state, schedule)
    resumed.train()
    after_text = (tmp_path / "metrics.csv").read_text()
    after = _rows(tmp_path / "metrics.csv")
    if batch_size == 2:
        start, end = state["iteration"], 48
        old = [r for r in before[1:] if int(r[0]) <= start]
        assert after[1:len(old) + 1] == old  # the rows of the steps the checkpoint holds, as they were
        if len(old) == len(before) - 1:
            assert after_text.startswith(before_text) and not list(tmp_path.glob("metrics_before_resume_*"))
        else:
            assert (tmp_path / "metrics_before_resume_12.csv").read_text() == before_text
        assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir())[:len(events)] == events
        assert not list((tmp_path / "tensorboard").glob("before_resume_*"))
        assert _tensorboard_steps(tmp_path / "tensorboard", "train/loss_mse", purged=True) == list(range(1, 49))
    else:
        assert (tmp_path / "metrics_before_resume_12.csv").read_text() == before_text
        kept = [r for r in before[1:] if int(r[0]) <= 12]
        old, start, end = after[1:len(kept) + 1], 6, 24
        assert [(float(r[0]), *r[1:]) for r in old] == [(int(r[0]) / 2, *r[1:]) for r in kept]
    _strictly_increasing_per_name(after[1:])
    new = after[len(old) + 1:]
    assert sorted({int(r[0]) for r in new}) == list(range(start + 1, end + 1))
    if batch_size == 4:
        assert _tensorboard_steps(tmp_path / "tensorboard", "train/loss_mse") == list(range(7, 25))
        assert _tensorboard_steps(tmp_path / "tensorboard" / "before_resume_12", "train/loss_mse") == list(
            range(1, 19))


def test_resume_with_another_input_than_the_run_trained_on_stops(tmp_path: Path, smoke_data: list[str]) -> None:
    """resume=auto with data.normalize (or model.backbone.style) changed would go on training weights on pixels
    they were not trained on: one CheckpointError naming the file and the setting to restore; unchanged, it goes on."""
    fast = [*smoke_data, "train.plots=false", "train.eval_interval=0", "train.eval_at_end=false"]
    run_dir = tmp_path / "run"
    assert run_train([*fast, "train.max_iters=2"], run_dir)["iterations"] == 2
    caffe = ["data.normalize.style=caffe", "data.normalize.mean=[103.53,116.28,123.675]", "data.normalize.std=[1,1,1]"]
    with pytest.raises(CheckpointError) as info:
        run_train([*fast, "train.max_iters=4", "resume=auto", *caffe], run_dir)
    message = str(info.value)
    assert message.startswith(f"{run_dir / 'checkpoints' / 'last.pth'}: the checkpoint was trained with "
                              "data.normalize.style=pytorch, data.normalize.mean=[123.675,116.28,103.53], "
                              "data.normalize.std=[58.395,57.12,57.375] (its config) but this run has "
                              "data.normalize.style=caffe"), message
    assert load_checkpoint(run_dir / "checkpoints" / "last.pth")["iteration"] == 2  # nothing was trained
    assert run_train([*fast, "train.max_iters=4", "resume=auto"], run_dir)["iterations"] == 4
