"""Checkpoint files: atomic writes and safe loading."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not in a format we can load."""


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` with ``torch.save`` so that ``path`` is either the old file or the complete new one.

    The data goes to a temporary file in the same directory, is flushed and fsynced, and is then
    renamed over ``path`` (an atomic operation on POSIX file systems). A crash or ``kill -9`` during
    the write leaves at worst a stray ``.tmp`` file, never a truncated checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, trust_pickle: bool = False, map_location: Any = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True``.

    Args:
        path: the checkpoint file.
        trust_pickle: load arbitrary pickled objects (``weights_only=False``). Only for files from a
            source you trust; old mmcv/SOLO checkpoints sometimes hold pickled config objects.
        map_location: passed to ``torch.load``.

    Raises:
        CheckpointError: the file is missing, holds objects that need ``trust_pickle``, or (with it) pickles
            objects of a package that is not installed (mmengine training checkpoints keep ``ConfigDict`` and
            ``HistoryBuffer`` objects in ``message_hub``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust_pickle)
    except ModuleNotFoundError as exc:  # unpickling imports the module of every pickled class
        package = (exc.name or "?").split(".")[0]
        # mmdet's tools/model_converters/publish_model.py keeps only `meta` and `state_dict` (plain data).
        raise CheckpointError(
            f"{path} pickles objects of the package {package!r}, which is not installed: install {package}, or "
            "re-save the file as a plain state dict where it is installed (for mmdet / mmengine / mmcv files: "
            "mmdet's tools/model_converters/publish_model.py keeps only meta and state_dict)") from exc
    except Exception as exc:  # torch raises UnpicklingError or RuntimeError depending on version
        if not trust_pickle and "weights_only" in str(exc):
            raise CheckpointError(
                f"{path} holds pickled Python objects that weights_only=True refuses to load. "
                "If you trust the file, pass --trust-pickle (or checkpoint_trust_pickle=true)."
            ) from exc
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
