#!/usr/bin/env bash
# The GPU figures and CUDA checks as one script, for one device call on the lent GPU machine (one NVIDIA H200; no
# package index there). docs/benchmarks.md, "GPU suite", gives the commands:
#   make gpu-wheels                                      here: .whl/ with the packages that machine lacks
#   bash benchmarks/gpu_suite.sh [SECTION ...]           there, with .whl carried (default: every section, in order)
#   GPU_SUITE_DEVICE=cpu bash benchmarks/gpu_suite.sh    dry run here: every section's logic on the CPU, tiny counts
#
# Sections, most important first (the first two are the figures asked for):
#   forward       backbone + neck + head of R50 at 800x1216, training layout and inference mode, fp32 (TF32 as
#                 allowed) and fp16 / bf16 autocast (benchmarks/inference_mode.py)
#   train_step    training step (forward, losses, backward, clip, SGD) of R50 and light R50, fp32 and AMP, batch 2
#                 and 8 (benchmarks/train_throughput.py)
#   train_cli     train.py +experiment=1p on the device (fp16 AMP, static loss scale) to a finite loss; then a
#                 second run stopped by SIGTERM after its first checkpoint (exit 143, last.pth) and resume=auto
#   export        TorchScript and ONNX exported from the model on the device, and TorchScript traced on the CPU and
#                 loaded onto the device, compared with the model there (valid slots)
#   deploy        deploy.py for SOLOv2 R50 800x1216 on the device (eager, TorchScript, ONNX Runtime) with its report
#   forward_post  the SOLOv2 forward / post-processing table on the device (benchmarks/solov2_forward.py)
#   positives     sized against 512 fixed positive slots in the training step (train_throughput.py --positives)
#   compile       the forward table again with torch.compile of the inference mode (cold inductor cache)
#   deploy_compile  deploy.py's pytorch backend under torch.compile (deploy.pytorch.compile=true), batch 1: verified
#                 against eager, timed after its compiling warm-up run (report copied as deploy_compile_report.md)
# Before them, preflight installs .whl/ when a package is missing (hydra-core, omegaconf, antlr4, pycocotools,
# onnxslim) and checks the imports and the device; when either fails the run stops there with one STOP line.
#
# Time: every section runs under timeout(1) with its own limit, cut to what is left of GPU_SUITE_BUDGET seconds
# (480 on CUDA: every section but deploy_compile took about 415 s on the H200, so that one needs a second call; 1500 in the CPU dry run); a section that would start with less
# than its minimum is skipped, with the reason. timeout(1) signals its whole process group (GNU coreutils
# src/timeout.c: setpgid (0, 0) in main, send_sig (0, sig) in cleanup), so a section's child processes end with it;
# --kill-after sends SIGKILL 15 s after SIGTERM.
# Output: the whole log goes to $OUT/gpu_suite.log as it is written; after every section the summary (one PASS /
# FAIL / SKIP line per section, with the device's name), the tables (a copy of docs/benchmarks.md with the device's
# sections written in: SOLO_BENCHMARKS_MD, benchmarks/common.py) and the deploy report are copied to $OUT.
# Everything is also kept in outputs/gpu_suite/ (GPU_SUITE_RESULTS; emptied at the start); docs/benchmarks.md itself
# is not touched.
# Exit status: 0 when every section that ran passed, 1 when one failed, 2 when preflight stopped the run.
set -uo pipefail
SCRIPT="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "${SCRIPT}")/.."

