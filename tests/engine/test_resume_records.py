"""The run's records (metrics.csv, TensorBoard) when a run resumes exactly from a checkpoint older than its last
logged row: ``epoch_1.pth`` of a run that went on, or ``last.pth`` of a run that logged further before it crashed.
The resumed run does the steps after the checkpoint again; each (iteration, name) must be recorded once.

TensorBoard's side is SummaryWriter's ``purge_step`` (torch/utils/tensorboard/writer.py: "When logging crashes at
step T+X and restarts at step T, any events whose global_step larger or equal to T will be purged and hidden from
TensorBoard"): it writes a ``SessionLog.START`` event at step T, and TensorBoard's EventAccumulator
(tensorboard/backend/event_processing/event_accumulator.py, ``_CheckForRestartAndMaybePurge``) drops the events
read before it at steps >= T. The tests read the events back with that EventAccumulator.
"""

from __future__ import annotations

import csv
import logging
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from engine_support import run_train

from solo_npu.engine.events import EventStorage, ScalarEvent
from solo_npu.engine.writers import CSVWriter, TensorBoardWriter

FAST = ["train.plots=false", "train.log_interval=1", "train.checkpoint_interval_iters=0", "train.eval_interval=1",
        "train.eval_at_end=false"]


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _write_csv(path: Path, rows: list[list]) -> str:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["iteration", "epoch", "name", "value"], *rows])
    return path.read_text()


def _sort_first(log_dir: Path) -> None:
    """Name the event files in ``log_dir`` as if written at time 0. TensorBoard reads a folder's files in name order
    (time in seconds, host, pid, a counter of the process): the tests' runs share one process and often one second,
    where a counter going from 9 to 10 would sort the later file first."""
    for path in log_dir.glob("events.out.tfevents.*"):
        path.rename(path.with_name(re.sub(r"^events\.out\.tfevents\.\d+\.", "events.out.tfevents.0000000000.",
                                          path.name)))


def _scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of ``tag`` as TensorBoard shows it (restarts purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def _purge_events(path: Path) -> list[int]:
    """The steps of the SessionLog.START events in one event file (what SummaryWriter(purge_step=...) writes)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    return [e.step for e in EventFileLoader(str(path)).Load()
            if e.HasField("session_log") and e.session_log.status == SessionLog.START]


# --- the writers ---------------------------------------------------------------------------------------------------

def test_csv_leaves_out_the_rows_after_the_checkpoint_and_keeps_the_file_as_it_was(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [[it, 0, name, it / 10] for it in range(1, 7) for name in ("train/loss", "train/lr")]
    rows.append([3, 1, "val/segm_AP", 0.5])
    before_text = _write_csv(tmp_path / "metrics.csv", rows)
    writer = CSVWriter(tmp_path)
    with caplog.at_level(logging.INFO, logger="solo_npu.engine.writers"):
        writer.resume(3)
    kept = [r for r in _rows(tmp_path / "metrics_before_resume_3.csv")[1:] if int(r[0]) <= 3]
    assert (tmp_path / "metrics_before_resume_3.csv").read_text() == before_text
    assert _rows(tmp_path / "metrics.csv") == [["iteration", "epoch", "name", "value"], *kept]
    assert len(kept) == 7 and [r[0] for r in kept] == ["1", "1", "2", "2", "3", "3", "3"]
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == ("metrics.csv: 6 rows logged after the checkpoint's iteration 3 left out (the resumed run does "
                    "those steps again); the file as it was is metrics_before_resume_3.csv")
    # The resumed run appends after the rows kept.
    writer.open(None)
    writer.close()
    assert _rows(tmp_path / "metrics.csv")[1:] == kept

    # A second resume from the same checkpoint keeps the file as it then was beside the first copy.
    rewritten = _write_csv(tmp_path / "metrics.csv", [*kept, [4, 0, "train/loss", 9.0]])
    CSVWriter(tmp_path).resume(3)
    assert (tmp_path / "metrics_before_resume_3.csv").read_text() == before_text
    assert (tmp_path / "metrics_before_resume_3_2.csv").read_text() == rewritten
    assert _rows(tmp_path / "metrics.csv")[1:] == kept


def test_csv_of_a_plain_resume_stays_as_it_is(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``last.pth`` of the last logged step: nothing to leave out, no copy, no message."""
    text = _write_csv(tmp_path / "metrics.csv", [[it, 0, "train/loss", it] for it in range(1, 5)])
    with caplog.at_level(logging.INFO, logger="solo_npu.engine.writers"):
        CSVWriter(tmp_path).resume(4)
        CSVWriter(tmp_path / "new").resume(4)  # a run directory without metrics.csv
    assert (tmp_path / "metrics.csv").read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"] and not caplog.records


def _tensorboard_run(log_dir: Path, values: dict[int, float], resume_from: int | None = None) -> None:
    writer = TensorBoardWriter(log_dir)
    if resume_from is not None:
        writer.resume(resume_from)
    writer.open(None)
    writer.write([ScalarEvent(it, 0, "train/loss", v) for it, v in values.items()], EventStorage())
    writer.close()


def test_tensorboard_hides_the_steps_after_the_checkpoint_and_keeps_its_own(tmp_path: Path) -> None:
    """Steps 1-6 written, resumed from the checkpoint of step 3: purge_step 4 (the checkpoint holds step 3, which the
    resumed run does not write again). TensorBoard shows steps 1-3 of the first run and 4-8 of the resumed one."""
    pytest.importorskip("tensorboard")
    log_dir = tmp_path / "tensorboard"
    _tensorboard_run(log_dir, {it: float(it) for it in range(1, 7)})
    _sort_first(log_dir)
    (first,) = log_dir.iterdir()
    _tensorboard_run(log_dir, {it: 10.0 * it for it in range(4, 9)}, resume_from=3)
    (second,) = [p for p in log_dir.iterdir() if p != first]
    assert _purge_events(first) == [] and _purge_events(second) == [4]
    assert _scalars(log_dir, "train/loss") == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0),
                                               (7, 70.0), (8, 80.0)]


