"""Hooks: LR schedule, evaluation, checkpoints, logging through the writers, throughput, counts.

Hooks talk through the trainer's :class:`~solo_npu.engine.events.EventStorage` (``trainer.storage``);
a hook with state of its own saves it through ``state_dict`` / ``load_state_dict`` into the checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from solo_npu.engine import comm
from solo_npu.engine.checkpointer import save_training_state
from solo_npu.engine.events import EventStorage
from solo_npu.engine.interrupts import InterruptedMidStep
from solo_npu.engine.optim import WarmupStepSchedule
from solo_npu.engine.trainer import HookBase, NonFiniteLossError
from solo_npu.engine.writers import ConsoleWriter, EventWriter
from solo_npu.runtime import memory_stats
from solo_npu.utils.files import remove_partial_writes

logger = logging.getLogger(__name__)


class LRHook(HookBase):
    """Sets the learning rate before every step from (iteration, epoch)."""

    def __init__(self, schedule: WarmupStepSchedule) -> None:
        self.schedule = schedule

    def before_step(self) -> None:
        self.schedule.step(self.trainer.iter, self.trainer.epoch)


class EvalHook(HookBase):
    """Evaluates every ``interval`` epochs and at the end.

    ``eval_fn`` runs on every rank (evaluation is distributed) and returns the evaluator's dict
    (``{"segm": {"AP": ...}, "bbox": {...}}``). Each result is published to the storage as
    ``val/{task}_{metric}`` at the evaluation's iteration and epoch (completed epochs). The hook's state is
    the list of evaluations (``{"epoch", "iteration", "results", "seconds"}``); loading it puts the latest
    results back into the storage (not published again: the writers wrote them before).
    """

    def __init__(self, eval_fn: Callable[[], dict[str, Any]], interval: int = 1, at_end: bool = True) -> None:
        self.eval_fn = eval_fn
        self.interval = int(interval)
        self.at_end = at_end
        self.history: list[dict[str, Any]] = []
        self._evaluated_at: int | None = None

    def _evaluate(self) -> None:
        t = self.trainer
        t0 = time.perf_counter()
        results = self.eval_fn()
        t.model.train()
        entry = {"epoch": t.epoch_number, "iteration": t.iter,
                 "results": results, "seconds": time.perf_counter() - t0}
        self.history.append(entry)
        self._evaluated_at = t.iter
        self._put(entry, publish=True)
        ap = results.get("segm", {}).get("AP")
        ap = float("nan") if ap is None else ap  # undefined: no ground truth
        logger.info("evaluation at epoch %d (iteration %d): segm AP %.4f (%.1f s)", entry["epoch"], t.iter, ap,
                    entry["seconds"])

    def _put(self, entry: dict[str, Any], publish: bool) -> None:
        scalars = {f"{task}_{k}": float(v) for task, res in entry["results"].items() if isinstance(res, dict)
                   for k, v in res.items() if isinstance(v, (int, float))}
        self.trainer.storage.put_scalars(scalars, prefix="val/", publish=publish, iteration=entry["iteration"],
                                         epoch=entry["epoch"])

    def after_epoch(self) -> None:
        t = self.trainer
        last_epoch = t.epoch + 1 >= t.max_epochs or t.iter >= t.max_iters
        if (self.interval > 0 and (t.epoch + 1) % self.interval == 0) or (last_epoch and self.at_end):
            self._evaluate()

    def after_train(self) -> None:
        if self.at_end and self._evaluated_at != self.trainer.iter:
            self._evaluate()

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(e) for e in self.history], "evaluated_at": self._evaluated_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(e) for e in state.get("history", [])]
        self._evaluated_at = state.get("evaluated_at")
        if self.history:
            self._put(self.history[-1], publish=False)


def evaluated_at(trainer: Any, iteration: int) -> bool:
    """Whether an evaluation at ``iteration`` has put its results (``val/`` scalars) in the trainer's storage."""
    return any(name.startswith("val/") and it == iteration for name, (_, it) in trainer.storage.latest().items())


