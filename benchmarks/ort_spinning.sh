#!/usr/bin/env bash
# ONNX Runtime's spinning threads against the deploy pipeline's end-to-end rate: the demo model (a finished
# `make demo` run) exported once, then the benchmark stage with deploy.onnxruntime.allow_spinning=null (onnxruntime's
# default: its threads busy-wait after each run) and =false, alternating, REPEATS times each; eager PyTorch in the
# same runs for reference. Prints one markdown row per run.
#   bash benchmarks/ort_spinning.sh [TRAIN_RUN_DIR (default outputs/demo)] [REPEATS (default 2)]
# Environment: PYTHON (default .venv/bin/python), OUT (default /tmp/ort_spinning: the deploy run directory).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN="${1:-outputs/demo}"
REPEATS="${2:-2}"
PYTHON="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-/tmp/ort_spinning}"
ckpt="${RUN}/checkpoints/best.pth"
[[ -f "${ckpt}" ]] || ckpt="${RUN}/checkpoints/last.pth"
[[ -f "${ckpt}" ]] || { echo "no checkpoint under ${RUN}/checkpoints: run make demo first" >&2; exit 1; }
[[ -f "${RUN}/config.yaml" ]] || { echo "no ${RUN}/config.yaml: give a training run directory" >&2; exit 1; }
# The model and data settings of the training run, as scripts/demo.sh passes them to deploy.py.
mapfile -t MODEL_OVERRIDES < <("${PYTHON}" scripts/deploy_overrides.py "${RUN}/config.yaml")
COMMON=(model=solov2_light_r18 data=synthetic "checkpoint=${ckpt}" "${MODEL_OVERRIDES[@]}" runtime.device=cpu
        "run_dir=${OUT}" "deploy.batch_sizes=[1]" "deploy.backends=[pytorch,onnxruntime]" deploy.benchmark.iters=20)
"${PYTHON}" deploy.py "${COMMON[@]}" "stages=[export,preprocess]" > "${OUT}.export.log" 2>&1 \
    || { echo "the export failed: see ${OUT}.export.log" >&2; exit 1; }
echo "| run | allow_spinning | backend | latency mean (ms) | model img/s | e2e img/s |"
echo "| --- | --- | --- | ---: | ---: | ---: |"
for ((rep = 1; rep <= REPEATS; rep++)); do
    for spin in null false; do
        "${PYTHON}" deploy.py "${COMMON[@]}" "stages=[benchmark]" "deploy.onnxruntime.allow_spinning=${spin}" \
            > "${OUT}.bench.log" 2>&1 || { echo "the benchmark failed: see ${OUT}.bench.log" >&2; exit 1; }
        "${PYTHON}" - "${OUT}/benchmark/benchmark.json" "${rep}" "${spin}" <<'PY'
import json
import sys

bench = json.load(open(sys.argv[1]))
for row in bench["rows"]:
    print(f"| {sys.argv[2]} | {sys.argv[3]} | {row['backend']} | {row['mean_ms']:.1f} | {row['throughput']:.1f} | "
          f"{row['e2e_throughput']:.1f} |")
PY
    done
done
