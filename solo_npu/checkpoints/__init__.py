"""Checkpoint I/O and converters."""

from solo_npu.checkpoints.io import CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]
