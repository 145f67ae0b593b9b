"""Ctrl-C (SIGINT) and SIGTERM during training stop the run at a step boundary, where the saved state lets
``resume`` continue exactly.

A step changes what a checkpoint holds before it is counted: BatchNorm layers in training mode update their
running statistics in the forward pass, augmentation and the model draw from the random generators, and the
optimiser changes the weights before the loop counts the step and its hooks record it. A checkpoint written
in the middle would make a resumed run repeat part of a step. So while :class:`Interrupts` holds (from
fetching a step's batch until its ``after_step`` hooks have run) a signal is remembered, and raised when the
hold ends: the run stops after the step, and the checkpoint hook saves ``last.pth``.

- SIGTERM (what cluster schedulers and ``torchrun`` send before they kill a process) is raised as
  :class:`Terminated`, a ``KeyboardInterrupt``, so it takes the same path; without a handler the process
  ended at once and the steps since the last periodic checkpoint were lost.
- The epoch's end (``after_epoch``: evaluation, epoch checkpoints) is held the same way, so that it is
  never cut off in the middle and a resumed run does not skip it.
- A second Ctrl-C during the same step stops at once, as :class:`InterruptedMidStep`: nothing is saved
  (``last.pth`` keeps the last periodic checkpoint).
- With several ranks every rank must stop after the same step, or the others would wait in the next
  step's collectives forever: each rank's request travels with the step's loss all-reduce
  (:meth:`request_values` / :meth:`agree`), and a rank stops only after a step in which a request was seen
  by all; between steps a request waits for the next step.

A stop that every rank takes at the same step (:func:`stops_every_rank`) saves ``last.pth`` with SIGTERM held
(:func:`sigterm_held`), and no rank leaves before global rank 0 has saved: a rank that left first with a failure
status would make torch.multiprocessing or torchrun SIGTERM the others, rank 0 in the middle of its save.

After training (:class:`FinalPhase`: the final evaluation, the last checkpoint, ``summary.json``) there is no
step to stop after, and the run's training is done: a first Ctrl-C is held, with a line saying so, and the run
ends when it has finished (exit status 0: its results are complete); Ctrl-C again (a second or more later)
stops at once, and ``summary.json``, written when training ended, says the final evaluation was interrupted;
``last.pth``, written at the final step before the final evaluation, holds every trained step.

Handlers are installed only in the main thread and only over Python's defaults (``default_int_handler``
for SIGINT, ``SIG_DFL`` for SIGTERM) or a spawned worker's handler outside its loop
(:data:`outside_loop_handler`), and restored afterwards. Data-loader workers ignore both signals
(``solo_npu.data.build``): the main process ends them when it stops, so a Ctrl-C in the terminal, which
reaches every process of the group, does not take the batches of the step in progress away.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["FinalPhase", "InterruptedMidStep", "Interrupts", "Terminated", "sigterm_held", "stops_every_rank"]


SAME_CTRL_C_S = 1.0  # a second SIGINT sooner than this after the first is the same one
_clock = time.monotonic
# Told "loop" once a training loop has taken the signals over, "out" once it gave them back and "final" once the
# run's training has ended (FinalPhase): a spawned worker tells its parent, which decides what a SIGINT does
# there (solo_npu.engine.launch).
phase_listener: Callable[[str], None] | None = None
# A spawned worker's SIGINT handler outside its training loop (solo_npu.engine.launch): the loop takes SIGINT over
# from it as from Python's default, and gives it back with system calls restarted after it (it does nothing, so
# a read in progress, of an image in the final evaluation say, must not fail with EINTR).
outside_loop_handler: Callable[[int, FrameType | None], Any] | None = None
# Whether the handlers here say on stderr what a signal does. A spawned worker's parent says it once for the run.
announce = True

FINAL_PHASE_NOTICE = ("SIGINT received after training: the run ends once its final evaluation, last.pth and "
                      "summary.json are done; Ctrl-C again stops at once")


def stop_notice(signum: int, distributed: bool) -> str:
    """The line that says how a training loop stops on ``signum`` (the first request)."""
    name = signal.Signals(signum).name
    when = "the step that every rank has seen the request in" if distributed else "this step"
    again = "; Ctrl-C again stops at once without saving" if signum == signal.SIGINT else ""
    return f"{name} received: stopping after {when} and saving last.pth{again}"


def say(line: str) -> None:
    """``line`` on stderr with os.write, not logging or print: a signal handler may run while the main thread is
    inside a write. A closed stderr (the pipe to `tee` ended by the same Ctrl-C) must not turn a stop into an
    error."""
    with contextlib.suppress(OSError):
        os.write(2, f"\n{line}\n".encode())


def _takes_over(handler: Any) -> bool:
    """Whether a handler of ours may replace ``handler`` (the current SIGINT handler)."""
    return handler is signal.default_int_handler or (handler is outside_loop_handler and handler is not None)


def set_sigint(handler: Any) -> None:
    """Install ``handler`` for SIGINT; :data:`outside_loop_handler` with system calls restarted after it."""
    signal.signal(signal.SIGINT, handler)
    if handler is outside_loop_handler and handler is not None:
        signal.siginterrupt(signal.SIGINT, False)


class Terminated(KeyboardInterrupt):
    """SIGTERM received during training (the state is saved like after Ctrl-C)."""


class InterruptedMidStep(KeyboardInterrupt):
    """A second Ctrl-C inside a step: stopped at once, the state is not saved."""


def _exception(signum: int) -> KeyboardInterrupt:
    """The stop of a step boundary (every rank's, where there are several)."""
    exc: KeyboardInterrupt = Terminated("SIGTERM received") if signum == signal.SIGTERM \
        else KeyboardInterrupt("SIGINT received")
    exc.stops_every_rank = True  # type: ignore[attr-defined]
    return exc


def stops_every_rank(exc: BaseException) -> bool:
    """Whether ``exc`` stops the run at a step boundary on every rank at once (a stop request all ranks agreed on,
    the one rank's stop of a one-process run, too many non-finite losses in a row, which every rank counts from
    the same all-reduced loss): the state is whole and ``last.pth`` is saved. Not a second Ctrl-C (raised on the
    ranks it reached, maybe inside a step) nor an error of one rank."""
    return bool(getattr(exc, "stops_every_rank", False))


@contextlib.contextmanager
def sigterm_held(doing: str):
    """SIGTERM waits (it is dropped, with one line on stderr) while the block runs, in the main thread where
    SIGTERM has its default action: the run is stopping already, and a second SIGTERM (a scheduler's own and
    torchrun's, passed on to its workers) would otherwise end the process while it is ``doing`` (writing
    ``last.pth``). A kill (SIGKILL) still ends it; SIGINT keeps its handler."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    said = False

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal said
        if not said and announce:
            say(f"SIGTERM received while {doing}: the run ends when it is done")
        said = True

    signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Interrupts:
    """SIGINT / SIGTERM handling of one training loop (see the module docstring)."""

    def __init__(self) -> None:
        self._holding = False
        self._pending: int | None = None
        self._agreed = 0  # the signal all ranks agreed to stop on (0: none)
        self._pending_at = 0.0
        self._distributed = False
        self._previous: dict[int, Any] = {}

    def install(self, distributed: bool = False) -> None:
        """Take over SIGINT / SIGTERM (main thread, Python's default handlers only); ``distributed``: stop
        only after a step whose all-reduce carried a request (:meth:`agree`)."""
        self._holding, self._pending, self._agreed = False, None, 0
        self._distributed = bool(distributed)
        if threading.current_thread() is not threading.main_thread():
            return
        if _takes_over(signal.getsignal(signal.SIGINT)):
            self._previous[signal.SIGINT] = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            self._previous[signal.SIGTERM] = signal.SIG_DFL
            signal.signal(signal.SIGTERM, self._handle)
        if self._previous and phase_listener is not None:
            phase_listener("loop")

    def restore(self) -> None:
        took = bool(self._previous)
        for signum, previous in self._previous.items():
            if signum == signal.SIGINT:
                set_sigint(previous)
            else:
                signal.signal(signum, previous)
        self._previous.clear()
        if took and phase_listener is not None:
            phase_listener("out")
        self._holding, self._pending, self._agreed = False, None, 0

    @property
    def distributed(self) -> bool:
        return self._distributed

    def request_values(self) -> dict[str, float]:
        """This rank's stop request for the step's all-reduce: ``{"sigint": 0|1, "sigterm": 0|1}``."""
        return {"sigint": float(self._pending == signal.SIGINT), "sigterm": float(self._pending == signal.SIGTERM)}

    def agree(self, reduced: dict[str, float]) -> None:
        """The all-reduced requests of this step (:meth:`request_values`, any positive value: some rank asked):
        every rank stops after the step, as SIGTERM when some rank got one."""
        if reduced.get("sigterm", 0.0) > 0:
            self._agreed = signal.SIGTERM
        elif reduced.get("sigint", 0.0) > 0 and not self._agreed:
            self._agreed = signal.SIGINT

    def hold(self) -> None:
        """From here until :meth:`release` a signal waits."""
        self._holding = True

    def release(self) -> None:
        """End the hold; raise the request that arrived during it (with several ranks: once all agreed)."""
        self._holding = False
        if self._distributed and self._agreed:
            signum, self._pending, self._agreed = self._agreed, None, 0
            raise _exception(signum)
        if self._pending is not None and not self._distributed:
            signum, self._pending = self._pending, None
            raise _exception(signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # With several ranks a request is never raised on its own: ranks raising at different moments would
        # leave the others waiting in a collective. The next step's all-reduce decides for all of them.
        if not self._holding and not self._distributed:
            raise _exception(signum)
        # Asked twice: now, without saving. A SIGINT within a second of the first is the same Ctrl-C delivered
        # twice (torch 2.1's torchrun passes its own on to workers that the terminal reached too).
        if signum == signal.SIGINT and self._pending == signal.SIGINT:
            if _clock() - self._pending_at < SAME_CTRL_C_S:
                return
            if self._holding:
                raise InterruptedMidStep("SIGINT received twice inside a step")
            raise KeyboardInterrupt("SIGINT received twice")
        if self._pending is None:
            self._pending, self._pending_at = signum, _clock()
            if announce:
                say(stop_notice(signum, self._distributed))


class FinalPhase:
    """SIGINT once the run's training has ended (see the module docstring): the first is held, Ctrl-C again
    raises ``KeyboardInterrupt`` at once.

    It takes SIGINT over only from Python's default handler: a spawned worker keeps its own, which leaves the
    decision to its parent (solo_npu.engine.launch), told here that the run's training has ended. System calls
    are restarted after the first SIGINT, which changes nothing, and interrupted after the next, which stops.
    """

    def __init__(self) -> None:
        self._previous: Any = None
        self._first_at: float | None = None
        self._announce = True

    def install(self, announce: bool = True) -> None:
        """Hold SIGINT from here on; ``announce``: say on stderr that it is held (one rank of several)."""
        self._first_at, self._announce = None, bool(announce)
        if threading.current_thread() is not threading.main_thread():
            return
        if phase_listener is not None:
            phase_listener("final")
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.default_int_handler
            signal.signal(signal.SIGINT, self._handle)
            signal.siginterrupt(signal.SIGINT, False)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = _clock()
        if self._first_at is None:
            self._first_at = now
            signal.siginterrupt(signal.SIGINT, True)  # the next one must not wait for a system call to end
            if self._announce and announce:
                say(FINAL_PHASE_NOTICE)
            return
        if now - self._first_at >= SAME_CTRL_C_S:
            raise KeyboardInterrupt("SIGINT received twice")
