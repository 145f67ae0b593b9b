"""The training loop with a stand-in model: loss falls, NaN steps are skipped, resume is exact."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_support import SignalAtEpochEnd
from torch import nn
from torch.utils.data import DataLoader, Dataset

from solo_npu.checkpoints import load_checkpoint
from solo_npu.data import GroupedBatchSampler
from solo_npu.engine.checkpointer import restore_training_state, training_state
from solo_npu.engine.hooks import CheckpointHook, LRHook
from solo_npu.engine.interrupts import InterruptedMidStep
from solo_npu.engine.optim import WarmupStepSchedule
from solo_npu.engine.trainer import HookBase, NonFiniteLossError, Trainer
from solo_npu.runtime import StaticGradScaler, resolve_device

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


def test_nonfinite_steps_in_a_row_count_across_a_resume(tmp_path: Path) -> None:
    # poison_iters count the steps done before: (2, 3) poisons the third and fourth steps
    part, _ = make_trainer(tmp_path, epochs=2, poison=(2, 3), max_nonfinite=3, interval_iters=4)
    part.max_iters = 4  # two skipped steps in a row, then the checkpoint at iteration 4
    part.train()
    state = load_checkpoint(tmp_path / "last.pth")
    assert (state["iteration"], state["nonfinite_total"], state["nonfinite_in_row"]) == (4, 2, 2)
    resumed, schedule = make_trainer(epochs=2, poison=(4,), max_nonfinite=3)
    restore_training_state(resumed, state, schedule)
    with pytest.raises(NonFiniteLossError, match="3 skipped steps in a row"):  # the third in a row, as unresumed
        resumed.train()
    assert resumed.iter == 4  # at the first resumed step (the counter moves on after a step)


def test_gradient_norm_overflow_without_a_scaler_is_named(caplog) -> None:
    trainer, _ = make_trainer(epochs=1)
    trainer.max_iters = 1
    trainer.model.fc.weight.register_hook(lambda g: g * float("inf"))  # finite loss, inf gradient
    caplog.set_level("WARNING")
    trainer.train()
    assert trainer.nonfinite_total == 1 and math.isfinite(trainer.last["loss"])
    assert "non-finite gradient norm (inf) at iteration 0" in caplog.text
    assert "non-finite loss" not in caplog.text


@pytest.mark.skipif(not hasattr(torch.amp, "GradScaler"), reason="torch.amp.GradScaler came with torch 2.3")
def test_a_step_the_dynamic_scaler_skips_puts_no_grad_norm() -> None:
    trainer, _ = make_trainer(epochs=1)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trainer.max_iters = 2
    overflow = [float("inf")]  # the first step's gradients overflow, as fp16 ones would
    trainer.model.fc.weight.register_hook(lambda g: g * (overflow.pop() if overflow else 1.0))
    norms = []
    trainer.register_hooks([type("H", (HookBase,), {"after_step": lambda s: norms.append(
        s.trainer.last.get("grad_norm"))})()])
    trainer.train()
    assert norms[0] is None and trainer.scaler.get_scale() == 512.0  # skipped and backed off
    assert norms[1] is not None and math.isfinite(norms[1])
    assert trainer.nonfinite_total == 0  # the dynamic scale's calibration, not a failure


@pytest.mark.skipif(not hasattr(torch.amp, "GradScaler"), reason="torch.amp.GradScaler came with torch 2.3")
def test_resume_under_a_static_loss_scale_says_the_checkpoints_scale(caplog) -> None:
    saved, schedule = make_trainer(epochs=1)
    saved.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    state = training_state(saved, schedule)
    resumed, schedule = make_trainer(epochs=1)
    resumed.scaler = StaticGradScaler("cpu", 128.0)
    caplog.set_level("WARNING")
    restore_training_state(resumed, state, schedule)
    assert resumed.scaler.get_scale() == 128.0
    assert "the checkpoint's loss scale is 1024; this run's amp.loss_scale=128 applies" in caplog.text


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


class _SignalInUpdate(torch.optim.SGD):
    """SGD that receives ``signum`` right after it has changed the weights of step ``at`` (0-based)."""

    def __init__(self, *args, signum: int, at: int, trainer_ref: list, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.signum, self.at, self.trainer_ref = signum, at, trainer_ref

    def step(self, closure=None):
        out = super().step(closure)
        if self.trainer_ref and self.trainer_ref[0].iter == self.at:
            signal.raise_signal(self.signum)  # Python runs the handler before the next line
        return out


def _interrupted_trainer(tmp: Path, signum: int, at: int) -> Trainer:
    trainer, _ = make_trainer(tmp, epochs=3)
    ref: list = []
    opt = _SignalInUpdate(trainer.model.parameters(), lr=0.03, momentum=0.5, signum=signum, at=at, trainer_ref=ref)
    opt.load_state_dict(trainer.optimizer.state_dict())
    trainer.optimizer = opt
    trainer.hooks[0].schedule.optimizer = opt
    ref.append(trainer)
    return trainer


@pytest.fixture
def python_sigint() -> None:
    """Python's own SIGINT handler for the test. A process started in the background by a non-interactive
    shell inherits SIGINT ignored, Python then leaves it ignored, and the trainer (rightly) keeps an ignored
    SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _stop_in_update_is_exact(tmp_path: Path, signum: int, raised: type) -> None:
    """A signal that arrives after the optimiser changed the weights of step 8 stops the run once the step is
    counted and recorded: last.pth holds 8 steps and the weights after them, and resuming from it gives the
    uninterrupted run's weights (a checkpoint of 7 steps with the weights of 8 would repeat a step)."""
    full, _ = make_trainer(epochs=3)
    full.train()
    previous = signal.getsignal(signum)
    trainer = _interrupted_trainer(tmp_path, signum, at=7)
    with pytest.raises(raised):
        trainer.train()
    assert signal.getsignal(signum) is previous  # handlers restored
    state = load_checkpoint(tmp_path / "last.pth")
    assert (state["epoch"], state["inner_iter"], state["iteration"]) == (1, 2, 8)

    eight, _ = make_trainer(epochs=3)
    eight.max_iters = 8
    eight.train()
    for key, value in eight.model.state_dict().items():
        assert torch.equal(state["model"][key], value), key

    resumed, schedule = make_trainer(epochs=3)
    restore_training_state(resumed, state, schedule)
    resumed.train()
    assert resumed.iter == full.iter == 18
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


