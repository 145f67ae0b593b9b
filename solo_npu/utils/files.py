"""Result files written atomically: a reader finds the previous file or the complete new one, never a part.

``Path.write_text`` truncates the file first, so a kill, a Ctrl-C or a full disk in the middle of the write
leaves it cut short or empty. :func:`write_text_atomic` writes a temporary file in the same directory, flushes
and fsyncs it, and renames it over the target (``os.replace``, atomic on POSIX file systems); if anything
fails, the temporary file is removed and the previous file is left as it was.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_path", "atomic_write", "write_json_atomic", "write_text_atomic"]


def _new_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: 0o666 less the umask.

    ``tempfile.mkstemp`` makes its file 0o600 whatever the umask (CPython Lib/tempfile.py, ``_mkstemp_inner``:
    ``_os.open(file, flags, 0o600)``), so the file renamed into place gets this mode back explicitly.
    POSIX has no call that only reads the umask: it is set and put straight back, as pip's ``current_umask``
    does (pip/_internal/utils/unpacking.py). The value set meanwhile is 0o077, so a file another thread
    makes in that instant gets a narrower mode, never a wider one.
    """
    umask = os.umask(0o077)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = None,
                 sync_dir: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing (``mode`` "w" or "wb"); when the block ends, flush,
    fsync and rename it over ``path``, so that ``path`` is either the previous file or the complete new one.

    The directory must exist. A symbolic link is followed: the file it names is replaced. The new file has the
    mode a new file of ``open(path, "w")`` has. On any exception
    (``KeyboardInterrupt`` included) the temporary file is removed and the exception re-raised. ``sync_dir``
    also fsyncs the directory after the rename, so that the new name survives a power cut.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    if path.is_symlink():  # the file the link names is replaced, as open(path, "w") would write it; the link stays
        path = Path(os.path.realpath(path))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            os.fchmod(f.fileno(), _new_file_mode())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        if sync_dir:
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


_PARTIAL = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")  # atomic_write's temporary name (mkstemp)


def remove_partial_writes(folder: str | os.PathLike, suffix: str, older_than_s: float = 60.0) -> list[tuple[Path, int]]:
    """Remove the temporary files that :func:`atomic_write` left in ``folder`` for targets ending in ``suffix``
    when its process was killed (``kill -9``, an OOM kill) before the rename: partial files, never read. Only those
    not written for ``older_than_s`` seconds go (a live write keeps its file's time moving). Returns (path, bytes) of
    each file removed."""
    removed = []
    now = time.time()
    for entry in Path(folder).glob(".*.tmp"):
        match = _PARTIAL.match(entry.name)
        if not match or not match["name"].endswith(suffix) or not entry.is_file():
            continue
        try:
            stat = entry.stat()
            if now - stat.st_mtime < older_than_s:
                continue
            entry.unlink()
        except OSError:  # gone already, or not ours to remove
            continue
        removed.append((entry, stat.st_size))
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """:func:`atomic_write` for writers that take a file name (exporters, ``savefig``, ``cv2.imwrite``): yields a
    temporary path beside ``path`` with the same suffix (the writers pick the format from it); when the block
    ends, that file is fsynced, given the mode of a new file and renamed over ``path``. On any exception, or
    when the block wrote nothing there, the temporary file is removed, ``path`` keeps its previous file and the
    error is raised (a ``FileNotFoundError`` for nothing written)."""
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.unlink(tmp_name)  # the writer makes the file; an empty placeholder would pass for a written one
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"nothing was written to {tmp} for {path}")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, _new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` through :func:`atomic_write`: the previous file or the complete new one."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, end: str = "", **dumps_kwargs: Any) -> Path:
    """:func:`write_text_atomic` of ``json.dumps(obj, **dumps_kwargs) + end``."""
    return write_text_atomic(path, json.dumps(obj, **dumps_kwargs) + end)
