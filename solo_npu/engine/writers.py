"""Writers of the training progress: console (tqdm bar or plain lines), ``metrics.csv``, TensorBoard.

Each writer is handed the scalars published to the trainer's :class:`~solo_npu.engine.events.EventStorage`
since the previous write (``train/...`` interval means, ``val/...`` evaluation results) by
:class:`~solo_npu.engine.hooks.LoggingHook`, and writes them its own way. Non-finite values (the mean of
an interval with a skipped step) are printed on the console but left out of the csv and TensorBoard, whose
curves they would break.

Their x axis is the trainer's iteration. A resumed run does again the steps logged after its checkpoint (a
checkpoint older than the last logged row: ``epoch_1.pth`` of a run that went on, ``last.pth`` of a run that
logged further before it crashed); one resumed in another number of iterations per epoch (another layout or
training set: the checkpoint's position converted, see :func:`~solo_npu.engine.checkpointer.resume_plan`) also
counts other iterations than the records written before it. :meth:`EventWriter.resume` leaves out or hides what
the resumed run writes again and puts the earlier records in the run's new iterations (the csv) or apart
(TensorBoard), so that no curve goes back on itself and no (iteration, name) is written twice.
"""

from __future__ import annotations

import csv
import logging
import math
import shutil
import sys
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from solo_npu.engine.events import EventStorage, ScalarEvent

logger = logging.getLogger(__name__)

PROGRESS_MODES = ("auto", "tqdm", "plain")  # train.progress: use_progress_bar


def use_progress_bar(progress: str) -> bool:
    """Whether the console shows a tqdm bar (``train.progress``): ``tqdm`` yes, ``plain`` no, ``auto`` on a TTY.

    The one place this is decided: the job passes the answer to the logging setup (which then writes
    log lines through the bar) and to :class:`ConsoleWriter`.
    """
    if progress not in PROGRESS_MODES:
        raise ValueError(f"train.progress must be one of {', '.join(PROGRESS_MODES)}, got {progress!r}")
    return sys.stdout.isatty() if progress == "auto" else progress == "tqdm"


class EventWriter:
    """Base class: ``open`` before training, ``step`` after every step, ``write`` new events, ``close``."""

    def resume(self, checkpoint_iteration: int, renumber: tuple[int, int] | None = None) -> None:
        """Before ``open`` of a run resumed from a checkpoint of iteration ``checkpoint_iteration`` (the checkpoint's
        count): what was written after that iteration is done again by the resumed run. ``renumber``: (iterations
        per epoch of the checkpoint, of this run) when they differ (a converted resume: what was written before
        counts the checkpoint's iterations), else ``None`` (an exact resume)."""

    def open(self, trainer: Any) -> None: ...

    def step(self, storage: EventStorage) -> None: ...

    def write(self, events: Sequence[ScalarEvent], storage: EventStorage) -> None: ...

    def close(self) -> None: ...


FPS_SKIPPED_STEPS = 5  # the first steps of every epoch, left out of the log's FPS: values as in ModelZoo's mmcv


