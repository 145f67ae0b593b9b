"""Deploy SOLOv2 (and FCOS / YolactEdge / SSD): export, verify, compile for Ascend 310P, infer, evaluate,
benchmark and report; or ``task=predict`` on images. See docs/deploy.md.

    python deploy.py model=solov2 checkpoint=outputs/.../best.pth
    python deploy.py run_dir=outputs/deploy/solov2-... stages=[evaluate,report]
    python deploy.py task=predict checkpoint=PATH input=IMG_OR_DIR output=DIR
"""

from __future__ import annotations

import os

# Before anything imports torch (solo_npu.deploy.pipeline does): torch >= 2.5 imports every "torch.backends"
# entry point at `import torch`, torch_npu's among them, and a torch_npu that fails to import (CANN's set_env.sh
# not sourced) would end every deploy there, the CPU and ONNX Runtime stages too. Off, the runtime imports
# torch_npu when runtime.device is npu or auto (see train.py). A value the user set wins.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

import sys  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from solo_npu.config import register_configs  # noqa: E402
from solo_npu.config.deploy_schema import check_deploy_overrides  # noqa: E402
from solo_npu.config.values import ConfigValueError, check_model_choices  # noqa: E402
from solo_npu.deploy.pipeline import main as deploy_main  # noqa: E402

register_configs()  # conf/deploy.yaml starts from the deploy_schema structured config


@hydra.main(config_path="conf", config_name="deploy", version_base="1.3")
def main(cfg: DictConfig) -> None:
    model_name = HydraConfig.get().runtime.choices.get("model") or str(cfg.model.get("name", "model"))
    try:  # a model value its builder does not take, as train.py checks it: one line before any stage
        check_model_choices({"model": cfg.model})
    except ConfigValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    code = deploy_main(cfg, model_name)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    # one line naming the key (or group choice), before Hydra's longer report
    unknown = check_deploy_overrides(sys.argv[1:], os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf"))
    if unknown:
        print(f"error: {unknown}", file=sys.stderr)
        sys.exit(1)
    main()