export GPU_SUITE_DEVICE="${GPU_SUITE_DEVICE:-cuda}"
DEVICE="${GPU_SUITE_DEVICE}"
RESULTS="${GPU_SUITE_RESULTS:-outputs/gpu_suite}"   # emptied at the start
[[ "${RESULTS}" == /* ]] || RESULTS="${PWD}/${RESULTS}"
export SOLO_BENCHMARKS_MD="${RESULTS}/benchmarks.md"
export GPU_SUITE_REASON="${RESULTS}/.reason"
export PYTHONUNBUFFERED=1 TORCH_DEVICE_BACKEND_AUTOLOAD="${TORCH_DEVICE_BACKEND_AUTOLOAD:-0}"
PYTHON="${PYTHON:-.venv/bin/python}"
[[ -x "${PYTHON}" ]] || PYTHON=python3
export PYTHON

# The whole run once more under tee, so that the log reaches $OUT as it is written (a run stopped from outside
# keeps what it printed).
if [[ "${1:-}" != --section && -z "${GPU_SUITE_TEED:-}" ]]; then
    rm -rf "${RESULTS}"
    mkdir -p "${RESULTS}"
    log="${OUT:-${RESULTS}}/gpu_suite.log"
    GPU_SUITE_TEED=1 bash "${SCRIPT}" "$@" 2>&1 | tee "${log}"
    exit "${PIPESTATUS[0]}"
fi
export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"

# Per device: the section's limit and the least time it is started with (seconds), and its sizes.
declare -A CAP MIN
if [[ "${DEVICE}" == cpu ]]; then
    BUDGET="${GPU_SUITE_BUDGET:-1500}"
    CAP=([forward]=150 [train_step]=200 [train_cli]=200 [export]=120 [deploy]=300 [forward_post]=200 [positives]=150
         [compile]=300 [deploy_compile]=300)
    MIN=([forward]=30 [train_step]=30 [train_cli]=30 [export]=30 [deploy]=30 [forward_post]=30 [positives]=30
         [compile]=30 [deploy_compile]=30)
    FORWARD=(benchmarks/inference_mode.py --model solov2_light_r18 --shape 128 160 --iters 1 --threads 2)
    TRAIN_STEP=(benchmarks/train_throughput.py --cases light_r18 --batch 1 --warmup 0 --steps 1 --threads 2)
    POSITIVES=(benchmarks/train_throughput.py --positives --cases light_r18 --batch 1 --instances 2 --warmup 0
               --steps 1 --threads 2)
    FORWARD_POST=(benchmarks/solov2_forward.py --models light_r50 --pairs-post 100 --iters 1 --threads 2)
    CLI_ITERS=14       # the full run
    STOP_ITERS=14      # the run stopped by SIGTERM (a CPU step takes about half a second)
    DEPLOY=(model=solov2_tiny deploy.batch_sizes=[1,2] deploy.num_images=4 deploy.benchmark.iters=1
            deploy.benchmark.warmup=0 deploy.benchmark.e2e_images=2)
else
    BUDGET="${GPU_SUITE_BUDGET:-480}"
    # Measured on the H200 (2026-12-04, torch 2.11.0+cu130): forward 14 s, train_step 118 s, train_cli 57 s, export
    # 12-14 s, deploy 109-124 s, forward_post 7 s, positives 14 s, compile 50 s (torch.compile of R50 32 s, cold
    # inductor cache); preflight with the wheels' install about 12 s. Every section but deploy_compile in one call: about 415 s (deploy_compile: a second call).
    CAP=([forward]=120 [train_step]=200 [train_cli]=150 [export]=90 [deploy]=240 [forward_post]=90 [positives]=90
         [compile]=200 [deploy_compile]=200)
    MIN=([forward]=40 [train_step]=150 [train_cli]=90 [export]=30 [deploy]=150 [forward_post]=30 [positives]=30
         [compile]=80 [deploy_compile]=100)
    FORWARD=(benchmarks/inference_mode.py --model solov2_r50 --shape 800 1216 --iters 20)
    TRAIN_STEP=(benchmarks/train_throughput.py --cases r50 light_r50 --batch 2 8 --warmup 3 --steps 8)
    POSITIVES=(benchmarks/train_throughput.py --positives --cases r50 --batch 2 --instances 8 --warmup 2 --steps 5)
    FORWARD_POST=(benchmarks/solov2_forward.py --iters 10 --pairs-post 100 500 1500)
    CLI_ITERS=30       # the full run
    STOP_ITERS=null    # the run stopped by SIGTERM: its 2 epochs (98 iterations), so that it is still running
    # the synthetic val split has 24 images (conf/data/synthetic.yaml: num_val)
    DEPLOY=(model=solov2 deploy.batch_sizes=[1,8] deploy.num_images=24 deploy.benchmark.iters=5
            deploy.benchmark.warmup=1 deploy.benchmark.e2e_images=8)
fi
SECTIONS=(forward train_step train_cli export deploy forward_post positives compile deploy_compile)

reason() {  # reason TEXT: the one line a failing section is summarised by
    printf '%s\n' "$*" >"${GPU_SUITE_REASON}"
}

step() {  # step PROGRAM ARGS...: run it with the suite's Python; on failure its last output line is the reason
    local tmp="${RESULTS}/.step.log"
    "${PYTHON}" "$@" 2>&1 | tee "${tmp}"
    local rc=${PIPESTATUS[0]}
    if ((rc)); then
        reason "$1 exited ${rc}: $(grep -v '^[[:space:]]*$' "${tmp}" | tail -n 1 | cut -c1-300)"
    fi
    return "${rc}"
}

# --- sections: section_NAME, each run in its own bash under timeout; a non-zero status is a FAIL ---

section_forward() {
    step "${FORWARD[@]}" --device "${DEVICE}" --precision fp32 fp16 bf16
}

section_train_step() {
    step "${TRAIN_STEP[@]}" --device "${DEVICE}"
}

section_train_cli() {
    local run="${RESULTS}/train_1p" stop="${RESULTS}/train_1p_stop"
    local args=(+experiment=1p data=synthetic model=solov2_light_r18 model.pretrained=none
        model.backbone.frozen_stages=-1 model.backbone.norm_eval=false runtime.device="${DEVICE}"
        train.epochs=2 train.eval_interval=0 train.eval_at_end=false train.plots=false train.progress=plain)
    step train.py "${args[@]}" train.max_iters="${CLI_ITERS}" run_dir="${run}" || return 1
    grep -q "runtime.fixed_shapes=npu: the fixed NPU shapes are not used on" "${run}/train.log" \
        || { reason "train.log does not say that the fixed NPU shapes are lifted"; return 1; }
    step -c "import json, math, sys; s = json.load(open('${run}/summary.json')); print('summary:', s['status'], \
s['iterations'], 'iterations, final loss', s['final_loss'], 'FPS', s['fps']); \
sys.exit(not (s['status'] == 'ok' and math.isfinite(s['final_loss'])))" || return 1
    echo "ok: train.py +experiment=1p on ${DEVICE}"

    # SIGTERM: stop a run within 0.2 s of its first checkpoint (iteration 5); on a GPU it may run its 2 epochs
    # (STOP_ITERS), so that it cannot end before the signal comes.
    local iters="${STOP_ITERS}"
    "${PYTHON}" train.py "${args[@]}" train.max_iters="${iters}" run_dir="${stop}" train.checkpoint_interval_iters=5 &
    local pid=$!
    while [[ ! -f "${stop}/checkpoints/last.pth" ]] && kill -0 "${pid}" 2>/dev/null; do
        sleep 0.2
    done
    if ! kill -TERM "${pid}" 2>/dev/null; then
        wait "${pid}"
        reason "the run to stop ended (exit $?) before SIGTERM could be sent"
        return 1
    fi
    wait "${pid}"
    local status=$?
    [[ ${status} -eq 143 ]] || { reason "after SIGTERM train.py exited ${status}, not 143"; return 1; }
    grep -q "state saved" "${stop}/train.log" || { reason "train.log does not say the state was saved"; return 1; }
    step train.py "${args[@]}" train.max_iters="${iters}" run_dir="${stop}" resume=auto || return 1
    grep -q "resumed from" "${stop}/train.log" || { reason "train.log does not say the run resumed"; return 1; }
    echo "ok: SIGTERM stopped the run with last.pth saved (exit 143) and resume=auto finished it"
}

# The model on the device, exported; the example batch follows the model's device (solo_npu/deploy/export.py:
# module_example). TorchScript runs there, ONNX Runtime on the CPU (the CPU provider: onnxruntime-gpu is not
# installed). A random model's scores are all 0, and its padding slots hold arbitrary ties, so the head is drawn as
# benchmarks/solov2_forward.py does (make_lively: scores around 0.5) and the model's own comparison
# (ModelAdapter.compare: SOLOv2's compare_outputs) checks the slots the reference fills.
section_export() {
    "${PYTHON}" - <<'PY'
import os
import sys
import tempfile

import onnxruntime as ort
import torch

sys.path.insert(0, "benchmarks")
from solov2_forward import build, make_lively  # noqa: E402

from solo_npu.deploy.adapters import ModelAdapter  # noqa: E402
from solo_npu.deploy.export import export_onnx, export_torchscript, module_example, slim_onnx  # noqa: E402
from solo_npu.runtime import resolve_device  # noqa: E402


def fail(text: str) -> None:
    with open(os.environ["GPU_SUITE_REASON"], "w") as f:
        f.write(text + "\n")
    raise SystemExit(text)


info = resolve_device(os.environ["GPU_SUITE_DEVICE"])
torch.backends.cudnn.allow_tf32 = False  # full fp32 on CUDA, so that ONNX Runtime on the CPU meets fp32 tolerances
torch.backends.cuda.matmul.allow_tf32 = False
torch.manual_seed(0)
model = build("solov2_tiny", num_classes=3)
make_lively(model)
adapter = ModelAdapter(model)
module = adapter.export_module(model).to(info.device)
example = module_example(module, 1, (128, 160))
if example.device.type != info.type:
    fail(f"the example batch is on {example.device}, the model on {info.device}")
with tempfile.TemporaryDirectory() as tmp:
    ts = torch.jit.load(str(export_torchscript(module, example, f"{tmp}/m.ts")), map_location=info.device)
    path = export_onnx(module, example, f"{tmp}/m.onnx", adapter.output_names, 13)
    slim_onnx(path)
    with torch.no_grad():
        ref = [t.cpu().numpy() for t in module(example)]
        traced = [t.cpu().numpy() for t in ts(example)]
    onnx_out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"input": example.cpu().numpy()})
    # the same model traced on the CPU, loaded onto the device: a traced graph must not keep the tracing device
    # (solo_npu/models/ops/factories.py), so every output comes back on the device and equal to the model there
    module_cpu = adapter.export_module(model).to("cpu")
    cpu_ts = torch.jit.load(str(export_torchscript(module_cpu, module_example(module_cpu, 1, (128, 160)),
                                                   f"{tmp}/cpu.ts")), map_location=info.device)
    with torch.no_grad():
        moved = cpu_ts(example)
    off = sorted({str(t.device) for t in moved if t.device.type != info.type})
    if off:
        fail(f"the CPU-traced TorchScript loaded on {info.device} returned outputs on {off}")
    from_cpu = [t.cpu().numpy() for t in moved]
names = adapter.output_names
reference = dict(zip(names, ref))
limits = {"scores_max_abs": 1e-4, "masks_max_abs": 1e-3, "labels_mismatch": 0}
for what, outputs in (("TorchScript", traced), ("ONNX Runtime (CPU)", onnx_out),
                      (f"TorchScript traced on the CPU, run on {info.device}", from_cpu)):
    stats = adapter.compare(reference, dict(zip(names, outputs)))
    print(f"{what} against the model on {info.device}: {stats}")
    if not stats.get("valid"):
        fail(f"{what}: the reference has no valid slot to compare")
    over = {k: v for k, v in stats.items() if k in limits and v > limits[k]}
    if over:
        fail(f"{what} differs from the model on {info.device}: {over} (limits {limits})")
print(f"ok: TorchScript and ONNX exported from the model on {info.device}, and TorchScript traced on the CPU, "
      "match it on the valid slots")
PY
}

section_deploy() {
    local run="${RESULTS}/deploy"
    step deploy.py runtime.device="${DEVICE}" run_dir="${run}" "${DEPLOY[@]}" deploy.infer.batch_sizes=[1]
}

section_deploy_compile() {  # not measured on a GPU yet: expected 1-2 minutes (one R50 compile, one batch size)
    local run="${RESULTS}/deploy_compile"
    step deploy.py runtime.device="${DEVICE}" run_dir="${run}" "${DEPLOY[@]}" deploy.batch_sizes=[1] \
        deploy.infer.batch_sizes=[1] deploy.backends=[pytorch] deploy.export_formats=[torchscript] \
        deploy.pytorch.compile=true || return 1
    grep -q -- "- pytorch: under torch.compile" "${run}/report.md" \
        || { reason "the report does not say the pytorch backend ran under torch.compile"; return 1; }
}

section_forward_post() {
    step "${FORWARD_POST[@]}" --device "${DEVICE}"
}

section_positives() {
    step "${POSITIVES[@]}" --device "${DEVICE}"
}

section_compile() {  # rewrites the forward section with one more row (same heading)
    step "${FORWARD[@]}" --device "${DEVICE}" --precision fp32 fp16 bf16 --compile
}

if [[ "${1:-}" == --section ]]; then
    "section_$2"
    exit $?
fi

# --- the run ---

START=${SECONDS}
SUMMARY="${RESULTS}/summary.txt"
failed=0

save_results() {  # copy what there is to $OUT (at most 8 files come back from it)
    [[ -n "${OUT:-}" ]] || return 0
    cp "${SUMMARY}" "${OUT}/gpu_suite_summary.txt"
    cp "${SOLO_BENCHMARKS_MD}" "${OUT}/benchmarks.md"
    [[ -f "${RESULTS}/deploy/report.md" ]] && cp "${RESULTS}/deploy/report.md" "${OUT}/deploy_report.md"
    [[ -f "${RESULTS}/deploy_compile/report.md" ]] && cp "${RESULTS}/deploy_compile/report.md" \
        "${OUT}/deploy_compile_report.md"
    return 0
}

summarise() {  # summarise LINE: the log and the summary file
    echo "${1}"
    echo "${1}" >>"${SUMMARY}"
}

stop() {  # stop TEXT: preflight failed; nothing else runs
    summarise "STOP preflight: $*"
    save_results
    exit 2
}

preflight() {
    command -v timeout >/dev/null || stop "timeout (GNU coreutils) is not installed"
    local missing
    missing=$("${PYTHON}" -c "import importlib.util as u; print(' '.join(m for m in ('hydra', 'omegaconf', \
'antlr4', 'pycocotools', 'onnxslim') if u.find_spec(m) is None))") || stop "${PYTHON} does not run"
    if [[ -n "${missing}" ]]; then
        ls .whl/*.whl >/dev/null 2>&1 || stop "missing Python packages (${missing}) and no wheels in .whl/: run \
make gpu-wheels here and name .whl in the device call's carry"
        echo "installing .whl/ (missing: ${missing})"
        if "${PYTHON}" -c "import os, sys, sysconfig; sys.exit(not os.access(sysconfig.get_paths()['purelib'], os.W_OK))"
        then  # into the interpreter's environment, where pip checks every requirement against what is installed
            timeout -k 10 180 "${PYTHON}" -m pip install -q --no-index --find-links .whl --no-cache-dir .whl/*.whl \
                || stop "pip install --no-index --find-links .whl failed (its error is above)"
        else  # a read-only environment: into /tmp/site. A --target install ignores what is installed (pypa/pip
              # src/pip/_internal/commands/install.py: options.ignore_installed = True), so --no-deps; the imports
              # below find a missing requirement
            timeout -k 10 180 "${PYTHON}" -m pip install -q --no-index --find-links .whl --no-cache-dir --no-deps \
                --target /tmp/site .whl/*.whl || stop "pip install --target /tmp/site from .whl failed (above)"
            export PYTHONPATH="/tmp/site:${PYTHONPATH}"
        fi
    fi
    rm -f "${GPU_SUITE_REASON}"
    timeout -k 10 120 "${PYTHON}" - <<'PY' || stop "$(cat "${GPU_SUITE_REASON}" 2>/dev/null || echo "the check exited $?")"
import importlib
import os
import platform
import time


def fail(text: str) -> None:
    with open(os.environ["GPU_SUITE_REASON"], "w") as f:
        f.write(text + "\n")
    raise SystemExit(text)


for name in ("torch", "numpy", "cv2", "hydra", "omegaconf", "pycocotools.mask", "pycocotools.cocoeval", "onnx",
             "onnxruntime", "onnxslim", "solo_npu.engine.trainer", "solo_npu.deploy.pipeline"):
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any failure is one line
        fail(f"import {name} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
import onnxruntime  # noqa: E402
import torch  # noqa: E402

device = os.environ["GPU_SUITE_DEVICE"]
if device == "cuda":
    if not torch.cuda.is_available():
        fail(f"torch.cuda.is_available() is False (torch {torch.__version__}, CUDA build {torch.version.cuda})")
    name = torch.cuda.get_device_name(0)
    if float((torch.ones(1024, device="cuda") * 2).sum()) != 2048.0:
        fail(f"a CUDA kernel on {name} gave a wrong sum")
    # about 2 s of matrix products before the first section: on the H200 the first call's forward section, run
    # right after the start, read 14.9 ms where a later call's read 10.3 ms (idle clocks the likely cause)
    a = torch.randn(4096, 4096, device="cuda")
    warm_until = time.perf_counter() + 2.0
    while time.perf_counter() < warm_until:
        a = (a @ a).clamp_(-1, 1)
    torch.cuda.synchronize()
    detail = (f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
              f"cudnn.benchmark={torch.backends.cudnn.benchmark}, cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
              f"cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}")
elif device == "cpu":
    from solo_npu.runtime import describe_machine

    name, detail = f"cpu ({describe_machine().split(', torch')[0]})", "dry run"
else:
    fail(f"GPU_SUITE_DEVICE={device}: cuda or cpu")
with open(os.path.join(os.path.dirname(os.environ["GPU_SUITE_REASON"]), "device.txt"), "w") as f:
    f.write(name + "\n")
print(f"device {device}: {name}; Python {platform.python_version()}, torch {torch.__version__} ({detail}), "
      f"onnxruntime {onnxruntime.__version__} {onnxruntime.get_available_providers()}")
PY
}

echo "gpu_suite: device ${DEVICE}, budget ${BUDGET} s, $(date -u '+%Y-%m-%d %H:%M:%S UTC'), ${PYTHON}"
cp docs/benchmarks.md "${SOLO_BENCHMARKS_MD}"
preflight
summarise "gpu_suite on ${DEVICE}: $(cat "${RESULTS}/device.txt"), $(date -u +%Y-%m-%d), budget ${BUDGET} s"
save_results

sections=("$@")
[[ ${#sections[@]} -gt 0 ]] || sections=("${SECTIONS[@]}")
for name in "${sections[@]}"; do
    if [[ -z "${CAP[${name}]:-}" ]]; then
        summarise "FAIL ${name}: no such section (${SECTIONS[*]})"
        failed=1
        continue
    fi
    left=$((BUDGET - (SECONDS - START)))
    cap="${CAP[${name}]}" least="${MIN[${name}]}"
    if ((left < least)); then
        summarise "SKIP ${name}: ${left} s left of the ${BUDGET} s budget, it starts with at least ${least} s"
        continue
    fi
    limit=$((cap < left ? cap : left))
    echo "=== ${name} (limit ${limit} s; ${left} s of the budget left) $(date -u +%H:%M:%S)"
    rm -f "${GPU_SUITE_REASON}"
    t0=${SECONDS}
    timeout -k 15 "${limit}" bash "${SCRIPT}" --section "${name}"
    rc=$?
    took=$((SECONDS - t0))
    if ((rc == 0)); then
        summarise "PASS ${name} (${took} s)"
    elif ((rc == 124 || rc == 137)); then
        summarise "FAIL ${name} (${took} s): timed out after its ${limit} s limit"
        failed=1
    else
        summarise "FAIL ${name} (${took} s): $(cat "${GPU_SUITE_REASON}" 2>/dev/null || echo "exit ${rc}")"
        failed=1
    fi
    save_results
done
echo "=== summary ($((SECONDS - START)) s)"
cat "${SUMMARY}"
exit "${failed}"
