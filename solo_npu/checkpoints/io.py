"""Checkpoint files: atomic writes and safe loading."""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from solo_npu.utils.files import atomic_write

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not in a format we can load."""


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` with ``torch.save`` so that ``path`` is either the old file or the complete new one.

    The data goes to a temporary file in the same directory, is flushed and fsynced, and is then
    renamed over ``path`` (an atomic operation on POSIX file systems; :func:`solo_npu.utils.files.atomic_write`),
    and the directory is fsynced. A crash or ``kill -9`` during the write leaves at worst a stray ``.tmp``
    file (which a training run's checkpoint hook removes from its folder when it starts:
    :func:`solo_npu.utils.files.remove_partial_writes`), never a truncated checkpoint. The file gets the mode
    ``torch.save(obj, path)`` would give it (0o666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb", sync_dir=True) as f:
        torch.save(obj, f)
    return path


TRUST_HINT = "If you trust the file, pass --trust-pickle (or checkpoint_trust_pickle=true)."


def folder_not_checkpoint(path: Path) -> str:
    """The one-line error for a folder given as a checkpoint file, naming the checkpoints in it (a training run's
    ``checkpoints/best.pth`` and ``last.pth`` first) where it has some."""
    found = [p for p in (path / "checkpoints" / "best.pth", path / "checkpoints" / "last.pth", path / "best.pth",
                         path / "last.pth") if p.is_file()]
    found = found or sorted(path.glob("*.pth"))[:3]
    hint = f": pass the file, e.g. {found[0]}" if found else ""
    return f"{path} is a directory, not a checkpoint file{hint}"


def load_checkpoint(path: str | os.PathLike, trust_pickle: bool = False, map_location: Any = "cpu",
                    trust_hint: str = TRUST_HINT) -> Any:
    """Load a checkpoint with ``weights_only=True``.

    Args:
        path: the checkpoint file.
        trust_pickle: load arbitrary pickled objects (``weights_only=False``). Only for files from a
            source you trust; old mmcv/SOLO checkpoints sometimes hold pickled config objects.
        map_location: passed to ``torch.load``.
        trust_hint: what the error for a file that needs ``trust_pickle`` tells the user to do.

    Raises:
        CheckpointError: the file is missing, empty, not a file ``torch.save`` writes (an ONNX model, a text
            file), truncated or corrupted, holds objects that need ``trust_pickle``, or (with it) pickles objects
            of a package that is not installed (mmengine training checkpoints keep ``ConfigDict`` and
            ``HistoryBuffer`` objects in ``message_hub``). Every message is one line that names ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(folder_not_checkpoint(path) if path.is_dir() else f"checkpoint not found: {path}")
    if _torchscript_archive(path):  # torch.load would hand it to torch.jit.load (torch 2.1 even with weights_only)
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: {_TORCHSCRIPT}")
    try:
        with warnings.catch_warnings():
            # torch 2.1's weights-only loader touches TypedStorage, which warns on stderr at every load
            # (torch/_utils.py: "TypedStorage is deprecated"): internal, nothing the user can act on.
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=not trust_pickle)
    except ModuleNotFoundError as exc:  # unpickling imports the module of every pickled class
        package = (exc.name or "?").split(".")[0]
        # mmdet's tools/model_converters/publish_model.py keeps only `meta` and `state_dict` (plain data).
        raise CheckpointError(
            f"{path} pickles objects of the package {package!r}, which is not installed: install {package}, or "
            "re-save the file as a plain state dict where it is installed (for mmdet / mmengine / mmcv files: "
            "mmdet's tools/model_converters/publish_model.py keeps only meta and state_dict)") from exc
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, KeyError ... by version and file
        not_torch = _not_a_torch_file(path)
        if not_torch:
            raise CheckpointError(f"{path} is not a PyTorch checkpoint: {not_torch}") from exc
        detail = _one_line(exc)
        # The weights-only unpickler reads a file that ends early as EOFError or "unexpected EOF" (pytorch
        # torch/_weights_only_unpickler.py; torch 2.1 wraps it in its "Weights only load failed" text).
        if isinstance(exc, EOFError) or "unexpected EOF" in detail:
            raise CheckpointError(f"cannot read checkpoint {path}: its data ends early ({path.stat().st_size} "
                                  f"bytes: truncated, e.g. a copy that did not finish?): {detail}") from exc
        if not trust_pickle and "weights_only" in str(exc):
            missing = _uninstalled_global(str(exc))
            if missing is not None:  # trust_pickle would only get as far as its ModuleNotFoundError
                package, name = missing
                raise CheckpointError(
                    f"{path} pickles objects of the package {package!r} ({name}), which weights_only=True refuses "
                    f"and which is not installed: install {package} and pass checkpoint_trust_pickle=true if you "
                    "trust the file, or re-save it as a plain state dict where it is installed (for mmdet / "
                    "mmengine / mmcv files: mmdet's tools/model_converters/publish_model.py keeps only meta and "
                    "state_dict)") from exc
            raise CheckpointError(
                f"{path} holds pickled Python objects that weights_only=True refuses to load ({detail}). "
                f"{trust_hint}"
            ) from exc
        raise CheckpointError(f"cannot read checkpoint {path}: {detail}") from exc


