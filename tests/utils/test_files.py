"""Result files are replaced atomically: a write that fails midway leaves the previous file as it was."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import pytest

from solo_npu.engine.job import write_summary
from solo_npu.utils.files import write_json_atomic, write_text_atomic

SUMMARY = {"mode": "train", "iterations": 12, "final_loss": 1.2345, "segm_ap": 0.125, "bbox_ap": None,
           "results": {"segm": {"AP": 0.125, "AP50": 0.5}, "bbox": {}}, "world_size": 1, "device": "cpu",
           "epoch_counts": [[0, 6], [1, 6]], "data_faults": {"train": {}, "val": {}}}


class _FailingFile:
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

    def __enter__(self) -> _FailingFile:
        return self

    def __exit__(self, *exc) -> None:
        self._f.close()


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), KeyboardInterrupt()],
                         ids=["disk-full", "ctrl-c"])
def test_failed_write_keeps_previous_summary_and_leaves_no_temporary_file(tmp_path: Path, monkeypatch,
                                                                          error: BaseException) -> None:
    """The write of a new summary.json fails after 40 characters: the previous one is there byte for byte,
    and no temporary file is left. The failure is injected where ``Path.write_text`` (via ``Path.open``) and
    ``os.fdopen`` both open their file, ``io.open`` (CPython Lib/os.py ``fdopen``: ``return io.open(fd, ...)``;
    Lib/pathlib.py of 3.11 ``Path.open``: ``return io.open(self, ...)``)."""
    write_summary(tmp_path, SUMMARY)
    before = (tmp_path / "summary.json").read_bytes()
    real_open, failures = io.open, []

    def failing_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return _FailingFile(f, 40, error, failures) if "w" in mode and "b" not in mode else f

    monkeypatch.setattr(io, "open", failing_open)
    with pytest.raises(type(error)):
        write_summary(tmp_path, {**SUMMARY, "iterations": 24, "final_loss": 0.5})
    monkeypatch.undo()
    assert failures == [error], "the failure was not injected"
    assert (tmp_path / "summary.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_summary_bytes_and_mode_are_those_of_write_text(tmp_path: Path) -> None:
    """summary.json has the bytes ``Path.write_text(json.dumps(summary, indent=2) + "\\n")`` gave it, and the
    mode a new file gets (0o666 less the umask), not mkstemp's 0o600."""
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps(SUMMARY, indent=2) + "\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_summary(run_dir, SUMMARY)
    written = run_dir / "summary.json"
    assert written.read_bytes() == reference.read_bytes()
    assert written.stat().st_mode == reference.stat().st_mode
    write_summary(run_dir, {**SUMMARY, "iterations": 24})  # replacing it
    assert json.loads(written.read_text())["iterations"] == 24
    assert sorted(p.name for p in run_dir.iterdir()) == ["summary.json"]


def test_write_json_atomic_passes_dumps_options(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "a.json", {"b": Path("x"), "a": 1}, end="\n", indent=1, sort_keys=True,
                             default=str)
    assert path.read_text() == '{\n "a": 1,\n "b": "x"\n}\n'
    assert write_text_atomic(tmp_path / "a.json", "é").read_bytes() == "é".encode()


def test_checkpoint_has_the_mode_of_torch_save_and_survives_a_failed_save(tmp_path: Path) -> None:
    """A checkpoint gets the mode ``torch.save(obj, path)`` gives a new file (0o666 less the umask: a group
    that shares a run directory can read it), not mkstemp's 0o600; a save that fails midway (an object
    torch.save cannot pickle, a generator, after the tensors before it are written) leaves the previous checkpoint."""
    import torch

    from solo_npu.checkpoints import load_checkpoint, save_checkpoint

    reference = tmp_path / "reference.pth"
    torch.save({"w": torch.ones(3)}, reference)
    path = save_checkpoint({"w": torch.arange(3.0)}, tmp_path / "last.pth")
    assert path.stat().st_mode == reference.stat().st_mode
    with pytest.raises(TypeError, match="pickle"):  # "cannot pickle 'generator' object"
        save_checkpoint({"w": torch.zeros(1000), "bad": (i for i in ())}, path)
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth", "reference.pth"]
    with pytest.raises(ValueError, match="mode 'w' or 'wb'"):
        from solo_npu.utils.files import atomic_write

        with atomic_write(tmp_path / "x", "a"):
            pass
