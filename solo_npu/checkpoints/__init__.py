"""Checkpoint I/O and converters."""

from typing import Any

from solo_npu.checkpoints.io import CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["CheckpointError", "load_checkpoint", "load_model_weights", "save_checkpoint"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `python -m solo_npu.checkpoints.convert` runs the module only once.
    if name == "load_model_weights":
        from solo_npu.checkpoints.convert import load_model_weights

        return load_model_weights
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
