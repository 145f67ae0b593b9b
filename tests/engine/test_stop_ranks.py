"""A stop request (SIGINT / SIGTERM) that reaches one rank stops every rank after the same step."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import torch
from engine_support import RegressionPairs, SignalAtEpochEnd
from torch import nn
from torch.utils.data import DataLoader

from solo_npu.checkpoints import load_checkpoint
from solo_npu.data import GroupedBatchSampler
from solo_npu.engine.checkpointer import training_state
from solo_npu.engine.hooks import CheckpointHook
from solo_npu.engine.launch import launch
from solo_npu.engine.trainer import Trainer


class _SignalOnRank(nn.Module):
    """Linear regression; on rank ``signal_rank`` the forward pass of step ``at`` (0-based) raises ``signum``."""

    def __init__(self, rank: int, signal_rank: int, signum: int, at: int) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 1)
        self.rank, self.signal_rank, self.signum, self.at = rank, signal_rank, signum, at
        self.trainer: Trainer | None = None

    def forward(self, images, targets):
        if self.rank == self.signal_rank and self.trainer is not None and self.trainer.iter == self.at:
            signal.raise_signal(self.signum)
        return {"loss_mse": ((self.fc(images).squeeze(-1) - targets["y"]) ** 2).mean()}


def _job(cfg: dict, run_dir: Path, info) -> None:
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = _SignalOnRank(rank, cfg["signal_rank"], cfg["signum"], cfg["at"])
    net = nn.parallel.DistributedDataParallel(model)
    sampler = GroupedBatchSampler(32, 2, shuffle=True, seed=0, rank=rank, world_size=world)
    loader = DataLoader(RegressionPairs(), batch_sampler=sampler)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = Trainer(net, opt, loader, info, max_epochs=3, iters_per_epoch=len(sampler), batch_size=2)
    model.trainer = trainer
    hooks = [CheckpointHook(run_dir, lambda: training_state(trainer), rank == 0, 0, 0)]
    if cfg.get("at_epoch_end") and rank == cfg["signal_rank"]:
        hooks.insert(0, SignalAtEpochEnd(cfg["signum"]))
    trainer.register_hooks(hooks)
    try:
        trainer.train()
        outcome = "finished"
    except KeyboardInterrupt as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    (run_dir / f"rank{rank}.json").write_text(json.dumps({"outcome": outcome, "iteration": trainer.iter}))


@pytest.mark.parametrize("signal_rank", [0, 1])
def test_a_signal_on_one_rank_stops_both_after_the_same_step(tmp_path: Path, signal_rank: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the agreement the rank that got the signal stops and the other waits in the next step's
    all-reduce until the process group times out."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    cfg = {"launcher": {"nproc_per_node": 2, "timeout_min": 2}, "runtime": {"device": "cpu"},
           "signal_rank": signal_rank, "signum": int(signal.SIGTERM), "at": 3}
    launch(_job, cfg, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # The request rides on step 4's all-reduce, so both ranks stop after step 4.
    assert ranks[0]["iteration"] == ranks[1]["iteration"] == 4, ranks
    assert ranks[0]["outcome"].startswith("Terminated") and ranks[1]["outcome"].startswith("Terminated"), ranks
    assert load_checkpoint(tmp_path / "last.pth")["iteration"] == ranks[0]["iteration"]


def test_a_signal_between_steps_on_one_rank_stops_both_after_the_next_step(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A signal at the epoch's end of one rank (the other may already wait in the next step's all-reduce)
    is carried to the next step's all-reduce: both ranks stop after it, nobody waits for a peer that left."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    cfg = {"launcher": {"nproc_per_node": 2, "timeout_min": 2}, "runtime": {"device": "cpu"},
           "signal_rank": 1, "signum": int(signal.SIGTERM), "at": -1, "at_epoch_end": True}
    launch(_job, cfg, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["iteration"] == ranks[1]["iteration"] == 9, ranks  # 8 steps per epoch, then one more
    assert ranks[1]["outcome"].startswith("Terminated") and ranks[0]["outcome"].startswith("Terminated"), ranks
    assert load_checkpoint(tmp_path / "last.pth")["iteration"] == 9


def _job_one_fails_one_hangs(cfg: dict, run_dir: Path, info) -> None:
    import time

    import torch.distributed as dist

    if dist.get_rank() == 1:
        raise ValueError("rank 1 failed")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as a rank blocked in a collective: SIGTERM does not end it
    time.sleep(600)


def test_a_failed_rank_does_not_leave_the_launch_waiting_for_a_stuck_one(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """torch 2.1's join() waits without a deadline for the ranks it sent SIGTERM; a rank that waits in a
    collective (NCCL / HCCL: until the group times out) or holds a stop request never ends on it. The launch
    kills it after the grace period and reports the rank that failed, not the kill."""
    import time

    from torch.multiprocessing import ProcessRaisedException

    launch_module = sys.modules[launch.__module__]

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(launch_module, "WORKER_EXIT_GRACE_S", 3.0)
    t0 = time.monotonic()
    with pytest.raises(ProcessRaisedException, match="rank 1 failed"):
        launch(_job_one_fails_one_hangs, {"launcher": {"nproc_per_node": 2}, "runtime": {"device": "cpu"}}, tmp_path)
    assert time.monotonic() - t0 < 25  # torch 2.13's own join waits 30 s before it kills, 2.1's forever
