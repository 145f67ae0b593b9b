"""A text write that fails midway, as a full disk or a Ctrl-C would make it fail.

The failure is injected where ``Path.write_text`` (via ``Path.open``), ``open`` and ``os.fdopen`` all open
their file, ``io.open`` (CPython Lib/os.py ``fdopen``: ``return io.open(fd, ...)``; Lib/pathlib.py of 3.11
``Path.open``: ``return io.open(self, ...)``). Binary writes are left alone.
"""

from __future__ import annotations

import builtins
import errno
import io
import os

import pytest

DISK_FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FailingFile:
    """A text file opened for writing whose write, once ``room`` characters are written, writes what fits
    (flushed to the file, as the OS would have it) and raises ``error``: ENOSPC is what ``write(2)`` gives on a
    full disk, KeyboardInterrupt a Ctrl-C arriving in the middle."""

    def __init__(self, f: io.TextIOWrapper, room: int, error: BaseException, failures: list[BaseException]) -> None:
        self._f, self._room, self._error, self._failures = f, room, error, failures

    def write(self, s: str) -> int:
        if len(s) > self._room:
            self._f.write(s[:self._room])
            self._f.flush()
            self._room = 0
            self._failures.append(self._error)
            raise self._error
        self._room -= len(s)
        return self._f.write(s)

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def __enter__(self) -> FailingFile:
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


def fail_text_writes(monkeypatch: pytest.MonkeyPatch, room: int, error: BaseException,
                     name: str | None = None) -> list[BaseException]:
    """From now until ``monkeypatch.undo()``, every text file opened for writing (whose path contains ``name``,
    if given; a temporary file beside ``x`` names ``x`` too) fails after ``room`` characters with ``error``.
    Returns the list the failures are appended to (to check that one was injected)."""
    real_open, failures = io.open, []

    def failing_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if "w" not in mode or "b" in mode:
            return f
        if name is not None:  # os.fdopen passes a descriptor: its path is in /proc (Linux)
            opened = os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else os.fspath(file)
            if name not in os.path.basename(opened):
                return f
        return FailingFile(f, room, error, failures)

    monkeypatch.setattr(io, "open", failing_open)
    monkeypatch.setattr(builtins, "open", failing_open)
    return failures