def _uninstalled_global(message: str) -> tuple[str, str] | None:
    """(package, dotted name) of the global the weights-only unpickler refused (its message names it, "Unsupported
    global: GLOBAL mmengine.config.config.ConfigDict" or, on torch 2.1, "Unsupported class
    mmengine.config.config.ConfigDict"), when that package is not installed; else ``None``."""
    import importlib.util

    found = re.search(r"(?:GLOBAL|Unsupported class) ([A-Za-z_][\w.]*)", message)
    if found is None or "." not in found.group(1):
        return None
    package = found.group(1).split(".")[0]
    if package in ("__main__", "torch", "numpy", "collections", "builtins", "__builtin__", "_codecs"):
        return None  # a class of the script that saved the file, or one torch allows: the trust hint stands
    if sys.modules.get(package, True) is None:  # blocked from import (sys.modules[name] = None)
        return package, found.group(1)
    try:
        installed = importlib.util.find_spec(package) is not None
    except (ImportError, ValueError, AttributeError):  # cannot tell: the trust hint stands
        return None
    return None if installed else (package, found.group(1))


# torch.save writes a zip archive (torch >= 1.6) or, with _use_new_zipfile_serialization=False, pickles (protocol 2,
# whose first opcode is PROTO, 0x80) of its magic number and data (pytorch torch/serialization.py: _is_zipfile
# checks the zip local-file-header signature, _legacy_load unpickles the magic number first).
_TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80")


def _not_a_torch_file(path: Path) -> str:
    """Why ``path`` cannot be a file of ``torch.save`` (empty, or another kind of file); ``""``: it may be one."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return ""
    if not head:
        return "the file is empty (0 bytes)"
    if head.startswith(_TORCH_FILE_STARTS):
        return _TORCHSCRIPT if _torchscript_archive(path) else ""
    return (f"torch.save writes a zip archive (or a pickle), this file starts with {head!r} (an ONNX model, an "
            "OM model or another kind of file?)")


_TORCHSCRIPT = ("it is a TorchScript module (torch.jit.save, as deploy.py's export writes), not a checkpoint: pass "
                "the .pth it was exported from")


def _torchscript_archive(path: Path) -> bool:
    """Whether ``path`` is a zip archive of torch.jit.save: a ``code/`` folder of TorchScript sources and
    ``constants.pkl`` beside ``data.pkl`` (torch/csrc/jit/serialization/export_module.cpp), which torch.save's
    archives do not have."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return any(n.split("/", 1)[-1].startswith("code/") for n in names) and any(
        n.endswith("/constants.pkl") for n in names)


def _one_line(exc: BaseException) -> str:
    """``exc``'s message on one line: torch's span several lines and may carry terminal colour codes; of a
    weights-only load, the unpickler's own error (after "WeightsUnpickler error:", before torch's advice)."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())
    _, found, unpickler = text.partition("WeightsUnpickler error:")
    if found:
        text = unpickler.split(" Check the documentation of torch.load")[0].strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