class ConsoleWriter(EventWriter):
    """One log line per interval (and a tqdm bar when ``progress_bar``).

    The line holds epoch, iteration, losses, lr, images/s (the interval's), memory and ``FPS: x``, the marker the
    Ascend ModelZoo SOLOv2 scripts read from the log (the max of its values). ``x`` has the meaning of the ``FPS:``
    values of their mmcv (Ascend/ModelZoo-PyTorch PyTorch/contrib/cv/detection/SOLOv2/mmcv/mmcv/runner/runner.py,
    ``Runner.train``, and runner/hooks/iter_timer.py, ``IterTimerHook``): the running mean of images/s over the
    current epoch's steps after its first ``fps_skipped_steps`` (5; restarted with every epoch), counting the
    images of all ranks (theirs ``samples_per_gpu * num_of_gpus``, ours the trainer's ``images_per_step``) over
    this rank's step times (``step_time``, which summary.json's fps is computed from too). So ModelZoo's max of
    our log reads the values it reads in its own, comparable with summary.json's fps, the mean of the whole run
    after its first 5 steps. A run resumed inside an epoch leaves out the first 5 steps it runs there. A line
    logged before the epoch has a step after the skipped ones (in its first 5 steps) has no ``FPS`` marker at all:
    whatever followed ``FPS`` would be taken for a number by ModelZoo's ``grep 'FPS' | awk -F "FPS: "`` pipeline.

    The interval's ``train/...`` events give the rest of the line; the last step's ``data_time`` and the
    interval's ``memory_peak_mb`` and ``eta_seconds`` come from the storage. The loop position (epoch, iteration
    and their totals) is the trainer's.
    """

    def __init__(self, progress_bar: bool = False, fps_skipped_steps: int = FPS_SKIPPED_STEPS) -> None:
        self.progress_bar = bool(progress_bar)
        if int(fps_skipped_steps) < 0:
            raise ValueError(f"fps_skipped_steps must be >= 0, got {fps_skipped_steps}")
        self.fps_skipped_steps = int(fps_skipped_steps)
        self._trainer: Any = None
        self._bar: Any = None
        self._fps_epoch: int | None = None  # the epoch the running mean is of
        self._fps_steps = 0  # its steps seen by this writer
        self._fps_timed = [0.0, 0.0]  # images, seconds of its steps after the skipped ones

    @property
    def epoch_fps(self) -> float | None:
        """The running mean of images/s over the current epoch's steps after the skipped ones; ``None``: none yet."""
        images, seconds = self._fps_timed
        return images / seconds if seconds > 0 else None

    def open(self, trainer: Any) -> None:
        self._trainer = trainer
        self._fps_epoch, self._fps_steps, self._fps_timed = None, 0, [0.0, 0.0]
        if self.progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=trainer.max_iters, initial=trainer.iter, dynamic_ncols=True, desc="train")

    def step(self, storage: EventStorage) -> None:
        if self._bar is not None:
            self._bar.update(1)
        t = self._trainer
        if t.epoch != self._fps_epoch:  # the timer restarts with every epoch
            self._fps_epoch, self._fps_steps, self._fps_timed = t.epoch, 0, [0.0, 0.0]
        self._fps_steps += 1
        step_time = storage.step_scalars().get("step_time")
        if self._fps_steps > self.fps_skipped_steps and step_time is not None:
            self._fps_timed[0] += t.images_per_step
            self._fps_timed[1] += step_time

    def write(self, events: Sequence[ScalarEvent], storage: EventStorage) -> None:
        t = self._trainer
        train = {e.name[len("train/"):]: e.value for e in events
                 if e.name.startswith("train/") and e.iteration == t.iter}
        if not train:
            return
        nan = float("nan")
        lr, ips = train.get("lr", nan), train.get("images_per_sec", nan)
        losses = " ".join(f"{k}: {v:.4f}" for k, v in train.items() if k.startswith("loss"))
        line = (f"epoch [{t.epoch + 1}/{t.max_epochs}] iter [{t.inner_iter}/{t.iters_per_epoch}] "
                f"({t.iter}/{t.max_iters}) {losses} lr: {lr:.3e} images/s: {ips:.2f} "
                f"mem: {train.get('memory_mb', nan):.0f}MB (peak {storage.latest_value('memory_peak_mb', nan):.0f}MB) "
                f"data: {storage.latest_value('data_time', nan):.3f}s "
                f"eta: {format_seconds(storage.latest_value('eta_seconds', 0.0))}")
        fps = self.epoch_fps
        if fps is not None:
            line += f" FPS: {fps:.3f}"
        if train.get("nonfinite_total"):
            line += f" nonfinite: {int(train['nonfinite_total'])}"
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {train.get('loss', nan):.3f} lr {lr:.2e} {ips:.1f} img/s")
        logger.info(line)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class CSVWriter(EventWriter):
    """``metrics.csv`` in long format (iteration, epoch, name, value), appended to across resumes.

    On a resume (:meth:`resume`) the rows logged after the checkpoint's iteration (steps the checkpoint does not
    hold, done again by the resumed run) are left out, so that no (iteration, name) row is written twice. A resume
    in another number of iterations per epoch also puts every row kept in the run's new iterations: a row at the
    checkpoint's iteration ``i`` of ``old`` per epoch goes to ``i * new / old`` (the same point of its epoch, a
    fraction where it falls between two new iterations; the resumed run's rows all come after it). When the file
    changes, the file as it was is kept as ``metrics_before_resume_<checkpoint iteration>.csv`` (``_2``, ``_3``...
    after it when that name is taken); an exact resume that leaves nothing out (``last.pth`` of the last logged
    step) leaves the file as it is.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        self._file: Any = None
        self._csv: Any = None

    def resume(self, checkpoint_iteration: int, renumber: tuple[int, int] | None = None) -> None:
        if not self.path.is_file():
            return
        old, new = renumber or (1, 1)
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        header, kept, left_out, unreadable = rows[:1], [], 0, 0
        for row in rows[1:]:
            try:
                iteration = Fraction(row[0])
            except (IndexError, ValueError):
                unreadable += 1
                continue
            if iteration > checkpoint_iteration:
                left_out += 1
                continue
            kept.append([_iteration_text(iteration * new / old), *row[1:]] if renumber else row)
        if renumber is None and not left_out:
            return  # nothing to do again: the resumed run appends
        before = _free_name(self.path.with_name(f"metrics_before_resume_{checkpoint_iteration}.csv"))
        shutil.copyfile(self.path, before)
        rewritten = self.path.with_name(self.path.name + ".tmp")
        with open(rewritten, "w", newline="") as f:
            csv.writer(f).writerows(header + kept)
        rewritten.replace(self.path)
        if renumber is None:
            logger.info("%s: %d rows logged after the checkpoint's iteration %d left out (the resumed run does those "
                        "steps again); the file as it was is %s", self.path.name, left_out, checkpoint_iteration,
                        before.name)
        else:
            logger.info("%s: %d rows renumbered from %d to %d iterations per epoch (checkpoint iteration %d -> %s), "
                        "%d logged after it left out; the file as it was is %s", self.path.name, len(kept), old, new,
                        checkpoint_iteration, _iteration_text(Fraction(checkpoint_iteration * new, old)), left_out,
                        before.name)
        if unreadable:
            logger.warning("%s: %d rows without a readable iteration left out (they are in %s)", self.path.name,
                           unreadable, before.name)

    def open(self, trainer: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        self._file = open(self.path, "a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(["iteration", "epoch", "name", "value"])

    def write(self, events: Sequence[ScalarEvent], storage: EventStorage) -> None:
        for e in events:
            if math.isfinite(e.value):
                self._csv.writerow([e.iteration, e.epoch, e.name, f"{e.value:.6g}"])
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoardWriter(EventWriter):
    """TensorBoard scalars under ``log_dir``, tagged with the event names at their iteration.

    When TensorBoard cannot be imported, the writer says so at WARNING once and writes nothing (the csv
    holds the same numbers).

    An exact resume (:meth:`resume` without ``renumber``) opens the writer with ``purge_step`` = the checkpoint's
    iteration + 1, SummaryWriter's own contract for a restarted run (torch/utils/tensorboard/writer.py,
    ``SummaryWriter.__init__``: "When logging crashes at step T+X and restarts at step T, any events whose
    global_step larger or equal to T will be purged and hidden from TensorBoard"; it writes a
    ``SessionLog.START`` event at that step, on which TensorBoard's EventAccumulator drops the earlier events
    of steps at or after it). Not the checkpoint's iteration itself: its events describe a step the checkpoint
    holds (the step's row is logged in the ``after_step`` that saves a mid-epoch checkpoint, or before the
    epoch's end saves one; the evaluation at that iteration is in the checkpoint's ``EvalHook`` state), and the
    resumed run, which starts with the next step, does not write them again.
    """

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = Path(log_dir)
        self._tb: Any = None
        self._purge_step: int | None = None

    def resume(self, checkpoint_iteration: int, renumber: tuple[int, int] | None = None) -> None:
        """Exact: the events after ``checkpoint_iteration`` are hidden (``purge_step``). Converted: TensorBoard
        steps are whole numbers, so the event files written before go to the subfolder
        ``before_resume_<checkpoint iteration>`` (a run of its own in TensorBoard, in the checkpoint's iterations)
        and ``log_dir`` goes on in the run's new iterations."""
        files = sorted(self.log_dir.glob("events.out.tfevents.*"))
        if not files:
            return
        if renumber is None:
            self._purge_step = int(checkpoint_iteration) + 1
            logger.debug("TensorBoard: events at steps >= %d written before the resume are hidden (purge_step)",
                         self._purge_step)
            return
        self._purge_step = None
        before = self.log_dir / f"before_resume_{checkpoint_iteration}"
        before.mkdir(exist_ok=True)
        for path in files:
            path.replace(before / path.name)
        logger.info("TensorBoard: the events written before the resume (%d iterations per epoch) moved to %s; this "
                    "run's count %d per epoch", renumber[0], before, renumber[1])

    def open(self, trainer: Any) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.log_dir), purge_step=self._purge_step)
        except Exception as exc:  # tensorboard missing or broken: the csv still has everything
            logger.warning("TensorBoard disabled: %s", exc)
        self._purge_step = None

    def write(self, events: Sequence[ScalarEvent], storage: EventStorage) -> None:
        if self._tb is None:
            return
        for e in events:
            if math.isfinite(e.value):
                self._tb.add_scalar(e.name, e.value, e.iteration)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def default_writers(run_dir: str | Path, progress_bar: bool = False, tensorboard: bool = True) -> list[EventWriter]:
    """Console, ``<run_dir>/metrics.csv`` and (unless ``tensorboard`` is false) ``<run_dir>/tensorboard``."""
    writers: list[EventWriter] = [ConsoleWriter(progress_bar), CSVWriter(run_dir)]
    if tensorboard:
        writers.append(TensorBoardWriter(Path(run_dir) / "tensorboard"))
    return writers


def _free_name(path: Path) -> Path:
    """``path``, or the first of ``<stem>_2<suffix>``, ``<stem>_3<suffix>``... that does not exist."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return candidate


def _iteration_text(iteration: Fraction) -> str:
    """A whole iteration as it is; a fraction with up to 6 decimals."""
    if iteration.denominator == 1:
        return str(iteration.numerator)
    return f"{float(iteration):.6f}".rstrip("0").rstrip(".")


def format_seconds(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"
