"""Structured-config schemas and config helpers."""

from pathlib import Path

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

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # the Hydra config groups train.py and deploy.py compose

__all__ = [
    "CONF_DIR",
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
