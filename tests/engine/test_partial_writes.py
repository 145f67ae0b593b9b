"""A save killed before its rename (kill -9, an OOM kill) leaves a checkpoint-sized temporary file beside the
checkpoints; the next run of the same directory removes those its writes left, with a WARNING, and nothing else."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from solo_npu.engine.hooks import CheckpointHook
from solo_npu.utils.files import atomic_write, remove_partial_writes


def _partial(folder: Path, target: str, age_s: float, size: int = 1000) -> Path:
    """A temporary file of atomic_write for ``target``, as a killed write leaves it, last written ``age_s`` ago."""
    import tempfile

    fd, name = tempfile.mkstemp(prefix=f".{target}.", suffix=".tmp", dir=folder)  # atomic_write's own naming
    os.write(fd, b"\0" * size)
    os.close(fd)
    then = time.time() - age_s
    os.utime(name, (then, then))
    return Path(name)


def test_a_resumed_run_removes_the_partial_checkpoints_a_killed_save_left(tmp_path: Path, caplog) -> None:
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    (ckpt / "last.pth").write_bytes(b"whole")
    old = [_partial(ckpt, "last.pth", 3600, 3 * 2**20), _partial(ckpt, "epoch_3.pth", 600)]
    live = _partial(ckpt, "last.pth", 1)             # a save in progress (its file still being written)
    other = _partial(ckpt, "metrics.json", 3600)     # not a checkpoint's
    stray = ckpt / ".notes.tmp"                       # not atomic_write's name
    stray.write_text("x")
    with caplog.at_level(logging.WARNING, logger="solo_npu.engine.hooks"):
        CheckpointHook(ckpt, dict, is_main=True)
    assert not any(p.exists() for p in old)
    assert live.exists() and other.exists() and stray.exists() and (ckpt / "last.pth").read_bytes() == b"whole"
    assert "removed 2 unfinished checkpoint write(s) of an earlier run, 3 MB" in caplog.text
    caplog.clear()
    CheckpointHook(ckpt, dict, is_main=False)  # other ranks leave the shared folder alone
    assert live.exists()


def test_the_pattern_is_atomic_writes_own(tmp_path: Path) -> None:
    """What atomic_write leaves when interrupted is what is removed (it cleans up after itself on an exception;
    only a killed process leaves one)."""
    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "a.pth", "wb") as f:
        f.write(b"partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []  # an exception removes it at once
    made = _partial(tmp_path, "a.pth", 120)
    assert remove_partial_writes(tmp_path, ".pth") == [(made, 1000)]
