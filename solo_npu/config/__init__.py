"""Structured-config schemas and config helpers."""

from solo_npu.config.schema import (
    AmpConfig,
    DebugConfig,
    FinetuneConfig,
    LauncherConfig,
    OptimConfig,
    TrainConfig,
    TrainJobConfig,
    register_configs,
    resolve_run_dir,
)

__all__ = [
    "AmpConfig",
    "DebugConfig",
    "FinetuneConfig",
    "LauncherConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainJobConfig",
    "register_configs",
    "resolve_run_dir",
]