def _signal_in_forward_stops_after_the_step(tmp_path: Path, signum: int, raised: type) -> None:
    """A signal in the forward pass of step 6 (BatchNorm statistics and the random generators move there)
    stops once that step is complete: 6 steps saved, and the resume is exact."""
    full, _ = make_trainer(epochs=3)
    full.train()
    trainer, _ = make_trainer(tmp_path, epochs=3)
    forward = trainer.model.forward

    def forward_with_signal(images, targets):
        if trainer.iter == 5:
            signal.raise_signal(signum)
        return forward(images, targets)

    trainer.model.forward = forward_with_signal
    with pytest.raises(raised):
        trainer.train()
    state = load_checkpoint(tmp_path / "last.pth")
    assert state["iteration"] == 6
    resumed, schedule = make_trainer(epochs=3)
    restore_training_state(resumed, state, schedule)
    resumed.train()
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_ctrl_c_in_the_forward_pass_stops_after_the_step(tmp_path: Path, python_sigint: None) -> None:
    _signal_in_forward_stops_after_the_step(tmp_path, signal.SIGINT, KeyboardInterrupt)


@pytest.mark.parametrize("apart_s", [1.5, 0.0])
def test_second_ctrl_c_inside_a_step_stops_at_once_without_saving(tmp_path: Path, python_sigint: None,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  apart_s: float) -> None:
    """A second Ctrl-C a second or more after the first stops at once; one sooner is the same Ctrl-C delivered
    twice (torch 2.1's torchrun passes its own on to workers the terminal reached too) and changes nothing."""
    from solo_npu.engine import interrupts

    clock = iter([100.0, 100.0 + apart_s])
    monkeypatch.setattr(interrupts, "_clock", lambda: next(clock))
    trainer, _ = make_trainer(tmp_path, epochs=3, interval_iters=4)
    forward = trainer.model.forward

    def forward_with_two(images, targets):
        if trainer.iter == 5:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return forward(images, targets)

    trainer.model.forward = forward_with_two
    if apart_s >= interrupts.SAME_CTRL_C_S:
        with pytest.raises(InterruptedMidStep):
            trainer.train()
        assert trainer.iter == 5
        assert load_checkpoint(tmp_path / "last.pth")["iteration"] == 4  # the periodic checkpoint, not a half step
    else:
        with pytest.raises(KeyboardInterrupt) as stop:
            trainer.train()
        assert not isinstance(stop.value, InterruptedMidStep)
        assert load_checkpoint(tmp_path / "last.pth")["iteration"] == 6  # after the step, saved
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_during_the_update_stops_after_it_and_resume_is_exact(tmp_path: Path, python_sigint: None) -> None:
    _stop_in_update_is_exact(tmp_path, signal.SIGINT, KeyboardInterrupt)


def test_sigterm_saves_the_state_and_resume_is_exact(tmp_path: Path) -> None:
    """SIGTERM (what schedulers and torchrun send before a kill) saves the state like Ctrl-C. Run in a child
    process: without a handler SIGTERM would end the test process itself."""
    code = ("import sys; from pathlib import Path; import signal; import test_loop as t; "
            "from solo_npu.engine.interrupts import Terminated; "
            "t._stop_in_update_is_exact(Path(sys.argv[1]), signal.SIGTERM, Terminated); "
            "t._signal_in_forward_stops_after_the_step(Path(sys.argv[2]), signal.SIGTERM, Terminated); "
            "print('checked')")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a"), str(tmp_path / "b")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "checked" in out.stdout, (out.returncode, out.stdout[-2000:], out.stderr[-3000:])


