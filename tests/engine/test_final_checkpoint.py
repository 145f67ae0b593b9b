"""last.pth holds the final step before the final evaluation starts: Ctrl-C again during that evaluation (which
stops at once) loses no trained steps. The checkpoint written after it also holds the evaluation; a run with
nothing new after its last checkpoint writes no second one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_support import run_train
from torch.utils.data import DataLoader

from solo_npu.checkpoints import load_checkpoint
from solo_npu.data import GroupedBatchSampler
from solo_npu.engine import hooks as hooks_module
from solo_npu.engine.checkpointer import training_state
from solo_npu.engine.hooks import CheckpointHook, CountsHook, EvalHook, LRHook
from solo_npu.engine.optim import WarmupStepSchedule
from solo_npu.engine.trainer import Trainer
from tests.engine.test_loop import CPU, PairDataset, Regressor


def test_last_pth_holds_the_final_step_when_the_final_evaluation_starts(smoke_data: list[str], tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Smoke run of 3 iterations (8 per epoch: it ends mid-epoch), last.pth every 2 iterations and an evaluation
    at the end, stopped in it as by Ctrl-C twice: last.pth held iteration 3 when the evaluation started, and
    still does; summary.json says the final evaluation was interrupted."""
    from solo_npu.engine import job

    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.pth"
    seen: list[int | None] = []

    def stopped_evaluation(*args: Any, **kwargs: Any) -> dict[str, Any]:
        seen.append(load_checkpoint(last)["iteration"] if last.is_file() else None)
        raise KeyboardInterrupt("SIGINT received twice")  # what FinalPhase raises on Ctrl-C again

    monkeypatch.setattr(job, "evaluate", stopped_evaluation)
    with pytest.raises(KeyboardInterrupt):
        run_train([*smoke_data, "train.max_iters=3", "train.eval_interval=0", "train.eval_at_end=true",
                   "train.plots=false", "train.checkpoint_interval_iters=2"], run_dir)
    assert seen == [3]
    assert load_checkpoint(last)["iteration"] == 3
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["iterations"], summary["final_evaluation"]) == ("ok", 3, "interrupted")
    # resume=auto of that run trains nothing more: it runs the final evaluation and writes last.pth with it
    monkeypatch.undo()
    summary = run_train([*smoke_data, "train.max_iters=3", "train.eval_interval=0", "train.eval_at_end=true",
                         "train.plots=false", "train.checkpoint_interval_iters=2", "resume=auto"], run_dir)
    assert (summary["status"], summary["iterations"], "final_evaluation" in summary) == ("ok", 3, False)
    assert summary["segm_ap"] is not None
    # it ran no training step: no throughput to report, neither a 0 in summary.json nor an "FPS:" in the log
    assert summary["fps"] is None
    done = [line for line in (run_dir / "train.log").read_text().splitlines() if "training done" in line]
    assert done and "FPS" not in done[-1] and "no training step" in done[-1], done
    state = load_checkpoint(last)
    assert (state["iteration"], [e["iteration"] for e in state["hooks"]["EvalHook"]["history"]]) == (3, [3])


ITERS_PER_EPOCH = 6  # 24 samples, batches of 4


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_iters: int, at_end: bool) -> list[tuple[str, int, list]]:
    """Two epochs of the regressor (up to ``max_iters``), evaluated at each epoch end and (``at_end``) at the end,
    each evaluation a new best. Returns the checkpoints written, in order: (file name, iteration, the iterations
    of the evaluations its EvalHook state holds)."""
    saved: list[tuple[str, int, list]] = []
    real_save = hooks_module.save_training_state

    def recording_save(state: dict[str, Any], path: Path) -> Path:
        history = state["hooks"].get("EvalHook", {}).get("history", [])
        saved.append((Path(path).name, state["iteration"], [e["iteration"] for e in history]))
        return real_save(state, path)

    monkeypatch.setattr(hooks_module, "save_training_state", recording_save)
    torch.manual_seed(0)
    model = Regressor()
    sampler = GroupedBatchSampler(24, 4, shuffle=True, seed=3)
    loader = DataLoader(PairDataset(), batch_sampler=sampler)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.5)
    schedule = WarmupStepSchedule(opt, 0.03, [2], 0.1, warmup_iters=3, warmup_ratio=0.1)
    trainer = Trainer(model, opt, loader, CPU, max_epochs=2, iters_per_epoch=len(sampler), max_iters=max_iters,
                      batch_size=4)
    trainer.register_hooks([
        LRHook(schedule), EvalHook(lambda: {"segm": {"AP": trainer.iter / 100}}, interval=1, at_end=at_end),
        CountsHook({}),
        CheckpointHook(tmp_path / "checkpoints", lambda: training_state(trainer, schedule), True, 0, 0)])
    trainer.train()
    assert trainer.iter == max_iters
    return saved


def test_run_ending_mid_epoch_saves_last_pth_before_and_after_its_final_evaluation(tmp_path, monkeypatch) -> None:
    saved = _run(tmp_path, monkeypatch, max_iters=9, at_end=True)
    assert [s for s in saved if s[0] == "last.pth"] == [("last.pth", 6, [6]), ("last.pth", 9, [6]),
                                                        ("last.pth", 9, [6, 9])]
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pth")
    assert [e["iteration"] for e in state["hooks"]["EvalHook"]["history"]] == [6, 9]


def test_nothing_new_after_the_last_checkpoint_writes_no_second_one(tmp_path, monkeypatch) -> None:
    """Ended mid-epoch without a final evaluation, or at an epoch end (whose evaluation and last.pth are done):
    last.pth is written once at the final iteration."""
    mid_epoch = _run(tmp_path / "mid", monkeypatch, max_iters=9, at_end=False)
    assert [s for s in mid_epoch if s[0] == "last.pth"] == [("last.pth", 6, [6]), ("last.pth", 9, [6])]
    epoch_end = _run(tmp_path / "end", monkeypatch, max_iters=2 * ITERS_PER_EPOCH, at_end=True)
    assert [s for s in epoch_end if s[0] == "last.pth"] == [("last.pth", 6, [6]), ("last.pth", 12, [6, 12])]


def test_failed_rewrite_of_config_yaml_keeps_the_previous_one(smoke_data: list[str], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A resumed run rewrites config.yaml (the ModelZoo scripts read it); a disk that fills up in the middle of
    that write stops the run with the error and leaves the previous config.yaml, byte for byte. The file is
    what OmegaConf.save writes."""
    from failing_writes import DISK_FULL, fail_text_writes
    from omegaconf import OmegaConf

    run_dir = tmp_path / "run"
    overrides = [*smoke_data, "train.max_iters=1", "train.eval_interval=0", "train.eval_at_end=false",
                 "train.plots=false"]
    run_train(overrides, run_dir)
    config = run_dir / "config.yaml"
    before = config.read_bytes()
    saved = tmp_path / "saved.yaml"
    OmegaConf.save(OmegaConf.load(config), saved)
    assert saved.read_bytes() == before
    failures = fail_text_writes(monkeypatch, 50, DISK_FULL, name="config.yaml")
    with pytest.raises(OSError, match="No space left"):
        run_train([*overrides, "resume=auto"], run_dir)
    monkeypatch.undo()
    assert failures == [DISK_FULL], "the failure was not injected"
    assert config.read_bytes() == before
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
