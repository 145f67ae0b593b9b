"""A small training loop with hooks (detectron2-style): features live beside the loop, not inside it."""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from solo_npu.data.collate import pad_instance_slots
from solo_npu.engine import comm, interrupts
from solo_npu.engine.events import EventStorage
from solo_npu.engine.interrupts import Interrupts
from solo_npu.runtime import DeviceInfo, StaticGradScaler, autocast, clip_grad_norm, make_grad_scaler, zero_grad

logger = logging.getLogger(__name__)
_STOP_KEY = "__stop_"  # stop requests ride along the step's loss all-reduce (not losses, never logged)


@contextlib.contextmanager
def stop_written(doing: str, every_rank: bool = True) -> Iterator[None]:
    """The block global rank 0 writes a stop's files in (``doing``: ``last.pth``, ``summary.json``). For a stop every
    rank takes at the same step (``every_rank``, :func:`~solo_npu.engine.interrupts.stops_every_rank`) rank 0 holds
    SIGTERM through it, and every rank meets a barrier after it, whether the writes succeed or raise: a rank that
    left first with a failure status would have torch.multiprocessing or torchrun SIGTERM rank 0 mid-write. Other
    failures (one rank's error, a second Ctrl-C) pass straight through."""
    if not every_rank:
        yield
        return
    try:
        with interrupts.sigterm_held(doing) if comm.is_main_process() else contextlib.nullcontext():
            yield
    finally:
        comm.barrier()


def epoch_number(epoch: int, inner_iter: int) -> int:
    """The 1-based epoch of the latest step of a position (``epoch``: 0-based, ``inner_iter``: its steps done), as
    the step lines number it (``epoch [2/6]``): at an epoch's end the epochs done, as ``epoch_2.pth`` and mmcv's
    ``meta.epoch`` (``self.epoch + 1`` at its save) count them; 0 before the first step."""
    return epoch + 1 if inner_iter > 0 else epoch


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row: training cannot recover. Every rank counts them from the same
    all-reduced loss and gradient norm, so all raise it after the same step."""

    stops_every_rank = True


class HookBase:
    """Called by the trainer around the loop; ``self.trainer`` is set when registered.

    Hooks read and write numbers through ``self.trainer.storage``. A hook with state that a resumed run
    needs returns it from :meth:`state_dict` (plain types and tensors: checkpoints load with
    ``weights_only=True``) and takes it back in :meth:`load_state_dict`, which runs after registration.
    """

    trainer: Trainer

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def before_train(self) -> None: ...

    def after_train(self) -> None: ...

    def before_epoch(self) -> None: ...

    def after_epoch(self) -> None: ...

    def before_step(self) -> None: ...

    def after_step(self) -> None: ...

    def on_failure(self, exc: BaseException) -> None: ...


def move_batch(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors of the batch dict on ``device`` (non-blocking); other values as they are. A batch of fixed
    instance slots is padded to them there (:func:`solo_npu.data.collate.pad_instance_slots`)."""
    moved = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    return pad_instance_slots(moved)


def epoch_batches(loader: Iterable, epoch: int, start_iter: int = 0) -> Iterator:
    """The batches of ``epoch`` from ``start_iter`` on.

    The batch sampler is told the epoch and where to start (``set_epoch(epoch, start_iter)``, as
    :class:`solo_npu.data.GroupedBatchSampler` takes it), so a resumed run reads exactly the batches
    the interrupted one would have, without loading the skipped ones. A sampler that only takes
    ``set_epoch(epoch)`` has its first ``start_iter`` batches read and dropped.
    """
    sampler = getattr(loader, "batch_sampler", None)
    set_epoch = getattr(sampler, "set_epoch", None)
    skip = start_iter
    if set_epoch is not None:
        if len(inspect.signature(set_epoch).parameters) >= 2:
            set_epoch(epoch, start_iter)
            skip = 0
        else:
            set_epoch(epoch)
    # DataLoader.__iter__ draws a worker base seed from the global torch RNG. Keep the global stream
    # independent of where an epoch was (re)started so that a resumed run matches an uninterrupted one;
    # sample randomness comes from (seed, epoch, index) in the dataset, not from that base seed.
    rng = torch.get_rng_state()
    it = iter(loader)
    torch.set_rng_state(rng)
    if skip:
        logger.warning("the sampler cannot start mid-epoch; skipping %d batches by reading them", skip)
        it = itertools.islice(it, skip, None)
    return it


