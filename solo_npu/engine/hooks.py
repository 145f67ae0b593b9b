"""Hooks: LR schedule, checkpoints, evaluation, logging (console, train.log, TensorBoard, metrics.csv), counts."""

from __future__ import annotations

import csv
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from solo_npu.engine import comm
from solo_npu.engine.checkpointer import save_training_state
from solo_npu.engine.optim import WarmupStepSchedule
from solo_npu.engine.trainer import HookBase, NonFiniteLossError
from solo_npu.runtime import memory_stats

logger = logging.getLogger(__name__)


class LRHook(HookBase):
    """Sets the learning rate before every step from (iteration, epoch)."""

    def __init__(self, schedule: WarmupStepSchedule) -> None:
        self.schedule = schedule

    def before_step(self) -> None:
        self.schedule.step(self.trainer.iter, self.trainer.epoch)


class EvalHook(HookBase):
    """Evaluates every ``interval`` epochs and at the end; results go to ``trainer.eval_history``.

    ``eval_fn`` runs on every rank (evaluation is distributed) and returns the evaluator's dict
    (``{"segm": {"AP": ...}, "bbox": {...}}``).
    """

    def __init__(self, eval_fn: Callable[[], dict[str, Any]], interval: int = 1, at_end: bool = True) -> None:
        self.eval_fn = eval_fn
        self.interval = int(interval)
        self.at_end = at_end
        self._evaluated_at: int | None = None

    def before_train(self) -> None:
        if not hasattr(self.trainer, "eval_history"):
            self.trainer.eval_history = []

    def _evaluate(self) -> None:
        t = self.trainer
        t0 = time.perf_counter()
        results = self.eval_fn()
        t.model.train()
        entry = {"epoch": t.epoch + (1 if t.inner_iter >= t.iters_per_epoch else 0), "iteration": t.iter,
                 "results": results, "seconds": time.perf_counter() - t0}
        t.eval_history.append(entry)
        self._evaluated_at = t.iter
        ap = results.get("segm", {}).get("AP", float("nan"))
        logger.info("evaluation at epoch %d (iteration %d): segm AP %.4f (%.1f s)", entry["epoch"], t.iter, ap,
                    entry["seconds"])

    def after_epoch(self) -> None:
        t = self.trainer
        last_epoch = t.epoch + 1 >= t.max_epochs or t.iter >= t.max_iters
        if (self.interval > 0 and (t.epoch + 1) % self.interval == 0) or (last_epoch and self.at_end):
            self._evaluate()

    def after_train(self) -> None:
        if self.at_end and self._evaluated_at != self.trainer.iter:
            self._evaluate()


class CheckpointHook(HookBase):
    """``last.pth`` at every epoch end and every ``interval_iters`` iterations, ``epoch_N.pth`` every
    ``interval_epochs`` epochs, ``best.pth`` when segm AP improves. Only the main process writes."""

    def __init__(self, ckpt_dir: str | Path, state_fn: Callable[[], dict[str, Any]], is_main: bool,
                 interval_epochs: int = 1, interval_iters: int = 0, best_metric: str = "segm.AP") -> None:
        self.dir = Path(ckpt_dir)
        self.state_fn = state_fn
        self.is_main = is_main
        self.interval_epochs = int(interval_epochs)
        self.interval_iters = int(interval_iters)
        self.best_metric = best_metric
        self._saved_at: int | None = None
        self._seen_evals = 0

    def before_train(self) -> None:
        if not hasattr(self.trainer, "best_metric"):
            self.trainer.best_metric = None
        self._seen_evals = len(getattr(self.trainer, "eval_history", []))

    def save(self, name: str) -> None:
        if self.is_main:
            save_training_state(self.state_fn(), self.dir / name)
        self._saved_at = self.trainer.iter

    def after_step(self) -> None:
        t = self.trainer
        if self.interval_iters > 0 and t.iter % self.interval_iters == 0 and t.inner_iter < t.iters_per_epoch:
            self.save("last.pth")

    def after_epoch(self) -> None:
        t = self.trainer
        self._update_best()
        self.save("last.pth")
        if self.interval_epochs > 0 and (t.epoch + 1) % self.interval_epochs == 0:
            self.save(f"epoch_{t.epoch + 1}.pth")

    def after_train(self) -> None:
        self._update_best()
        if self._saved_at != self.trainer.iter:
            self.save("last.pth")

    def on_failure(self, exc: BaseException) -> None:
        if isinstance(exc, (NonFiniteLossError, KeyboardInterrupt)):
            self.save("last.pth")
            logger.error("stopped at iteration %d; state saved to %s", self.trainer.iter, self.dir / "last.pth")

    def _update_best(self) -> None:
        history = getattr(self.trainer, "eval_history", [])
        new, self._seen_evals = history[self._seen_evals:], len(history)
        for entry in new:
            value: Any = entry["results"]
            for key in self.best_metric.split("."):
                value = value.get(key, float("nan")) if isinstance(value, dict) else float("nan")
            best = self.trainer.best_metric
            if math.isfinite(value) and (best is None or value > best):
                self.trainer.best_metric = float(value)
                self.save("best.pth")
                logger.info("new best %s %.4f: saved best.pth", self.best_metric, value)


