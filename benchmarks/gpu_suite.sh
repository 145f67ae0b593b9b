#!/usr/bin/env bash
# Checks that need a CUDA GPU, run as one script on a machine that has one:
#   bash benchmarks/gpu_suite.sh [SECTION ...]      (default: every section)
# Each section prints "PASS <name>" or "FAIL <name>: <reason>" and the script exits non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[[ -x "${PYTHON}" ]] || PYTHON=python3
export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
failed=0

section() {  # section NAME: run the python code on stdin, report PASS/FAIL
    local name="$1"
    if "${PYTHON}" - ; then echo "PASS ${name}"; else echo "FAIL ${name}"; failed=1; fi
}

# export_on_cuda: the deploy export stage with the model on the GPU. The example batch follows the
# model's device (solo_npu/deploy/export.py: module_example); TorchScript and ONNX exported from the
# CUDA model must equal the CPU model's outputs.
export_on_cuda() {
section export_on_cuda <<'PY'
import tempfile
import numpy as np
import onnxruntime as ort
import torch
from omegaconf import OmegaConf
from hydra.utils import instantiate
from solo_npu.deploy.adapters import build_adapter
from solo_npu.deploy.export import export_onnx, export_torchscript, module_example, slim_onnx

assert torch.cuda.is_available(), "no CUDA device"
torch.backends.cudnn.allow_tf32 = False  # full fp32 so that the comparison with ONNX Runtime on the CPU is tight
torch.backends.cuda.matmul.allow_tf32 = False
cfg = OmegaConf.load("conf/model/solov2_tiny.yaml")
cfg.num_classes = 3
spec = OmegaConf.to_container(cfg)
spec.pop("deploy")
torch.manual_seed(0)
model = instantiate(spec).eval()
adapter = build_adapter(OmegaConf.load("conf/model/solov2.yaml"))
module = adapter.export_module(model).cuda()
example = module_example(module, 1, (128, 160))
assert example.device.type == "cuda", example.device
with tempfile.TemporaryDirectory() as tmp:
    ts = torch.jit.load(str(export_torchscript(module, example, f"{tmp}/m.ts")))
    path = export_onnx(module, example, f"{tmp}/m.onnx", adapter.output_names, 13)
    slim_onnx(path)
    with torch.no_grad():
        ref = [t.cpu().numpy() for t in module(example)]
        traced = [t.cpu().numpy() for t in ts(example)]
    onnx_out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": example.cpu().numpy()})
for name, r, t, o in zip(adapter.output_names, ref, traced, onnx_out):
    np.testing.assert_allclose(t, r, atol=1e-4, err_msg=f"torchscript {name}")
    np.testing.assert_allclose(o, r, atol=1e-3, err_msg=f"onnx {name}")
print("export from cuda: TorchScript and ONNX match the CUDA model")
PY
}

sections=("$@")
[[ ${#sections[@]} -gt 0 ]] || sections=(export_on_cuda)
for s in "${sections[@]}"; do
    "${s}"
done
exit "${failed}"
