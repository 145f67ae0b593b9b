"""The one place where the trainer and its hooks leave numbers for each other (detectron2's ``EventStorage``).

The trainer owns one :class:`EventStorage` (``trainer.storage``). Each step opens a record at its iteration
(:meth:`EventStorage.begin_step`) and puts its scalars there (losses, ``lr``, ``grad_norm``, timings); hooks
read them and put what they work out (interval means, evaluation results, the best metric, throughput,
counts). Nothing else is hung on the trainer.

Two kinds of scalar put:

- plain (``publish=False``): kept as history and latest value for whoever reads them (the per-step numbers);
- published (``publish=True``): also appended to an event log that the writers (console, csv, TensorBoard in
  :mod:`solo_npu.engine.writers`) read in order, each from its own cursor. These are the rows of
  ``metrics.csv`` and the TensorBoard tags (``train/...``, ``val/...``).

Records (:meth:`EventStorage.put_record`) hold what is not a scalar (per-epoch counts, data faults).
The storage itself is not saved in checkpoints: each hook saves its own state and puts it back here when
it is loaded (:meth:`solo_npu.engine.trainer.HookBase.load_state_dict`).
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


class HistoryBuffer:
    """(iteration, value) pairs of one scalar in put order; the oldest are dropped beyond ``max_length``."""

    def __init__(self, max_length: int = 100_000) -> None:
        self.max_length = int(max_length)
        self._iters = array("q")
        self._values = array("d")

    def append(self, iteration: int, value: float) -> None:
        self._iters.append(int(iteration))
        self._values.append(float(value))
        if len(self._values) >= 2 * self.max_length:  # trim in blocks: amortised O(1) per append
            del self._iters[: -self.max_length]
            del self._values[: -self.max_length]

    def __len__(self) -> int:
        return min(len(self._values), self.max_length)

    def items(self) -> list[tuple[int, float]]:
        """The kept (iteration, value) pairs, oldest first."""
        start = max(0, len(self._values) - self.max_length)
        return list(zip(self._iters[start:], self._values[start:]))

    def values_after(self, iteration: int) -> list[float]:
        """Values put at iterations later than ``iteration``, oldest first."""
        out: list[float] = []
        start = max(0, len(self._values) - self.max_length)
        for i in range(len(self._values) - 1, start - 1, -1):  # walk back from the newest
            if self._iters[i] <= iteration:
                break
            out.append(self._values[i])
        return out[::-1]

    def latest(self) -> float:
        if not len(self._values):
            raise IndexError("empty history")
        return self._values[-1]


@dataclass(frozen=True)
class ScalarEvent:
    """One published scalar: what a writer writes as one csv row or one TensorBoard point."""

    iteration: int
    epoch: int
    name: str
    value: float


class EventStorage:
    """Scalars with their history, the published events the writers read, and records.

    Attributes:
        iter: the iteration that puts are filed under by default (the trainer's step being run, 1-based:
            equal to ``trainer.iter`` once the step is counted).
        epoch: the epoch filed with published events by default (the trainer's 0-based epoch).
    """

    def __init__(self, max_history: int = 100_000) -> None:
        self.iter = 0
        self.epoch = 0
        self._max_history = int(max_history)
        self._history: dict[str, HistoryBuffer] = {}
        self._latest: dict[str, tuple[float, int]] = {}
        self._step: dict[str, float] = {}
        self._events: list[ScalarEvent] = []
        self._events_dropped = 0  # events before this index were discarded (every writer had read them)
        self._records: dict[str, list[Any]] = {}

    # -- writing -------------------------------------------------------------------------------------
    def begin_step(self, iteration: int, epoch: int) -> None:
        """Open the record of the step at ``iteration``: :meth:`step_scalars` starts empty."""
        self.iter, self.epoch = int(iteration), int(epoch)
        self._step = {}

    def put_scalar(self, name: str, value: float, *, publish: bool = False, iteration: int | None = None,
                   epoch: int | None = None) -> None:
        """File ``value`` under ``name`` at ``iteration`` (default :attr:`iter`).

        Args:
            publish: also append it to the event log that the writers read.
            epoch: the epoch written with a published event (default :attr:`epoch`).
        """
        value = float(value)
        it = self.iter if iteration is None else int(iteration)
        history = self._history.get(name)
        if history is None:
            history = self._history[name] = HistoryBuffer(self._max_history)
        history.append(it, value)
        self._latest[name] = (value, it)
        if it == self.iter and not publish:
            self._step[name] = value
        if publish:
            self._events.append(ScalarEvent(it, self.epoch if epoch is None else int(epoch), name, value))

    def put_scalars(self, values: Mapping[str, float], *, prefix: str = "", publish: bool = False,
                    iteration: int | None = None, epoch: int | None = None) -> None:
        """:meth:`put_scalar` for each item, in order, with ``prefix`` before each name."""
        for name, value in values.items():
            self.put_scalar(prefix + name, value, publish=publish, iteration=iteration, epoch=epoch)

    def put_record(self, kind: str, entry: Any) -> None:
        """Append ``entry`` (anything json can hold) to the records of ``kind``."""
        self._records.setdefault(kind, []).append(entry)

    # -- reading -------------------------------------------------------------------------------------
    def step_scalars(self) -> Mapping[str, float]:
        """The plain scalars put at the current step's iteration since :meth:`begin_step`, in put order (read-only)."""
        return MappingProxyType(self._step)

    def history(self, name: str) -> HistoryBuffer:
        """The history of ``name``; ``KeyError`` naming it when it was never put."""
        if name not in self._history:
            raise KeyError(f"no scalar {name!r} in the event storage")
        return self._history[name]

    def latest(self) -> dict[str, tuple[float, int]]:
        """``{name: (value, iteration)}`` of the latest put of every scalar."""
        return dict(self._latest)

    def latest_value(self, name: str, default: Any = None) -> Any:
        """The latest value of ``name``, or ``default`` when it was never put."""
        return self._latest[name][0] if name in self._latest else default

    def events(self, start: int = 0) -> list[ScalarEvent]:
        """Published events from index ``start`` (counted from the first event ever published) on."""
        if start < self._events_dropped:
            raise IndexError(f"events before {self._events_dropped} were discarded; asked from {start}")
        return self._events[start - self._events_dropped:]

    @property
    def num_events(self) -> int:
        """How many events were published so far (a writer's cursor starts here to skip older ones)."""
        return self._events_dropped + len(self._events)

    def discard_events(self, before: int) -> None:
        """Forget the published events before index ``before`` (once every writer has read them)."""
        n = min(max(0, before - self._events_dropped), len(self._events))
        del self._events[:n]
        self._events_dropped += n

    def records(self, kind: str) -> list[Any]:
        """The records of ``kind`` in put order (a copy; empty when none)."""
        return list(self._records.get(kind, ()))