class CheckpointHook(HookBase):
    """``last.pth`` at every epoch end and every ``interval_iters`` iterations, ``epoch_N.pth`` every
    ``interval_epochs`` epochs, ``best.pth`` when ``best_metric`` improves (``task.metric`` of the evaluation
    results, read from the storage as ``val/task_metric``). Only the main process writes.

    The run's end: a run that ends mid-epoch (``max_iters``) writes ``last.pth`` after its final step, before
    ``after_train`` and the final evaluation there, which Ctrl-C twice stops at once (``FinalPhase``); once the
    evaluation is done, ``after_train`` writes ``last.pth`` again with its results. A run that ends at an epoch
    end has its ``last.pth`` from ``after_epoch``, written after the epoch's evaluation; ``after_train`` writes it
    only when something is new since: another iteration, or an evaluation at this iteration (``val/`` scalars in
    the storage) that the file does not hold.

    Register it after the hooks whose state the checkpoint saves (evaluation, counts), so that a checkpoint
    written at a step or an epoch end holds their state after that step or epoch. The best value is put in
    the storage as ``best_metric``; the hook's state is that value and the iteration of the last result it
    compared.
    """

    def __init__(self, ckpt_dir: str | Path, state_fn: Callable[[], dict[str, Any]], is_main: bool,
                 interval_epochs: int = 1, interval_iters: int = 0, best_metric: str = "segm.AP") -> None:
        self.dir = Path(ckpt_dir)
        self.state_fn = state_fn
        self.is_main = is_main
        self.interval_epochs = int(interval_epochs)
        self.interval_iters = int(interval_iters)
        self.best_metric = best_metric
        self._best_scalar = "val/" + best_metric.replace(".", "_", 1)
        self.best: float | None = None
        self._compared_at: int | None = None
        self._last_saved: tuple[int, bool] | None = None  # last.pth's iteration, and whether it holds its evaluation
        if is_main and self.dir.is_dir():
            removed = remove_partial_writes(self.dir, ".pth")
            if removed:
                logger.warning("removed %d unfinished checkpoint write(s) of an earlier run, %.0f MB (%s): a process "
                               "killed while saving leaves them; the checkpoints beside them are whole",
                               len(removed), sum(size for _, size in removed) / 2**20,
                               ", ".join(path.name for path, _ in removed[:3]) + (", ..." if len(removed) > 3 else ""))

    def save(self, name: str) -> None:
        if self.is_main:
            save_training_state(self.state_fn(), self.dir / name)
        if name == "last.pth":
            self._last_saved = (self.trainer.iter, self._evaluated_now())

    def _evaluated_now(self) -> bool:
        return evaluated_at(self.trainer, self.trainer.iter)

    def after_step(self) -> None:
        t = self.trainer
        if t.inner_iter >= t.iters_per_epoch:  # the epoch's end: after_epoch saves
            return
        # periodic, or the run's final step (max_iters mid-epoch): saved before the final evaluation
        if (self.interval_iters > 0 and t.iter % self.interval_iters == 0) or t.iter >= t.max_iters:
            self.save("last.pth")

    def after_epoch(self) -> None:
        t = self.trainer
        self._update_best()
        self.save("last.pth")
        if self.interval_epochs > 0 and (t.epoch + 1) % self.interval_epochs == 0:
            self.save(f"epoch_{t.epoch + 1}.pth")

    def after_train(self) -> None:
        self._update_best()
        if self._last_saved != (self.trainer.iter, self._evaluated_now()):  # something new since last.pth
            self.save("last.pth")

    def on_failure(self, exc: BaseException) -> None:
        if isinstance(exc, InterruptedMidStep):  # the step's state is half applied: keep the last checkpoint
            logger.error("stopped inside iteration %d without saving; %s holds the last checkpoint",
                         self.trainer.iter + 1, self.dir / "last.pth")
        elif isinstance(exc, (NonFiniteLossError, KeyboardInterrupt)):
            self.save("last.pth")
            if self.is_main:  # the rank that writes checkpoints
                logger.error("stopped at iteration %d; state saved to %s", self.trainer.iter, self.dir / "last.pth")

    def _update_best(self) -> None:
        latest = self.trainer.storage.latest().get(self._best_scalar)
        if latest is None or latest[1] == self._compared_at:
            return
        value, self._compared_at = latest
        if math.isfinite(value) and (self.best is None or value > self.best):
            self.best = value
            self.trainer.storage.put_scalar("best_metric", value)
            self.save("best.pth")
            logger.info("new best %s %.4f: saved best.pth", self.best_metric, value)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "compared_at": self._compared_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self._compared_at = state.get("compared_at")
        if self.best is not None:
            self.trainer.storage.put_scalar("best_metric", self.best)


