"""Deploy test helpers (imported by name: a module of its own, so it never clashes with another conftest)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from solo_npu.config import register_configs

ROOT = Path(__file__).resolve().parents[2]
CANVAS = (128, 160)  # H, W of the static model input used by the deploy tests
FIT_ITERS = 100

register_configs()  # conf/deploy.yaml starts from the deploy_schema structured config (as deploy.py registers it)


def compose_deploy_cfg(overrides: list[str]) -> DictConfig:
    """conf/deploy.yaml with command-line style overrides, exactly as deploy.py sees it."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("deploy", overrides=overrides)


def base_overrides(data_root: Path) -> list[str]:
    return ["model=solov2_tiny", "data=synthetic", f"data.root={data_root}", "data.generate=false",
            f"deploy.input_shape=[{CANVAS[0]},{CANVAS[1]}]", "deploy.batch_sizes=[1,2]",
            "deploy.benchmark.warmup=1", "deploy.benchmark.iters=2", "deploy.onnxruntime.intra_op_num_threads=1",
            # these tests compare raw outputs across batch sizes: infer runs all of them and keeps the raw files
            "deploy.infer.batch_sizes=all", "deploy.infer.keep_raw=true"]
