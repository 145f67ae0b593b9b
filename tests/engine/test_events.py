"""The event storage and the writers that read it.

The storage follows detectron2's ``EventStorage`` (detectron2/utils/events.py): ``put_scalar`` files a value
under a name at the current iteration and appends it to that name's history; ``latest()`` maps every name to
"the most recent value and the iteration number its added"; ``history(name)`` raises ``KeyError`` for a
name never put. The writers follow its ``JSONWriter`` / ``TensorboardXWriter``: each writes only what it has
not written before.
"""

from __future__ import annotations

import csv
import logging
import math
import re
import sys
from pathlib import Path

import pytest

from solo_npu.engine.events import EventStorage, HistoryBuffer
from solo_npu.engine.hooks import LoggingHook
from solo_npu.engine.trainer import HookBase
from solo_npu.engine.writers import ConsoleWriter, CSVWriter, default_writers, use_progress_bar


def test_put_scalar_keeps_history_latest_and_the_step_record() -> None:
    s = EventStorage()
    s.begin_step(1, 0)
    s.put_scalars({"loss": 2.0, "lr": 0.1})
    s.begin_step(2, 0)
    s.put_scalar("loss", 1.5)
    assert s.history("loss").items() == [(1, 2.0), (2, 1.5)]
    assert s.latest() == {"loss": (1.5, 2), "lr": (0.1, 1)}  # lr was not put at step 2: its own iteration
    assert dict(s.step_scalars()) == {"loss": 1.5}  # the step record starts empty at every step
    with pytest.raises(TypeError):
        s.step_scalars()["loss"] = 0.0  # read-only: a hook cannot change what the step reported
    with pytest.raises(KeyError, match="grad_norm"):
        s.history("grad_norm")
    assert s.latest_value("grad_norm") is None and s.latest_value("grad_norm", 7.0) == 7.0


def test_published_events_are_read_in_order_from_a_cursor() -> None:
    s = EventStorage()
    s.begin_step(3, 1)
    s.put_scalar("loss", 9.0)  # plain: not an event
    s.put_scalars({"loss": 1.0, "lr": 0.5}, prefix="train/", publish=True)
    s.put_scalar("val/segm_AP", 0.25, publish=True, iteration=3, epoch=2)
    assert [(e.iteration, e.epoch, e.name, e.value) for e in s.events()] == [
        (3, 1, "train/loss", 1.0), (3, 1, "train/lr", 0.5), (3, 2, "val/segm_AP", 0.25)]
    assert s.num_events == 3
    # published scalars are not part of the step's record (that is what the step itself reported)
    assert dict(s.step_scalars()) == {"loss": 9.0}
    s.discard_events(2)
    assert [e.name for e in s.events(2)] == ["val/segm_AP"] and s.num_events == 3
    with pytest.raises(IndexError):
        s.events(0)
    s.put_record("epoch_counts", {"epoch": 1})
    assert s.records("epoch_counts") == [{"epoch": 1}] and s.records("data_faults") == []


def test_history_buffer_keeps_the_newest_values() -> None:
    h = HistoryBuffer(max_length=4)
    for i in range(1, 12):
        h.append(i, float(i * 10))
    assert len(h) == 4 and h.items() == [(8, 80.0), (9, 90.0), (10, 100.0), (11, 110.0)]
    assert h.values_after(9) == [100.0, 110.0] and h.values_after(11) == [] and h.latest() == 110.0


class _Position:
    """The loop position a console line shows (the trainer's attributes) and the images of a step (all ranks)."""

    epoch, inner_iter, iters_per_epoch, max_epochs, iter, max_iters, nonfinite_total = 0, 7, 9, 2, 7, 18, 1
    images_per_step = 2


def _steps(storage: EventStorage, writer: ConsoleWriter, trainer: object, step_times: list[float]) -> None:
    """Steps of ``trainer``'s epoch with these step times (as the trainer puts them), handed to ``writer``."""
    for step_time in step_times:
        trainer.iter += 1
        trainer.inner_iter += 1
        storage.begin_step(trainer.iter, trainer.epoch)
        storage.put_scalars({"data_time": 0.25, "step_time": step_time})
        writer.step(storage)


def test_csv_leaves_out_non_finite_values_that_the_console_prints(tmp_path: Path, caplog) -> None:
    s = EventStorage()
    position = _Position()
    position.iter = position.inner_iter = 0
    writers = [ConsoleWriter(), CSVWriter(tmp_path)]
    for w in writers:
        w.open(position)
    _steps(s, writers[0], position, [9.0] * 5 + [0.5, 0.25])  # the epoch's first 5 steps are not in FPS
    s.put_scalars({"memory_peak_mb": 12.0, "eta_seconds": 3725.0})
    s.put_scalars({"loss_a": float("nan"), "loss": float("nan"), "lr": 0.01, "images_per_sec": 8.0,
                   "memory_mb": 10.0, "nonfinite_total": 1.0}, prefix="train/", publish=True)
    with caplog.at_level(logging.INFO, logger="solo_npu.engine.writers"):
        for w in writers:
            w.write(s.events(), s)
            w.close()
    (line,) = [r.getMessage() for r in caplog.records]
    # images/s: the interval's (as published); FPS: the epoch's running mean after its first 5 steps, 4 / 0.75.
    assert line == ("epoch [1/2] iter [7/9] (7/18) loss_a: nan loss: nan lr: 1.000e-02 images/s: 8.00 "
                    "mem: 10MB (peak 12MB) data: 0.250s eta: 1:02:05 FPS: 5.333 nonfinite: 1")
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["iteration", "epoch", "name", "value"], ["7", "0", "train/lr", "0.01"],
                    ["7", "0", "train/images_per_sec", "8"], ["7", "0", "train/memory_mb", "10"],
                    ["7", "0", "train/nonfinite_total", "1"]]


