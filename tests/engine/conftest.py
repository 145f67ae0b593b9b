"""Helpers for the engine tests: compose the training config and run jobs in this process."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_support import CONF_DIR, compose_train_cfg, run_train  # noqa: F401  (fixtures' helpers)


@pytest.fixture(scope="session")
def smoke_data(synthetic_coco: Path) -> list[str]:
    """Overrides pointing the smoke experiment at the session's synthetic dataset."""
    return [f"data.root={synthetic_coco}", "data.generate=false"]