def test_ctrl_c_at_the_epoch_end_lets_it_finish(tmp_path: Path, python_sigint: None) -> None:
    """The epoch's end (evaluation, epoch checkpoints) is not cut off: epoch_1.pth is written, the stop comes
    after it, and the resumed run continues exactly with the next epoch."""
    full, _ = make_trainer(epochs=3)
    full.train()
    trainer, schedule = make_trainer(epochs=3)
    hook = CheckpointHook(tmp_path, lambda: training_state(trainer, schedule), True, 1, 0)
    trainer.hooks.insert(0, SignalAtEpochEnd(signal.SIGINT))
    trainer.register_hooks([hook])
    trainer.hooks[0].trainer = trainer
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert (tmp_path / "epoch_1.pth").is_file()
    state = load_checkpoint(tmp_path / "last.pth")
    assert (state["epoch"], state["inner_iter"], state["iteration"]) == (1, 0, 6)
    resumed, schedule = make_trainer(epochs=3)
    restore_training_state(resumed, state, schedule)
    resumed.train()
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


class _EpochEnds(HookBase):
    def __init__(self) -> None:
        self.ends: list[tuple[int, int]] = []

    def after_epoch(self) -> None:
        self.ends.append((self.trainer.epoch, self.trainer.iter))


def test_a_stop_after_an_epochs_last_step_runs_its_end_on_resume(tmp_path: Path) -> None:
    """SIGTERM in the last step of epoch 1 stops after that step, before the epoch's end (its evaluation, epoch
    counts, epoch_1.pth). The checkpoint's position (epoch 0, step 6 of 6) is also that of a checkpoint written at
    the epoch's end, and the resumed run took it for one: the end of epoch 1 never ran (the full suite saw its
    epoch counts merged into epoch 2's). It runs first on resume now, once."""
    full, _ = make_trainer(epochs=3)
    full.train()
    trainer, schedule = make_trainer(epochs=3)
    trainer.register_hooks([CheckpointHook(tmp_path, lambda: training_state(trainer, schedule), True, 1, 0)])
    forward = trainer.model.forward
    last_step = trainer.iters_per_epoch - 1

    def forward_with_signal(images, targets):
        if trainer.iter == last_step:
            signal.raise_signal(signal.SIGTERM)
        return forward(images, targets)

    trainer.model.forward = forward_with_signal
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    state = load_checkpoint(tmp_path / "last.pth")
    assert (state["epoch"], state["inner_iter"], state["iteration"], state["epoch_end_pending"]) == (0, 6, 6, True)
    assert not (tmp_path / "epoch_1.pth").exists()

    resumed, schedule = make_trainer(epochs=3)
    ends = _EpochEnds()
    resumed.register_hooks([ends, CheckpointHook(tmp_path, lambda: training_state(resumed, schedule), True, 1, 0)])
    restore_training_state(resumed, state, schedule)
    resumed.train()
    assert ends.ends == [(0, 6), (1, 12), (2, 18)]
    assert load_checkpoint(tmp_path / "epoch_1.pth")["iteration"] == 6
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    # a checkpoint written at the epoch's end resumes into the next epoch without running that end again
    again, schedule = make_trainer(epochs=3)
    ends = _EpochEnds()
    again.register_hooks([ends])
    restore_training_state(again, load_checkpoint(tmp_path / "epoch_1.pth"), schedule)
    again.train()
    assert ends.ends == [(1, 12), (2, 18)]


def test_checkpoints_number_epochs_as_the_step_lines_do(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """epoch_2.pth was saved at the end of epoch 2 and says so (the log line, and the evaluation's line read from the
    file), as mmcv's meta epoch (self.epoch + 1) says for mmdet files; a save inside an epoch names the epoch its
    last step belongs to, as the step lines do (epoch [2/2])."""
    from solo_npu.engine.finetune import checkpoint_position

    trainer, schedule = make_trainer(epochs=2)
    trainer.register_hooks([CheckpointHook(tmp_path, lambda: training_state(trainer, schedule), True, 1, 4)])
    with caplog.at_level("INFO", logger="solo_npu.engine.checkpointer"):
        trainer.train()
    for epoch, iteration in ((1, 6), (2, 12)):
        state = load_checkpoint(tmp_path / f"epoch_{epoch}.pth")
        assert (state["epoch"], state["epoch_number"], state["iteration"]) == (epoch - 1, epoch, iteration)
        assert checkpoint_position(state)["epoch"] == epoch
        assert f"saved checkpoint {tmp_path / f'epoch_{epoch}.pth'} (epoch {epoch}, iteration {iteration})" in \
            caplog.messages
    # last.pth every 4 iterations: iteration 4 in epoch 1, iteration 8 in epoch 2 (6 steps an epoch)
    assert f"saved checkpoint {tmp_path / 'last.pth'} (epoch 1, iteration 4)" in caplog.messages
    assert f"saved checkpoint {tmp_path / 'last.pth'} (epoch 2, iteration 8)" in caplog.messages
    # files written before epoch_number was recorded: their 0-based epoch, as before
    assert checkpoint_position({"epoch": 1, "iteration": 12, "inner_iter": 6})["epoch"] == 1