def test_console_fps_is_the_running_mean_of_the_epoch_after_its_first_steps(caplog) -> None:
    """ModelZoo's mmcv (SOLOv2/mmcv/mmcv/runner/hooks/iter_timer.py, IterTimerHook) times the steps of an epoch from
    its 6th on and restarts with every epoch; the log's FPS: is images of all ranks over those steps' time. A line
    before the epoch has such a step has no FPS marker. Two epochs of 9 steps, a line every 2 steps."""
    s = EventStorage()
    position = _Position()
    position.iter = position.inner_iter = 0
    console = ConsoleWriter()
    console.open(position)
    times = [[0.1 * (1 + (3 * k + e) % 7) for k in range(9)] for e in range(2)]  # uneven, another order each epoch
    seen: list[tuple[int, float | None]] = []
    with caplog.at_level(logging.INFO, logger="solo_npu.engine.writers"):
        for epoch in range(2):
            position.epoch, position.inner_iter = epoch, 0
            for k in range(9):
                _steps(s, console, position, [times[epoch][k]])
                if position.iter % 2 == 0:
                    caplog.clear()
                    s.put_scalars({"lr": 0.01, "images_per_sec": 123.0}, prefix="train/", publish=True)
                    console.write(s.events(s.num_events - 2), s)
                    (line,) = [r.getMessage() for r in caplog.records]
                    assert "images/s: 123.00 " in line, line
                    fps = re.findall(r"FPS: (\S+)", line)
                    seen.append((position.inner_iter, float(fps[0]) if fps else None))
                    assert len(fps) <= 1 and ("FPS" in line) == bool(fps), line
    expected = []
    for epoch, inner in [(0, 2), (0, 4), (0, 6), (0, 8), (1, 1), (1, 3), (1, 5), (1, 7), (1, 9)]:
        timed = times[epoch][5:inner]
        expected.append((inner, round(2 * len(timed) / sum(timed), 3) if timed else None))
    assert seen == expected
    with pytest.raises(ValueError, match="fps_skipped_steps"):
        ConsoleWriter(fps_skipped_steps=-1)


def test_progress_bar_is_decided_in_one_place(monkeypatch: pytest.MonkeyPatch) -> None:
    assert use_progress_bar("tqdm") is True and use_progress_bar("plain") is False
    for tty in (True, False):
        monkeypatch.setattr(sys.stdout, "isatty", lambda tty=tty: tty)
        assert use_progress_bar("auto") is tty
    with pytest.raises(ValueError, match="train.progress"):
        use_progress_bar("bar")
    assert LoggingHook(default_writers(".", progress_bar=True, tensorboard=False)).use_tqdm
    assert not LoggingHook(default_writers(".", progress_bar=False, tensorboard=False)).use_tqdm


def test_interval_means_follow_the_steps_of_the_interval(tmp_path: Path) -> None:
    """Interval means over the steps since the previous line; a step that left grad_norm out makes it NaN."""
    from tests.engine.test_loop import make_trainer

    trainer, _ = make_trainer(epochs=1, poison=(4,))  # the 5th step (iteration 4 before it) is skipped
    seen: list[dict[str, float]] = []
    trainer.register_hooks([LoggingHook([], log_interval=3),
                            type("Record", (HookBase,), {"after_step": lambda h: seen.append(dict(h.trainer.last))})()])
    trainer.train()
    storage = trainer.storage
    loss = storage.history("train/loss").items()
    assert [it for it, _ in loss] == [3, 6]
    assert loss[0][1] == pytest.approx(sum(r["loss"] for r in seen[:3]) / 3)
    assert math.isnan(loss[1][1])  # the skipped step's NaN loss is in the second interval
    grad = storage.history("train/grad_norm").items()
    assert grad[0][1] == pytest.approx(sum(r["grad_norm"] for r in seen[:3]) / 3) and math.isnan(grad[1][1])
    assert storage.history("train/lr").items()[1][1] == seen[5]["lr"]  # the last step's, not a mean
    assert storage.history("train/nonfinite_total").items() == [(3, 0.0), (6, 1.0)]


def test_throughput_counts_the_steps_after_the_warm_up() -> None:
    """fps: images over seconds of the steps after the first ``warmup_steps``, all steps until there are some."""
    from types import SimpleNamespace

    from solo_npu.engine.hooks import ThroughputHook

    storage = EventStorage()
    hook = ThroughputHook(warmup_steps=2)
    hook.trainer = SimpleNamespace(storage=storage, images_per_step=4)
    fps = []
    for i, step_time in enumerate([1.0, 1.0, 0.5, 0.25, 0.25], 1):
        storage.begin_step(i, 0)
        storage.put_scalar("step_time", step_time)
        hook.after_step()
        fps.append(storage.latest_value("fps"))
    assert fps[:2] == [4.0, 4.0]  # 4 images in 1 s, 8 in 2 s: still warming up, so all steps count
    assert fps[2:] == [4 / 0.5, 8 / 0.75, 12 / 1.0]  # steps 3.. only
