"""A stop that every rank takes at the same step (non-finite losses, an agreed SIGINT / SIGTERM) waits for global
rank 0 to finish writing last.pth before any rank leaves: a rank that left early with a failure status made
torch.multiprocessing (and torchrun) SIGTERM the others, rank 0 in the middle of its save."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from engine_support import RegressionPairs
from torch import nn
from torch.utils.data import DataLoader

from solo_npu.checkpoints import load_checkpoint
from solo_npu.data import GroupedBatchSampler
from solo_npu.engine import interrupts
from solo_npu.engine.checkpointer import training_state
from solo_npu.engine.hooks import CheckpointHook
from solo_npu.engine.launch import launch
from solo_npu.engine.trainer import NonFiniteLossError, Trainer

SLOW_SAVE_S = 3.0


class _Regression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 1)

    def forward(self, images, targets):
        return {"loss_mse": ((self.fc(images).squeeze(-1) - targets["y"]) ** 2).mean()}


def _job_nonfinite(cfg: dict, run_dir: Path, info) -> None:
    """Two ranks; step 3's loss is NaN on every rank and train.max_nonfinite=1 stops the run there. Global
    rank 0's state takes SLOW_SAVE_S to gather, as a large checkpoint on a shared file system takes to write."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = _Regression()
    net = nn.parallel.DistributedDataParallel(model)
    sampler = GroupedBatchSampler(32, 2, shuffle=True, seed=0, rank=rank, world_size=world)
    loader = DataLoader(RegressionPairs(), batch_sampler=sampler)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = Trainer(net, opt, loader, info, max_epochs=3, iters_per_epoch=len(sampler), batch_size=2,
                      max_nonfinite=1, poison_iters=[3])

    def slow_state():
        if rank == 0 and trainer.iter == 3:
            time.sleep(SLOW_SAVE_S)
        return training_state(trainer)

    trainer.register_hooks([CheckpointHook(run_dir, slow_state, rank == 0, 0, 0)])
    trainer.train()  # raises NonFiniteLossError on both ranks, as a worker of train.py does


def test_non_finite_stop_waits_for_rank_0_to_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    cfg = {"launcher": {"nproc_per_node": 2, "timeout_min": 2}, "runtime": {"device": "cpu"}}
    with pytest.raises(NonFiniteLossError, match="1 skipped steps in a row"):
        launch(_job_nonfinite, cfg, tmp_path)
    # Before: rank 1 left at once with status 1, the launch sent rank 0 SIGTERM inside its save, and no
    # last.pth was written (only a checkpoint-sized temporary file was left).
    assert (tmp_path / "last.pth").is_file(), sorted(p.name for p in tmp_path.iterdir())
    assert load_checkpoint(tmp_path / "last.pth")["iteration"] == 3
    assert not list(tmp_path.glob(".last.pth.*")), "a temporary file of an unfinished save was left"


_HELD_CHILD = r"""
import os, signal, sys, time
from solo_npu.engine import interrupts
with interrupts.sigterm_held("writing last.pth"):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
    print("block finished", flush=True)
print("after", signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, flush=True)
"""


def test_sigterm_waits_while_a_stop_saves() -> None:
    """A second SIGTERM (the scheduler's own and torchrun's, passed on) while the stop's checkpoint is written
    lets it finish; afterwards SIGTERM is back to its default."""
    out = subprocess.run([sys.executable, "-c", _HELD_CHILD], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2], env={**os.environ, "PYTHONPATH": "."})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["block finished", "after True"], out.stdout
    assert "SIGTERM received while writing last.pth" in out.stderr


def test_agreed_stops_are_marked_and_a_lone_second_ctrl_c_is_not() -> None:
    held = interrupts.Interrupts()
    held._distributed = True
    held.agree({"sigterm": 1.0})
    with pytest.raises(interrupts.Terminated) as caught:
        held.release()
    assert interrupts.stops_every_rank(caught.value)
    assert interrupts.stops_every_rank(NonFiniteLossError("x"))
    assert not interrupts.stops_every_rank(interrupts.InterruptedMidStep("twice"))
    assert not interrupts.stops_every_rank(KeyboardInterrupt("SIGINT received twice"))
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
