"""Hooks: LR schedule, checkpoints, evaluation, logging (console, train.log, TensorBoard, metrics.csv)."""

from __future__ import annotations

import csv
import logging
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def _fmt_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"
