#!/usr/bin/env bash
# Every GPU figure and CUDA check, as one script for a machine with a CUDA GPU (under 10 minutes on an
# H100/H200-class GPU):
#   bash benchmarks/gpu_suite.sh [SECTION ...]      (default: every section)
# Each section prints "PASS <name>" or "FAIL <name>: <reason>"; the script exits non-zero if any failed.
# Figures go into docs/benchmarks.md (each section names the device) and, when $OUT is set, a copy of
# docs/benchmarks.md and the deploy reports are written there.
#
# Packages the GPU machine may lack (hydra-core, omegaconf, antlr4-python3-runtime, pycocotools,
# onnxslim) can travel as wheels in .whl/: they are installed into /tmp/site first when that folder
# exists. ONNX Runtime's CUDA provider needs onnxruntime-gpu; without it the onnxruntime rows run on the
# CPU provider and the report says so.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[[ -x "${PYTHON}" ]] || PYTHON=python3
if [[ -d .whl ]] && ls .whl/*.whl >/dev/null 2>&1; then
    "${PYTHON}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH="/tmp/site${PYTHONPATH:+:${PYTHONPATH}}"
fi
export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONUNBUFFERED=1
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

# train_throughput: R50 at 1333x800 (canvas 800x1344), fp32 and AMP, batch 2/4/8: images/s and allocator
# peak. Anchors: Ascend ModelZoo SOLOV2 training guide 1p GPU 8.1 img/s, 8p GPU 38.3; 8xV100 about 39.
train_throughput() {
    if "${PYTHON}" benchmarks/train_throughput.py --cases r50 light_r50 --batch 2 4 8 --warmup 3 --steps 10 \
        --device cuda; then echo "PASS train_throughput"; else echo "FAIL train_throughput"; failed=1; fi
    if "${PYTHON}" benchmarks/train_throughput.py --positives --cases r50 light_r18_672 --batch 2 --instances 8 \
        --warmup 3 --steps 10 --device cuda; then echo "PASS positives"; else echo "FAIL positives"; failed=1; fi
}

# forward: backbone + neck + head in its training layout against the inference mode (BN folded,
# channels-last), and the SOLOv2 forward / post-processing table, on the GPU.
forward() {
    if "${PYTHON}" benchmarks/inference_mode.py --model solov2_r50 --shape 800 1216 --iters 20 --device cuda --compile \
        && "${PYTHON}" benchmarks/solov2_forward.py --device cuda --iters 10; then
        echo "PASS forward"; else echo "FAIL forward"; failed=1; fi
}

# deploy_cuda: the deploy pipeline on CUDA for SOLOv2 R50 at 800x1216, batch 1/4/8 (eager, TorchScript,
# ONNX Runtime), p50/p99 latency and images/s in its report. Goal: 100 fps end to end at batch 1
# (Ascend ModelZoo SOLOV2 torch_aie guide, 310P3: 26.19 fps).
deploy_cuda() {
    local run=outputs/gpu_suite/deploy_solov2_cuda
    rm -rf "${run}"
    if "${PYTHON}" deploy.py model=solov2 runtime.device=cuda run_dir="${run}" deploy.batch_sizes=[1,4,8] \
        deploy.num_images=64 deploy.benchmark.iters=20 deploy.infer.batch_sizes=[1]; then
        echo "PASS deploy_cuda"; else echo "FAIL deploy_cuda"; failed=1; fi
    [[ -n "${OUT:-}" && -f "${run}/report.md" ]] && cp "${run}/report.md" "${OUT}/deploy_solov2_cuda.md"
}

# train_cli_cuda: `train.py +experiment=1p` on the GPU as users run it (light R18, synthetic set): the NPU's fixed
# shapes are lifted on CUDA (one log line), fp16 AMP with the static loss scale 128 trains to a finite loss;
# then SIGTERM during a second run stops it after a step with last.pth saved (exit 143), and resume=auto
# finishes it.
train_cli_cuda() {
    local run=outputs/gpu_suite/train_1p_cuda
    local args=(+experiment=1p data=synthetic model=solov2_light_r18 model.pretrained=none
        model.backbone.frozen_stages=-1 model.backbone.norm_eval=false runtime.device="${GPU_SUITE_DEVICE:-cuda}"
        train.epochs=2 train.max_iters="${GPU_SUITE_ITERS:-60}" train.eval_interval=0 train.eval_at_end=false
        train.plots=false train.progress=plain)
    rm -rf "${run}" "${run}_stop"
    if "${PYTHON}" train.py "${args[@]}" run_dir="${run}" \
        && grep -q "runtime.fixed_shapes=npu: the fixed NPU shapes are not used on" "${run}/train.log" \
        && "${PYTHON}" -c "import json, math, sys; s = json.load(open('${run}/summary.json')); print(s['status'], \
s['iterations'], s['final_loss'], s['fps']); sys.exit(not (s['status'] == 'ok' and math.isfinite(s['final_loss'])))"
    then echo "PASS train_cli_cuda"; else echo "FAIL train_cli_cuda"; failed=1; fi
    "${PYTHON}" train.py "${args[@]}" run_dir="${run}_stop" train.checkpoint_interval_iters=5 &
    local pid=$! waited=0
    while [[ ! -f "${run}_stop/checkpoints/last.pth" && ${waited} -lt 600 ]] && kill -0 "${pid}" 2>/dev/null; do
        sleep 0.5; waited=$((waited + 1))
    done
    kill -TERM "${pid}"
    wait "${pid}"
    local status=$?
    if [[ ${status} -eq 143 ]] && grep -q "state saved" "${run}_stop/train.log" \
        && "${PYTHON}" train.py "${args[@]}" run_dir="${run}_stop" resume=auto \
        && grep -q "resumed from" "${run}_stop/train.log"; then
        echo "PASS sigterm_resume_cuda"; else echo "FAIL sigterm_resume_cuda (exit ${status})"; failed=1; fi
}

sections=("$@")
[[ ${#sections[@]} -gt 0 ]] || sections=(export_on_cuda train_cli_cuda train_throughput forward deploy_cuda)
"${PYTHON}" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
for s in "${sections[@]}"; do
    "${s}"
done
[[ -n "${OUT:-}" ]] && cp docs/benchmarks.md "${OUT}/benchmarks.md"
exit "${failed}"
