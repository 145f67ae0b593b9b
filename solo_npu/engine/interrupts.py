"""Ctrl-C (SIGINT) and SIGTERM during training stop the run at a state that a resume continues exactly.

Python turns SIGINT into a ``KeyboardInterrupt`` wherever the main thread happens to be. Most of a step
(loading the batch, forward, backward) changes nothing that a checkpoint holds, so stopping there is safe:
the checkpoint hook saves the state before that step. The step's update is different: the optimiser has
changed the weights before the loop counts the step and the hooks record it, and a checkpoint written in
between would make a resumed run repeat the step. While :class:`Interrupts` holds (from the end of the
backward pass until the step's ``after_step`` hooks have run) a signal is remembered and raised when the
hold ends.

SIGTERM (what cluster schedulers and ``torchrun`` send before they kill a process) is raised as
:class:`Terminated`, a ``KeyboardInterrupt``, so it takes the same path: the state is saved to ``last.pth``
and ``resume=auto`` continues the run. Without this the process ended at once and the steps since the last
periodic checkpoint were lost.

Handlers are installed only in the main thread and only over Python's defaults (``default_int_handler``
for SIGINT, ``SIG_DFL`` for SIGTERM), and restored afterwards.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["Interrupts", "Terminated"]


class Terminated(KeyboardInterrupt):
    """SIGTERM received during training (the state is saved like after Ctrl-C)."""


def _exception(signum: int) -> KeyboardInterrupt:
    if signum == signal.SIGTERM:
        return Terminated("SIGTERM received")
    return KeyboardInterrupt()


class Interrupts:
    """SIGINT / SIGTERM handling of one training loop (see the module docstring)."""

    def __init__(self) -> None:
        self._holding = False
        self._pending: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        self._holding, self._pending = False, None
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            current = signal.getsignal(signum)
            if current is default:
                self._previous[signum] = current
                signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        self._holding, self._pending = False, None

    def hold(self) -> None:
        """From here on a signal waits until :meth:`release`."""
        self._holding = True

    def release(self, where: str = "") -> None:
        """End the hold; raise the signal that arrived during it, if any."""
        self._holding = False
        if self._pending is not None:
            signum, self._pending = self._pending, None
            logger.warning("%s received during the update of %s: stopped once the update was complete",
                           signal.Signals(signum).name, where or "a step")
            raise _exception(signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._holding:
            if self._pending is None:
                self._pending = signum
            return
        raise _exception(signum)
