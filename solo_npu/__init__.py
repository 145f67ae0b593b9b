"""solo-npu: SOLOv2 instance segmentation training and deployment on Ascend NPUs, CUDA GPUs and CPUs."""

import os
import sys

__version__ = "0.1.0"

# `python -m solo_npu.<module>` (the checkpoint converter, the synthetic-set writer) switches torch's device-backend
# autoload off as train.py and deploy.py do: since PyTorch 2.5 `import torch` imports torch_npu through its
# "torch.backends" entry point and ends the program on a torch_npu that cannot load CANN's libraries, a CPU-only
# conversion too. Python sets sys.argv[0] to "-m" while it imports the packages of the module it is about to run
# (Python documentation, "Command line and environment", option -m), so only those programs are affected: code
# that imports solo_npu as a library keeps torch's default. It is safe because the runtime imports torch_npu itself
# whenever the NPU is asked for or looked for (solo_npu.runtime.resolve_device for device npu and auto). A value
# the user set wins.
if getattr(sys, "argv", [])[:1] == ["-m"]:
    os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