class MetricsWriter:
    """``metrics.csv`` (long format: iteration, epoch, name, value) and TensorBoard scalars."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = run_dir / "metrics.csv"
        new = not self.path.exists()
        self._file = open(self.path, "a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(["iteration", "epoch", "name", "value"])
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception as exc:  # tensorboard missing or broken: the csv still has everything
                logger.warning("TensorBoard disabled: %s", exc)

    def write(self, iteration: int, epoch: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            self._csv.writerow([iteration, epoch, name, f"{value:.6g}"])
            if self._tb is not None:
                self._tb.add_scalar(name, value, iteration)
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


class LoggingHook(HookBase):
    """Rank-0 progress: a tqdm bar on a TTY, plain lines otherwise; metrics.csv, TensorBoard, throughput.

    Each line holds epoch, iteration, losses, lr, images/s, memory and ``FPS: x`` (the ModelZoo runner's
    marker). ``fps`` is the mean throughput after the first ``warmup_steps`` steps.
    """

    def __init__(self, run_dir: str | Path, log_interval: int = 50, progress: str = "auto",
                 warmup_steps: int = 5, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.log_interval = max(1, int(log_interval))
        use_tty = sys.stdout.isatty() if progress == "auto" else progress == "tqdm"
        self.use_tqdm = use_tty
        self.warmup_steps = int(warmup_steps)
        self.tensorboard = tensorboard
        self.loss_history: list[tuple[int, dict[str, float]]] = []
        self._window: list[dict[str, float]] = []
        self._steps = 0
        self._timed_images = 0.0
        self._timed_seconds = 0.0
        self._all_images = 0.0
        self._all_seconds = 0.0
        self._bar = None
        self._writer: MetricsWriter | None = None
        self._evals_written = 0
        self.start_time = time.time()

    @property
    def fps(self) -> float:
        """Mean images/s after the warm-up steps (over all steps when the run is shorter than that)."""
        if self._timed_seconds > 0:
            return self._timed_images / self._timed_seconds
        return self._all_images / self._all_seconds if self._all_seconds > 0 else 0.0

    def before_train(self) -> None:
        t = self.trainer
        self._writer = MetricsWriter(self.run_dir, self.tensorboard)
        self._evals_written = len(getattr(t, "eval_history", []))
        self.start_time = time.time()
        if self.use_tqdm:
            from tqdm import tqdm

            self._bar = tqdm(total=t.max_iters, initial=t.iter, dynamic_ncols=True, desc="train")

    def after_step(self) -> None:
        t = self.trainer
        self._steps += 1
        self._all_images += t.images_per_step
        self._all_seconds += t.last["step_time"]
        if self._steps > self.warmup_steps:
            self._timed_images += t.images_per_step
            self._timed_seconds += t.last["step_time"]
        self._window.append(dict(t.last))
        if self._bar is not None:
            self._bar.update(1)
        if t.iter % self.log_interval == 0 or t.iter >= t.max_iters:
            self._log()

    def _log(self) -> None:
        t = self.trainer
        window, self._window = self._window, []
        keys = [k for k in window[-1] if k.startswith("loss") or k in ("lr", "grad_norm")]
        mean = {k: sum(w.get(k, float("nan")) for w in window) / len(window) for k in keys}
        mean["lr"] = window[-1].get("lr", float("nan"))
        seconds = sum(w["step_time"] for w in window)
        ips = t.images_per_step * len(window) / max(seconds, 1e-9)
        mem = memory_stats(t.info)
        remaining = (t.max_iters - t.iter) * seconds / len(window)
        self.loss_history.append((t.iter, {k: v for k, v in mean.items() if k.startswith("loss")}))
        losses = " ".join(f"{k}: {v:.4f}" for k, v in mean.items() if k.startswith("loss"))
        line = (f"epoch [{t.epoch + 1}/{t.max_epochs}] iter [{t.inner_iter}/{t.iters_per_epoch}] "
                f"({t.iter}/{t.max_iters}) {losses} lr: {mean['lr']:.3e} images/s: {ips:.2f} "
                f"mem: {mem['allocated_mb']:.0f}MB (peak {mem['peak_mb']:.0f}MB) "
                f"data: {window[-1]['data_time']:.3f}s eta: {_fmt_seconds(remaining)} FPS: {ips:.3f}")
        if t.nonfinite_total:
            line += f" nonfinite: {t.nonfinite_total}"
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {mean.get('loss', float('nan')):.3f} lr {mean['lr']:.2e} {ips:.1f} img/s")
        logger.info(line)
        scalars = {f"train/{k}": v for k, v in mean.items() if math.isfinite(v)}
        scalars.update({"train/images_per_sec": ips, "train/memory_mb": mem["allocated_mb"],
                        "train/nonfinite_total": float(t.nonfinite_total)})
        self._writer.write(t.iter, t.epoch, scalars)

    def _write_evals(self) -> None:
        history = getattr(self.trainer, "eval_history", [])
        for entry in history[self._evals_written:]:
            scalars = {f"val/{task}_{k}": float(v) for task, res in entry["results"].items()
                       if isinstance(res, dict) for k, v in res.items() if isinstance(v, (int, float))}
            self._writer.write(entry["iteration"], entry["epoch"], scalars)
        self._evals_written = len(history)

    def after_epoch(self) -> None:
        self._write_evals()

    def after_train(self) -> None:
        if self._window:
            self._log()
        self._write_evals()
        self._close()
        logger.info("training done: %d iterations, %.1f s, mean %.2f images/s, FPS: %.3f", self.trainer.iter,
                    time.time() - self.start_time, self.fps, self.fps)

    def on_failure(self, exc: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def gather_fault_counts(datasets: Mapping[str, Any], device: torch.device | str = "cpu") -> dict[str, dict[str, int]]:
    """Data faults per split and kind, summed over this process's DataLoader workers and over the ranks.

    Annotation faults are found by every rank in the same json, so they are taken once; read faults
    (:data:`solo_npu.data.READ_FAULTS`) are found by the rank and worker that reads the image, so they are
    summed. A read fault counts reads: an unreadable image requested in three epochs counts three times.
    Collective under torch.distributed: every rank calls it with the same splits; ``device`` is where the
    backend reduces (the accelerator for hccl / nccl).
    """
    from solo_npu.data import READ_FAULTS

    counts = {split: ds.fault_counts() for split, ds in datasets.items() if hasattr(ds, "fault_counts")}
    keys = [(split, kind) for split in sorted(counts) for kind in READ_FAULTS if kind in counts[split]]
    if comm.is_dist() and keys:
        summed = torch.tensor([counts[s][k] for s, k in keys], dtype=torch.int32, device=device)
        dist.all_reduce(summed)
        for (split, kind), value in zip(keys, summed.tolist()):
            counts[split][kind] = int(value)
    return counts


class CountsHook(HookBase):
    """Counts that reach ``summary.json`` (:meth:`summary`) and the log. Register it on every rank.

    - Data faults per split and kind (:func:`gather_fault_counts`), gathered at the end of training and
      logged in one line. When training fails before its end, :meth:`summary` gives this rank's counts.
    - Step counters: each name in ``counters`` that the step reports in ``trainer.last`` (for example
      ``dropped_positives``, the positives beyond ``max_pos`` that the targets leave out) is summed over the
      epoch's steps and over the ranks, logged at the epoch end and kept per epoch. A reported value may be
      this rank's count or its mean over the ranks (as the trainer reports losses): both sum to the count of
      all ranks. A run stopped by ``max_iters`` mid-epoch gets a last, partial entry; after a resume the
      first entry covers the steps since the resume.
    """

    def __init__(self, datasets: Mapping[str, Any], counters: Sequence[str] = ("dropped_positives",)) -> None:
        self.datasets = dict(datasets)
        self.counters = tuple(counters)
        self.epoch_counts: list[dict[str, int]] = []
        self.data_faults: dict[str, dict[str, int]] | None = None
        self._sums = [0.0] * len(self.counters)
        self._seen = [0.0] * len(self.counters)
        self._steps = 0

    def after_step(self) -> None:
        last = self.trainer.last
        self._steps += 1
        for i, key in enumerate(self.counters):
            value = last.get(key)
            if value is not None and math.isfinite(float(value)):
                self._sums[i] += float(value)
                self._seen[i] = 1.0

    def _close_epoch(self, epoch: int) -> None:
        sums, seen, steps = self._sums, self._seen, self._steps
        self._sums, self._seen, self._steps = [0.0] * len(self.counters), [0.0] * len(self.counters), 0
        if not self.counters:
            return
        if comm.is_dist():  # every rank takes part, whether or not its steps reported a counter
            # float32: HcclAllReduce takes int8/int32/int64/fp16/fp32 on Atlas training products, no fp64
            # (CANN HCCL API reference, HcclAllReduce); exact for counts below 2**24 per epoch.
            packed = torch.tensor([*sums, *seen], dtype=torch.float32, device=self.trainer.info.device)
            dist.all_reduce(packed)
            sums, seen = packed[: len(sums)].tolist(), packed[len(sums):].tolist()
        entry = {key: int(round(total)) for key, total, was in zip(self.counters, sums, seen) if was}
        if entry:
            self.epoch_counts.append({"epoch": epoch, "iterations": steps, **entry})
            logger.info("epoch %d counts (all ranks): %s", epoch, ", ".join(f"{k} {v}" for k, v in entry.items()))

    def after_epoch(self) -> None:
        self._close_epoch(self.trainer.epoch + 1)

    def after_train(self) -> None:
        if self._steps:
            self._close_epoch(self.trainer.epoch + 1)
        self.data_faults = gather_fault_counts(self.datasets, self.trainer.info.device)
        found = [f"{split} {kind} {n}" for split, kinds in self.data_faults.items() for kind, n in kinds.items() if n]
        logger.info("data faults (all ranks and workers): %s", ", ".join(found) or "none")

    def summary(self) -> dict[str, Any]:
        """``data_faults`` ({split: {kind: count}}) and ``epoch_counts`` ([{epoch, iterations, counter: n}])."""
        faults = self.data_faults
        if faults is None:  # training stopped early: no collective now, this rank's counts only
            faults = {split: ds.fault_counts() for split, ds in self.datasets.items() if hasattr(ds, "fault_counts")}
        return {"data_faults": faults, "epoch_counts": list(self.epoch_counts)}


def _fmt_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"
