"""The session's synthetic dataset sizes and its data config (a module of its own, so that tests import it
by a name no other conftest has)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

SYNTHETIC_TRAIN, SYNTHETIC_VAL, SYNTHETIC_SIZE = 16, 8, 128
_CONF_DATA = Path(__file__).resolve().parents[1] / "conf" / "data" / "synthetic.yaml"


def synthetic_data_cfg(root: str | Path, **overrides: Any) -> DictConfig:
    """A data config shaped like conf/data/synthetic.yaml for the dataset at ``root``.

    Sized for tests: 128-px images resized to (160, 128), no workers, ``generate`` off. ``overrides``
    are dotted keys (``pad__mode="fixed"`` or ``**{"pad.mode": "fixed"}``) merged last.
    """
    cfg = OmegaConf.load(_CONF_DATA)
    cfg.merge_with({
        "root": str(root), "generate": False, "num_train": SYNTHETIC_TRAIN, "num_val": SYNTHETIC_VAL,
        "size": SYNTHETIC_SIZE, "img_scale": [160, 128], "num_workers": 0, "pin_memory": False,
    })
    for key, value in overrides.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, merge=False)
    OmegaConf.set_struct(cfg, True)
    return cfg
