"""The training loop with a stand-in model: loss falls, NaN steps are skipped, resume is exact."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from solo_npu.checkpoints import load_checkpoint
from solo_npu.data import GroupedBatchSampler
from solo_npu.engine.checkpointer import restore_training_state, training_state
from solo_npu.engine.hooks import CheckpointHook, LRHook
from solo_npu.engine.optim import WarmupStepSchedule
from solo_npu.engine.trainer import NonFiniteLossError, Trainer
from solo_npu.runtime import resolve_device

CPU = resolve_device("cpu")


class PairDataset(Dataset):
    """y = x @ w_true + noise; the noise depends on (index, epoch) like the real augmentation."""

    def __init__(self, n: int = 24) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.w = torch.tensor([1.0, -2.0, 0.5, 3.0])

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, epoch = key
        noise = torch.randn((), generator=torch.Generator().manual_seed(index * 1000 + epoch)) * 0.01
        return {"images": self.x[index], "y": self.x[index] @ self.w + noise}


class Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 1)

    def forward(self, images: torch.Tensor, targets: dict) -> dict[str, torch.Tensor]:
        jitter = 0.01 * torch.randn_like(images)  # uses the torch RNG, so resume must restore it
        pred = self.fc(images + jitter).squeeze(-1)
        return {"loss_mse": ((pred - targets["y"]) ** 2).mean()}


def make_trainer(tmp: Path | None = None, epochs: int = 3, poison=(), max_nonfinite: int = 5,
                 interval_iters: int = 0) -> tuple[Trainer, WarmupStepSchedule]:
    torch.manual_seed(0)
    model = Regressor()
    sampler = GroupedBatchSampler(24, 4, shuffle=True, seed=3)
    loader = DataLoader(PairDataset(), batch_sampler=sampler)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.5)
    schedule = WarmupStepSchedule(opt, 0.03, [2], 0.1, warmup_iters=3, warmup_ratio=0.1)
    trainer = Trainer(model, opt, loader, CPU, max_epochs=epochs, iters_per_epoch=len(sampler), grad_clip=35.0,
                      max_nonfinite=max_nonfinite, batch_size=4, poison_iters=poison)
    hooks = [LRHook(schedule)]
    if tmp is not None:
        hooks.append(CheckpointHook(tmp, lambda: training_state(trainer, schedule), True, 0, interval_iters))
    trainer.register_hooks(hooks)
    return trainer, schedule


def test_loss_falls_and_lr_follows_schedule() -> None:
    trainer, schedule = make_trainer()
    first = []
    trainer.register_hooks([type("H", (LRHook,), {"before_step": lambda s: None,
                                                   "after_step": lambda s: first.append(s.trainer.last["loss"])})(
        schedule)])
    trainer.train()
    assert trainer.iter == 18 and trainer.epoch == 3
    assert sum(first[-3:]) < 0.05 * sum(first[:3])
    assert schedule.last_lr == pytest.approx(0.003)  # epoch 2 is past the step at epoch 2


def test_nonfinite_step_is_skipped_and_counted() -> None:
    ref, _ = make_trainer(epochs=1, poison=())
    ref.max_iters = 2
    ref.train()
    poisoned, _ = make_trainer(epochs=1, poison=(2,))
    poisoned.max_iters = 3
    poisoned.train()
    assert poisoned.nonfinite_total == 1 and poisoned.nonfinite_in_row == 1
    assert math.isnan(poisoned.last["loss"])
    # the poisoned step changed nothing: weights equal the reference after its 2 good steps
    for a, b in zip(ref.model.state_dict().values(), poisoned.model.state_dict().values()):
        assert torch.equal(a, b)


def test_too_many_nonfinite_stops_with_checkpoint(tmp_path: Path) -> None:
    trainer, _ = make_trainer(tmp_path, epochs=2, poison=(3, 4, 5), max_nonfinite=3)
    with pytest.raises(NonFiniteLossError, match="max_nonfinite=3"):
        trainer.train()
    state = load_checkpoint(tmp_path / "last.pth")
    assert state["iteration"] == 5 and state["nonfinite_total"] == 3


def test_resume_mid_epoch_is_exact(tmp_path: Path) -> None:
    full, _ = make_trainer(epochs=3)
    full.train()

    part, _ = make_trainer(tmp_path, epochs=3, interval_iters=4)
    part.max_iters = 8  # stops mid-epoch 1 (6 iterations per epoch)
    part.train()
    state = load_checkpoint(tmp_path / "last.pth")
    assert (state["epoch"], state["inner_iter"], state["iteration"]) == (1, 2, 8)

    resumed, schedule = make_trainer(epochs=3)
    torch.manual_seed(123)  # different RNG state before restoring: the checkpoint must bring it back
    restore_training_state(resumed, state, schedule)
    resumed.train()
    assert resumed.iter == full.iter == 18
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    for a, b in zip(full.optimizer.state_dict()["state"].values(), resumed.optimizer.state_dict()["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


def test_progress_bar_shows_iterations_eta_and_losses(tmp_path: Path, capsys) -> None:
    from solo_npu.engine.hooks import LoggingHook
    from solo_npu.engine.writers import default_writers, use_progress_bar

    trainer, _ = make_trainer(epochs=2)
    hook = LoggingHook(default_writers(tmp_path, use_progress_bar("tqdm"), tensorboard=False), log_interval=4)
    trainer.register_hooks([hook])
    trainer.train()
    err = capsys.readouterr().err
    assert hook.use_tqdm and "train: 100%" in err and "12/12" in err, err[-500:]
    assert "<00:00" in err and "img/s" in err and "loss" in err  # ETA, throughput and the loss postfix
    assert (tmp_path / "metrics.csv").read_text().count("train/loss_mse") == 3  # iterations 4, 8, 12
