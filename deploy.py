"""Deploy SOLOv2 (and FCOS / YolactEdge / SSD): export, verify, compile for Ascend 310P, infer, evaluate,
benchmark and report; or ``task=predict`` on images. See docs/deploy.md.

    python deploy.py model=solov2 checkpoint=outputs/.../best.pth
    python deploy.py run_dir=outputs/deploy/solov2-... stages=[evaluate,report]
    python deploy.py task=predict checkpoint=PATH input=IMG_OR_DIR output=DIR
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from solo_npu.config import register_configs
from solo_npu.config.deploy_schema import check_deploy_overrides
from solo_npu.deploy.pipeline import main as deploy_main

register_configs()  # conf/deploy.yaml starts from the deploy_schema structured config


@hydra.main(config_path="conf", config_name="deploy", version_base="1.3")
def main(cfg: DictConfig) -> None:
    model_name = HydraConfig.get().runtime.choices.get("model") or str(cfg.model.get("name", "model"))
    code = deploy_main(cfg, model_name)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    unknown = check_deploy_overrides(sys.argv[1:])  # one line naming the key, before Hydra's longer report
    if unknown:
        print(f"error: {unknown}", file=sys.stderr)
        sys.exit(1)
    main()
