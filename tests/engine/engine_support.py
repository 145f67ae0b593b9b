"""Engine test helpers (imported by name: a module of its own, so it never clashes with another conftest)."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from solo_npu.config import register_configs
from solo_npu.engine.trainer import HookBase

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def compose_train_cfg(overrides: list[str]) -> DictConfig:
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=overrides)


def run_train(overrides: list[str], run_dir: Path, extra_experiment: str | None = None) -> dict[str, Any]:
    """Compose ``+experiment=smoke`` (then ``extra_experiment``) plus ``overrides`` and run the job here."""
    from solo_npu.engine.job import run_job
    from solo_npu.engine.launch import launch

    experiments = "smoke" if extra_experiment is None else f"[smoke,{extra_experiment}]"
    cfg = compose_train_cfg([f"+experiment={experiments}", *overrides])
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        launch(run_job, OmegaConf.to_container(cfg, resolve=True), run_dir)
    finally:  # give pytest its logging back
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)
    return json.loads((run_dir / "summary.json").read_text())


class SignalAtEpochEnd(HookBase):
    """Raises ``signum`` in the first epoch's after_epoch (registered first: before the checkpoint hook writes
    the epoch's files)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def after_epoch(self) -> None:
        if self.trainer.epoch == 0:
            signal.raise_signal(self.signum)


def refused_at_start(tmp_path: Path, *overrides: str) -> str:
    """Run ``train.py *overrides`` on a data root and output root under ``tmp_path`` that do not exist yet; assert
    it stops with exit 1 and no traceback, before the synthetic set is generated and before any worker starts, with
    its error line in the run's train.log too; return its stderr, stripped (the one error line)."""
    import os
    import subprocess
    import sys

    data, out = tmp_path / "data", tmp_path / "out"
    proc = subprocess.run([sys.executable, str(Path(CONF_DIR).parent / "train.py"), *overrides, f"data.root={data}",
                           f"output_root={out}"], cwd=Path(CONF_DIR).parent, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=240)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert not data.exists()  # the synthetic set was not generated
    logs = "".join(p.read_text() for p in out.rglob("*.log"))
    assert "run directory" not in logs  # no worker started
    error = proc.stderr.strip().splitlines()[-1]
    assert f"ERROR train: {error}" in logs  # the run's train.log says why it ended
    return proc.stderr.strip()


class RegressionPairs(torch.utils.data.Dataset):
    """32 samples of a linear regression (``images``: 4 numbers, ``y``: their sum), indexed as the grouped batch
    sampler indexes: ``(index, group)``."""

    def __len__(self) -> int:
        return 32

    def __getitem__(self, key):
        index, _ = key
        x = torch.randn(4, generator=torch.Generator().manual_seed(index))
        return {"images": x, "y": x.sum()}
