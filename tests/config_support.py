"""Config test helper (imported by name, as the other *_support modules)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from solo_npu.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def compose_config(*overrides: str) -> dict:
    """conf/config.yaml with command-line style overrides, resolved to a plain dict."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)