class LoggingHook(HookBase):
    """Rank-0 progress: every ``log_interval`` steps (and at the end) the interval's means are published to
    the storage as ``train/...`` and every writer writes what was published since its last write (the
    evaluation results too, after each epoch). Writers: :mod:`solo_npu.engine.writers`.

    Published per interval: the mean of each ``loss*`` and of ``grad_norm`` over the interval's steps (NaN
    when a skipped step left one out), the last step's ``lr``, ``images_per_sec`` (images of the interval
    over its step time), ``memory_mb`` and ``nonfinite_total``; put beside them: ``memory_peak_mb`` and
    ``eta_seconds``.

    A resumed run (the storage's ``resume`` record, put by
    :func:`~solo_npu.engine.checkpointer.restore_training_state`: the checkpoint's iteration and, for a resume in
    another number of iterations per epoch, the two counts) has each writer take what it wrote before in hand
    (:meth:`EventWriter.resume`) before it opens: what was written after the checkpoint's iteration is left out or
    hidden (the resumed run does those steps again) and, when converted, the rest renumbered, so that the records
    go on in the iterations the trainer counts and logs, without an (iteration, name) written twice.
    """

    def __init__(self, writers: Sequence[EventWriter], log_interval: int = 50) -> None:
        self.writers = list(writers)
        self.log_interval = max(1, int(log_interval))
        self._since = 0  # iteration of the previous interval
        self._cursor = 0  # first published event not yet written
        self._resumes = 0  # resume records already handed to the writers

    @property
    def use_tqdm(self) -> bool:
        """Whether a console writer shows a tqdm bar."""
        return any(isinstance(w, ConsoleWriter) and w.progress_bar for w in self.writers)

    def before_train(self) -> None:
        self._since = self.trainer.iter
        self._cursor = self.trainer.storage.num_events
        resumes = self.trainer.storage.records("resume")
        for resume in resumes[self._resumes:]:
            renumber = None if resume["renumber"] is None else tuple(resume["renumber"])
            for w in self.writers:
                w.resume(int(resume["checkpoint_iteration"]), renumber)
        self._resumes = len(resumes)
        for w in self.writers:
            w.open(self.trainer)

    def after_step(self) -> None:
        t = self.trainer
        for w in self.writers:
            w.step(t.storage)
        if t.iter % self.log_interval == 0 or t.iter >= t.max_iters:
            self._publish_interval()
            self._write()

    def _publish_interval(self) -> None:
        t, storage = self.trainer, self.trainer.storage
        since, self._since = self._since, t.iter
        step_times = storage.history("step_time").values_after(since)
        n = len(step_times)
        if n == 0:
            return
        nan = float("nan")
        last = storage.step_scalars()
        mean = {}
        for key in [k for k in last if k.startswith("loss") or k in ("lr", "grad_norm")]:
            values = storage.history(key).values_after(since)
            mean[key] = sum(values) / n if len(values) == n else nan
        mean["lr"] = last.get("lr", nan)
        seconds = sum(step_times)
        mem = memory_stats(t.info)
        storage.put_scalars(mean, prefix="train/", publish=True)
        storage.put_scalars({"images_per_sec": t.images_per_step * n / max(seconds, 1e-9),
                             "memory_mb": mem["allocated_mb"], "nonfinite_total": float(t.nonfinite_total)},
                            prefix="train/", publish=True)
        storage.put_scalars({"memory_peak_mb": mem["peak_mb"], "eta_seconds": (t.max_iters - t.iter) * seconds / n})

    def _write(self) -> None:
        storage = self.trainer.storage
        events = storage.events(self._cursor)
        self._cursor = storage.num_events
        for w in self.writers:
            w.write(events, storage)
        storage.discard_events(self._cursor)

    def after_epoch(self) -> None:
        self._write()

    def after_train(self) -> None:
        if self.trainer.iter > self._since:
            self._publish_interval()
        self._write()
        self._close()

    def on_failure(self, exc: BaseException) -> None:
        if isinstance(exc, KeyboardInterrupt):  # a stop (the state is saved): the curves keep its last steps
            if self.trainer.iter > self._since:
                self._publish_interval()
            self._write()
        self._close()

    def _close(self) -> None:
        for w in self.writers:
            w.close()