def test_tensorboard_in_a_new_folder_writes_no_purge(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    _tensorboard_run(tmp_path, {5: 1.0}, resume_from=4)
    (path,) = tmp_path.iterdir()
    assert _purge_events(path) == []


# --- the training job: three epochs, resumed exactly from epoch_1.pth in the same run directory ----------------------

def test_exact_resume_from_an_older_checkpoint_records_each_step_once(
        smoke_data: list[str], tmp_path: Path) -> None:
    """The smoke run (1 x 2, 9 iterations per epoch) trained 3 epochs with an evaluation after each, then resumed
    with resume=<run>/checkpoints/epoch_1.pth (iteration 9) in its run directory: it does iterations 10-27 again.
    metrics.csv: the rows up to iteration 9 as they were, then the resumed run's, no (iteration, name) twice and
    every name's iterations increasing; the file as it was is metrics_before_resume_9.csv. TensorBoard shows each
    step once, the resumed run's values after iteration 9."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    overrides = [*smoke_data, *FAST, "train.epochs=3"]
    run_train(overrides, run_dir)
    before_text = (run_dir / "metrics.csv").read_text()
    before = _rows(run_dir / "metrics.csv")
    assert max(int(r[0]) for r in before[1:]) == 27
    shutil.copyfile(run_dir / "checkpoints" / "epoch_1.pth", tmp_path / "epoch_1.pth")
    _sort_first(run_dir / "tensorboard")

    summary = run_train([*overrides, f"resume={tmp_path / 'epoch_1.pth'}"], run_dir)
    assert summary["iterations"] == 27
    after = _rows(run_dir / "metrics.csv")
    kept = [r for r in before[1:] if int(r[0]) <= 9]
    assert after[:len(kept) + 1] == [before[0], *kept]
    new = after[len(kept) + 1:]
    assert sorted({int(r[0]) for r in new}) == list(range(10, 28))
    duplicates = [key for key, n in Counter((r[0], r[2]) for r in after[1:]).items() if n > 1]
    assert not duplicates, duplicates
    assert Counter(r[2] for r in after[1:]) == Counter(r[2] for r in before[1:])  # every record once, as before
    for name in {r[2] for r in after[1:]}:
        its = [int(r[0]) for r in after[1:] if r[2] == name]
        assert its == sorted(its), name
    assert [int(r[0]) for r in after[1:] if r[2] == "val/segm_AP"] == [9, 18, 27]
    assert (run_dir / "metrics_before_resume_9.csv").read_text() == before_text
    assert [line.split(": ", 1)[1] for line in (run_dir / "train.log").read_text().splitlines()
            if "left out" in line] == [
        f"metrics.csv: {len(before) - 1 - len(kept)} rows logged after the checkpoint's iteration 9 left out (the "
        "resumed run does those steps again); the file as it was is metrics_before_resume_9.csv"]

    pytest.importorskip("tensorboard")
    shown = _scalars(run_dir / "tensorboard", "train/loss")
    assert [step for step, _ in shown] == list(range(1, 28))
    logged = {int(r[0]): float(r[3]) for r in after[1:] if r[2] == "train/loss"}
    assert [value for _, value in shown] == pytest.approx([logged[step] for step in range(1, 28)], rel=1e-5)
    assert [step for step, _ in _scalars(run_dir / "tensorboard", "val/segm_AP")] == [9, 18, 27]


def test_resume_follows_the_schedule_and_optimiser_settings_of_its_config(tmp_path: Path) -> None:
    """Resuming a finished 2-epoch run as a 4-epoch run with a new base LR, an LR step and a new weight decay (as
    "continue my 1x run as 3x" does): the steps after the checkpoint follow the config that config.yaml and the log
    show, with one WARNING each naming what changed. Before, the checkpoint's schedule and weight decay went on
    silently (base LR 0.04/16*2 = 0.005, no step)."""
    run_dir = tmp_path / "run"
    common = [f"data.root={tmp_path / 'data'}", "train.plots=false", "train.log_interval=1", "train.eval_interval=0",
              "train.eval_at_end=false"]
    run_train([*common, "train.epochs=2"], run_dir)
    run_train([*common, "train.epochs=4", "optim.base_lr=0.08", "optim.lr_steps=[3]", "optim.weight_decay=0.001",
               "resume=auto"], run_dir)
    lr = {int(r[0]): float(r[3]) for r in _rows(run_dir / "metrics.csv")[1:] if r[2] == "train/lr"}
    per_epoch = int(re.search(r"(\d+) iterations per epoch", (run_dir / "train.log").read_text()).group(1))
    assert lr[2 * per_epoch] == pytest.approx(0.005, rel=1e-6)  # the first run's last step
    assert lr[3 * per_epoch] == pytest.approx(0.01, rel=1e-6)  # epoch 3 (index 2): 0.08 / 16 * 2
    assert lr[4 * per_epoch] == pytest.approx(0.001, rel=1e-6)  # epoch 4 (index 3): after the step
    warnings = [line for line in (run_dir / "train.log").read_text().splitlines() if " WARNING " in line]
    assert any("schedule differs from the checkpoint's" in m and "optim.lr_steps [] -> [3]" in m
               and f"from iteration {2 * per_epoch}" in m for m in warnings), warnings
    assert any("optim.weight_decay 0.0001 -> 0.001" in m for m in warnings), warnings


def test_resume_applies_the_configs_adamw_betas(tmp_path: Path) -> None:
    """optim.betas of the resuming run's config apply, with the WARNING the other optimiser settings get; before,
    the checkpoint's betas went on in silence. Unchanged betas (a tuple in the optimiser, a list read back) say
    nothing."""
    import torch

    run_dir = tmp_path / "run"
    common = [f"data.root={tmp_path / 'data'}", "train.plots=false", "train.eval_interval=0", "train.eval_at_end=false",
              "optim.name=adamw", "optim.base_lr=0.001"]
    run_train([*common, "train.epochs=1"], run_dir)
    run_train([*common, "train.epochs=2", "resume=auto"], run_dir)
    assert "optimiser settings differ" not in (run_dir / "train.log").read_text()
    run_train([*common, "train.epochs=3", "optim.betas=[0.5,0.9]", "resume=auto"], run_dir)
    warnings = [line for line in (run_dir / "train.log").read_text().splitlines() if " WARNING " in line]
    assert any("optim.betas (0.9, 0.999) -> (0.5, 0.9)" in m for m in warnings), warnings
    state = torch.load(run_dir / "checkpoints" / "last.pth", weights_only=True, map_location="cpu")
    assert all(tuple(g["betas"]) == (0.5, 0.9) for g in state["optimizer"]["param_groups"])