class Trainer:
    """Runs ``model(images, targets)`` -> loss dict, backward, clip, step; hooks do everything else.

    Loop state that hooks read and checkpoints save: ``epoch`` (current, 0-based), ``iter`` (optimiser
    steps attempted so far, skipped ones included), ``inner_iter`` (batches of the current epoch
    consumed), ``nonfinite_total`` / ``nonfinite_in_row``. Numbers go to ``storage``
    (:class:`~solo_npu.engine.events.EventStorage`): each step puts its losses (averaged over the ranks),
    ``grad_norm`` (not on a skipped step), ``lr``, ``data_time``, ``step_time`` and ``images_per_sec`` at
    its iteration; ``last`` is a read-only view of the current step's scalars.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        data_loader: Iterable,
        info: DeviceInfo,
        *,
        max_epochs: int,
        iters_per_epoch: int,
        max_iters: int | None = None,
        scaler: torch.amp.GradScaler | None = None,
        amp: bool = False,
        amp_dtype: str = "fp16",
        grad_clip: float | None = 35.0,
        max_nonfinite: int = 10,
        batch_size: int = 1,
        poison_iters: Sequence[int] = (),
        hooks: Sequence[HookBase] = (),
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.data_loader = data_loader
        self.info = info
        self.max_epochs = int(max_epochs)
        self.iters_per_epoch = int(iters_per_epoch)
        total = self.max_epochs * self.iters_per_epoch
        self.max_iters = min(total, int(max_iters)) if max_iters else total
        self.scaler = scaler or make_grad_scaler(info, enabled=False)
        self.amp = amp
        self.amp_dtype = amp_dtype
        self.grad_clip = grad_clip
        self.max_nonfinite = int(max_nonfinite)
        self.images_per_step = int(batch_size) * comm.get_world_size()
        self.poison_iters = {int(i) for i in poison_iters}
        self.epoch = 0
        self.iter = 0
        self.inner_iter = 0
        # The epoch's end (its after_epoch hooks: evaluation, epoch counts, epoch checkpoints) is still to run
        # although its last step is done: a run stopped right after that step, or resumed from that point.
        self.epoch_end_pending = False
        self.nonfinite_total = 0
        self.nonfinite_in_row = 0
        self.storage = EventStorage()
        self.stop_reason: str | None = None
        self.interrupts = Interrupts()  # SIGINT / SIGTERM wait for the end of a step (or an epoch's end)
        self.hooks: list[HookBase] = []
        self.register_hooks(hooks)

    def register_hooks(self, hooks: Iterable[HookBase]) -> None:
        for h in hooks:
            h.trainer = self
            self.hooks.append(h)

    @property
    def epoch_number(self) -> int:
        """:func:`epoch_number` of the trainer's position."""
        return epoch_number(self.epoch, self.inner_iter)

    @property
    def last(self) -> Mapping[str, float]:
        """The scalars put in the storage during the current (or latest) step, in put order."""
        return self.storage.step_scalars()

    def hooks_state_dict(self) -> dict[str, dict[str, Any]]:
        """``{hook class name: state}`` of the hooks with state (a repeated class gets ``#2``, ``#3``...)."""
        states: dict[str, dict[str, Any]] = {}
        for key, hook in self._hook_keys():
            state = hook.state_dict()
            if state:
                states[key] = state
        return states

    def load_hooks_state(self, states: Mapping[str, dict[str, Any]]) -> None:
        """Give each registered hook its saved state; state of a hook not registered here is reported."""
        keys = dict(self._hook_keys())
        for key, state in states.items():
            if key in keys:
                keys[key].load_state_dict(state)
        unused = sorted(set(states) - set(keys))
        if unused:
            logger.warning("the checkpoint holds state of hooks not registered in this run: %s (not used)",
                           ", ".join(unused))

    def _hook_keys(self) -> list[tuple[str, HookBase]]:
        seen: dict[str, int] = {}
        keys = []
        for hook in self.hooks:
            name = type(hook).__qualname__
            seen[name] = seen.get(name, 0) + 1
            keys.append((name if seen[name] == 1 else f"{name}#{seen[name]}", hook))
        return keys

    def _call(self, name: str, *args: Any) -> None:
        for h in self.hooks:
            getattr(h, name)(*args)

    @property
    def done(self) -> bool:
        return self.iter >= self.max_iters or self.epoch >= self.max_epochs

    def train(self) -> None:
        """Run from the current (``epoch``, ``inner_iter``) to the end of the schedule."""
        self.model.train()
        self.storage.iter, self.storage.epoch = self.iter, self.epoch
        self._call("before_train")
        self.interrupts.install(distributed=comm.get_world_size() > 1)
        try:
            while not self.done:
                if self.inner_iter >= self.iters_per_epoch:
                    if self.epoch_end_pending:  # resumed after the epoch's last step, before its end ran
                        self.interrupts.hold()
                        self._end_epoch()
                        self.interrupts.release()
                    else:  # resumed from the epoch's end: it ran before the checkpoint was written
                        self.epoch, self.inner_iter = self.epoch + 1, 0
                    continue
                self._call("before_epoch")
                batches = epoch_batches(self.data_loader, self.epoch, self.inner_iter)
                while self.inner_iter < self.iters_per_epoch and self.iter < self.max_iters:
                    t0 = time.perf_counter()
                    self.interrupts.hold()  # a step is all or nothing for SIGINT / SIGTERM (released below)
                    try:
                        batch = next(batches)
                    except StopIteration:
                        logger.warning("epoch %d ended after %d of %d batches", self.epoch, self.inner_iter,
                                       self.iters_per_epoch)
                        self.inner_iter = self.iters_per_epoch
                        break  # still held: the epoch's end below releases
                    data_time = time.perf_counter() - t0
                    self._call("before_step")
                    self.run_step(batch)
                    self.iter += 1
                    self.inner_iter += 1
                    step_time = time.perf_counter() - t0
                    self.storage.put_scalars({"data_time": data_time, "step_time": step_time,
                                              "images_per_sec": self.images_per_step / max(step_time, 1e-9)})
                    self.epoch_end_pending = self.inner_iter >= self.iters_per_epoch
                    self._call("after_step")
                    self.interrupts.release()
                if self.inner_iter >= self.iters_per_epoch:
                    self.interrupts.hold()  # the epoch's end (evaluation, epoch checkpoints) is all or nothing too
                    self._end_epoch()
                    self.interrupts.release()
                else:  # stopped by max_iters mid-epoch
                    break
            if self.interrupts.distributed:  # a request after the last step's all-reduce: all ranks agree once more
                reduced = comm.all_reduce_mean(self._stop_requests(self.info.device))
                self._agree_stop({k: float(v) for k, v in reduced.items()})
                self.interrupts.release()
        except BaseException as exc:
            self.interrupts.restore()
            with stop_written("last.pth is written", interrupts.stops_every_rank(exc)):
                self._call("on_failure", exc)
            raise
        self.interrupts.restore()
        self._call("after_train")

    def _end_epoch(self) -> None:
        """The epoch's end: its after_epoch hooks (a checkpoint written there records the end as done), then the
        next epoch's position."""
        self.epoch_end_pending = False
        self._call("after_epoch")
        self.epoch, self.inner_iter = self.epoch + 1, 0

    def run_step(self, batch: Mapping[str, Any]) -> None:
        """One optimiser step (the storage's step ``iter + 1``); a non-finite loss skips the update and is counted."""
        self.storage.begin_step(self.iter + 1, self.epoch)
        batch = move_batch(batch, self.info.device)
        with autocast(self.info, self.amp, self.amp_dtype):
            losses = self.model(batch["images"], batch)
        if not isinstance(losses, Mapping) or not any(str(k).startswith("loss") for k in losses):
            raise TypeError("the model must return a dict with loss_* entries in training mode")
        loss = sum(v.float() for k, v in losses.items() if k.startswith("loss"))  # others are counts (logged)
        if self.iter in self.poison_iters:
            loss = loss * float("nan")
        # With several ranks a stop request (SIGINT / SIGTERM) travels with the losses, so that every rank stops
        # after the same step.
        stop = self._stop_requests(loss.device) if comm.is_dist() else {}
        reported = comm.all_reduce_mean({**{k: v.detach() for k, v in losses.items()}, "loss": loss.detach(), **stop})
        values = {k: float(v) for k, v in reported.items()}
        if stop:
            self._agree_stop({k: values.pop(k) for k in stop})
        zero_grad(self.optimizer)  # the runtime knows how: fused optimisers keep their gradient buffer
        if not math.isfinite(values["loss"]):
            self._nonfinite(values)
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # clip true gradients, not scaled ones
        grad_norm = clip_grad_norm(self.optimizer, self.grad_clip)
        if not math.isfinite(grad_norm) and not self.scaler.is_enabled():
            zero_grad(self.optimizer)
            self._nonfinite(values, f"non-finite gradient norm ({grad_norm:g})")
            return
        self.scaler.step(self.optimizer)  # skips the update itself on fp16 overflow
        # A fixed scale never backs off, so the next step is likely to overflow again: the skipped step counts like
        # a non-finite loss, and train.max_nonfinite of them in a row stop the run. (A dynamic scale backs off; its
        # overflow steps are its calibration.) The scaler says whether it skipped: on an Ascend 910 in saturation
        # mode an overflow leaves the gradients and their norm finite.
        overflowed = isinstance(self.scaler, StaticGradScaler) and (
            self.scaler.overflowed(self.optimizer) or not math.isfinite(grad_norm))
        self.scaler.update()
        if overflowed:
            self._nonfinite(values, f"gradient overflow at amp.loss_scale={self.scaler.static_scale:g}")
            return
        self.nonfinite_in_row = 0
        scalars = {**values, "lr": self.optimizer.param_groups[0]["lr"]}
        if math.isfinite(grad_norm):  # an inf/NaN norm: the dynamic scaler skipped the step (its calibration)
            scalars["grad_norm"] = grad_norm
        self.storage.put_scalars(scalars)

    def _stop_requests(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {_STOP_KEY + k: torch.tensor(v, device=device) for k, v in self.interrupts.request_values().items()}

    def _agree_stop(self, reduced: Mapping[str, float]) -> None:
        self.interrupts.agree({k[len(_STOP_KEY):]: v for k, v in reduced.items()})

    def _nonfinite(self, values: dict[str, float], what: str = "non-finite loss") -> None:
        self.nonfinite_total += 1
        self.nonfinite_in_row += 1
        self.storage.put_scalars({**values, "lr": self.optimizer.param_groups[0]["lr"]})
        logger.warning("%s at iteration %d (%s): step skipped (%d in a row, %d in total)", what,
                       self.iter, ", ".join(f"{k}={v:.4g}" for k, v in values.items()), self.nonfinite_in_row,
                       self.nonfinite_total)
        if self.nonfinite_in_row >= self.max_nonfinite:
            self.stop_reason = "nonfinite"
            raise NonFiniteLossError(
                f"{self.nonfinite_in_row} skipped steps in a row (non-finite loss or gradient overflow; "
                f"train.max_nonfinite={self.max_nonfinite}) "
                f"at epoch {self.epoch}, iteration {self.iter}: stopping. The last good weights are saved; "
                "lower optim.base_lr, enable amp.loss_scale=dynamic or check the data.")