class ThroughputHook(HookBase):
    """Training throughput: mean images/s after the first ``warmup_steps`` steps of this process (over all
    steps when the run is shorter), put in the storage as ``fps`` after every step; the closing log line."""

    def __init__(self, warmup_steps: int = 5) -> None:
        self.warmup_steps = int(warmup_steps)
        self._steps = 0
        self._timed = [0.0, 0.0]  # images, seconds after the warm-up
        self._all = [0.0, 0.0]
        self._start = time.time()

    @property
    def fps(self) -> float | None:
        """None before this process has run a step (a resumed run that had already reached its end)."""
        images, seconds = self._timed if self._timed[1] > 0 else self._all
        return images / seconds if seconds > 0 else None

    def before_train(self) -> None:
        self._start = time.time()

    def after_step(self) -> None:
        t = self.trainer
        step_time = t.storage.step_scalars()["step_time"]
        self._steps += 1
        self._all[0] += t.images_per_step
        self._all[1] += step_time
        if self._steps > self.warmup_steps:
            self._timed[0] += t.images_per_step
            self._timed[1] += step_time
        t.storage.put_scalar("fps", self.fps)

    def after_train(self) -> None:
        fps = self.fps
        if fps is None:  # no "FPS:" marker: a script that reads the log's FPS finds none rather than a 0
            logger.info("training done: %d iterations, %.1f s, no training step in this run (no images/s)",
                        self.trainer.iter, time.time() - self._start)
            return
        logger.info("training done: %d iterations, %.1f s, mean %.2f images/s, FPS: %.3f", self.trainer.iter,
                    time.time() - self._start, fps, fps)


def local_fault_counts(datasets: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """This process's data faults per split and kind (its DataLoader workers' included), no collective."""
    return {split: ds.fault_counts() for split, ds in datasets.items() if hasattr(ds, "fault_counts")}


def gather_fault_counts(datasets: Mapping[str, Any], device: torch.device | str = "cpu") -> dict[str, dict[str, int]]:
    """Data faults per split and kind, summed over this process's DataLoader workers and over the ranks.

    Annotation faults are found by every rank in the same json, so they are taken once; read faults
    (:data:`solo_npu.data.READ_FAULTS`) are found by the rank and worker that reads the image, so they are
    summed. A read fault counts reads: an unreadable image requested in three epochs counts three times.
    Collective under torch.distributed: every rank calls it with the same splits; ``device`` is where the
    backend reduces (the accelerator for hccl / nccl).
    """
    from solo_npu.data import READ_FAULTS

    counts = local_fault_counts(datasets)
    keys = [(split, kind) for split in sorted(counts) for kind in READ_FAULTS if kind in counts[split]]
    if comm.is_dist() and keys:
        summed = torch.tensor([counts[s][k] for s, k in keys], dtype=torch.int32, device=device)
        dist.all_reduce(summed)
        for (split, kind), value in zip(keys, summed.tolist()):
            counts[split][kind] = int(value)
    return counts


class CountsHook(HookBase):
    """Counts that reach ``summary.json`` and the log, written to the storage as records (read them with
    :func:`count_summary`). Register it on every rank.

    - Data faults per split and kind (:func:`gather_fault_counts`), gathered at the end of training, logged
      in one line and put as a ``data_faults`` record. When training fails before its end, the record holds
      this rank's counts (no collective on the way out). Read faults count the reads of this process since
      it started: a resumed run counts again from zero.
    - Step counters: each name in ``counters`` that a step puts in the storage (for example
      ``dropped_positives``, the positives beyond ``max_pos`` that the targets leave out) is summed over the
      epoch's steps and over the ranks, logged at the epoch end and put as an ``epoch_counts`` record
      ``{"epoch", "iterations", name: count}``. A step's value may be this rank's count or its mean over
      the ranks (as the trainer reports losses): both sum to the count of all ranks. A run stopped by
      ``max_iters`` mid-epoch gets a last, partial record.

    State (:meth:`state_dict`): the closed epochs' entries and the open epoch's sums. A run resumed from a
    checkpoint continues the open epoch, so its entries equal an uninterrupted run's when the step values
    are the same on every rank (the trainer's all-reduced values are); a counter reported per rank gets the
    main process's partial sum, the one the checkpoint holds, on every rank.
    """

    def __init__(self, datasets: Mapping[str, Any], counters: Sequence[str] = ("dropped_positives",)) -> None:
        self.datasets = dict(datasets)
        self.counters = tuple(counters)
        self.epoch_counts: list[dict[str, int]] = []
        self._sums = [0.0] * len(self.counters)
        self._seen = [0.0] * len(self.counters)
        self._steps = 0

    def after_step(self) -> None:
        step = self.trainer.storage.step_scalars()
        self._steps += 1
        for i, key in enumerate(self.counters):
            value = step.get(key)
            if value is not None and math.isfinite(value):
                self._sums[i] += value
                self._seen[i] = 1.0

    def _reduce_open_epoch(self, epoch: int) -> dict[str, int] | None:
        """The open epoch's entry summed over the ranks (collective), or ``None`` when no step reported."""
        if not self.counters:
            return None
        sums, seen = list(self._sums), list(self._seen)
        if comm.is_dist():  # every rank takes part, whether or not its steps reported a counter
            # float32: HcclAllReduce takes int8/int32/int64/fp16/fp32 on Atlas training products, no fp64
            # (CANN HCCL API reference, HcclAllReduce); exact for counts below 2**24 per epoch.
            packed = torch.tensor([*sums, *seen], dtype=torch.float32, device=self.trainer.info.device)
            dist.all_reduce(packed)
            sums, seen = packed[: len(sums)].tolist(), packed[len(sums):].tolist()
        entry = {key: int(round(total)) for key, total, was in zip(self.counters, sums, seen) if was}
        if not entry:
            return None
        logger.info("epoch %d counts (all ranks): %s", epoch, ", ".join(f"{k} {v}" for k, v in entry.items()))
        return {"epoch": epoch, "iterations": self._steps, **entry}

    def after_epoch(self) -> None:
        entry = self._reduce_open_epoch(self.trainer.epoch + 1)
        self._sums, self._seen, self._steps = [0.0] * len(self.counters), [0.0] * len(self.counters), 0
        if entry is not None:
            self.epoch_counts.append(entry)
            self.trainer.storage.put_record("epoch_counts", entry)

    def after_train(self) -> None:
        storage = self.trainer.storage
        if self._steps:  # stopped mid-epoch: a partial record; the state keeps the epoch open for a resume
            entry = self._reduce_open_epoch(self.trainer.epoch + 1)
            if entry is not None:
                storage.put_record("epoch_counts", entry)
        faults = gather_fault_counts(self.datasets, self.trainer.info.device)
        storage.put_record("data_faults", faults)
        found = [f"{split} {kind} {n}" for split, kinds in faults.items() for kind, n in kinds.items() if n]
        logger.info("data faults (all ranks and workers): %s", ", ".join(found) or "none")

    def on_failure(self, exc: BaseException) -> None:
        self.trainer.storage.put_record("data_faults", local_fault_counts(self.datasets))

    def summary(self) -> dict[str, Any]:
        """:func:`count_summary` of the trainer's storage."""
        return count_summary(self.trainer.storage)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch_counts": [dict(e) for e in self.epoch_counts], "open_steps": self._steps,
                "open_sums": dict(zip(self.counters, self._sums)), "open_seen": dict(zip(self.counters, self._seen))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch_counts = [dict(e) for e in state.get("epoch_counts", [])]
        self._steps = int(state.get("open_steps", 0))
        sums, seen = state.get("open_sums", {}), state.get("open_seen", {})
        self._sums = [float(sums.get(k, 0.0)) for k in self.counters]
        self._seen = [float(seen.get(k, 0.0)) for k in self.counters]
        for entry in self.epoch_counts:
            self.trainer.storage.put_record("epoch_counts", entry)


def count_summary(storage: EventStorage) -> dict[str, Any]:
    """``data_faults`` ({split: {kind: count}}, the latest record) and ``epoch_counts`` ([{epoch, iterations,
    counter: n}]) as :class:`CountsHook` put them in ``storage``."""
    faults = storage.records("data_faults")
    return {"data_faults": faults[-1] if faults else {}, "epoch_counts": storage.records("epoch_counts")}
