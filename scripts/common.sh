#!/usr/bin/env bash
# Shared by the ModelZoo-style scripts: argument parsing, dataset checks, running train.py and the
# summary lines. Sourced, not run. Every script accepts:
#   --data_path=PATH   COCO layout (annotations/instances_{train,val}2017.json, train2017/, val2017/); required
#   --device_id=N      device index (default 0); logs go to output/N/train_N.log
#   --batch_size=N     images per device
#   --epochs=N         training epochs
#   --device=KIND      auto | npu | cuda | cpu (default auto)
#   --checkpoint=PATH  weights (train_eval_1p.sh, train_finetune_1p.sh)
#   key=value          any further Hydra override of train.py, passed through last
set -uo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "${SCRIPT_DIR}/.." && pwd)"
PYTHON="${PYTHON:-python3}"
Network="SOLOv2_for_PyTorch"

data_path=""
device_id=0
batch_size=""
epochs=""
device="auto"
checkpoint=""
EXTRA=()

parse_args() {
    while [[ $# -gt 0 ]]; do
        local arg="$1" value=""
        case "${arg}" in
            --*=*) value="${arg#*=}"; arg="${arg%%=*}" ;;
            --*) if [[ $# -gt 1 ]]; then value="$2"; shift; fi ;;
        esac
        case "${arg}" in
            --data_path) data_path="${value}" ;;
            --device_id) device_id="${value}" ;;
            --batch_size) batch_size="${value}" ;;
            --epochs) epochs="${value}" ;;
            --device) device="${value}" ;;
            --checkpoint) checkpoint="${value}" ;;
            --*) echo "[Error] unknown option ${arg}" >&2; exit 1 ;;
            *=*) EXTRA+=("${arg}") ;;
            *) echo "[Error] unexpected argument ${arg} (use --name=value or a key=value override)" >&2; exit 1 ;;
        esac
        shift
    done
    if [[ -z "${data_path}" ]]; then
        echo "[Error] para \"data_path\" must be config"
        exit 1
    fi
    local missing=()
    for f in annotations/instances_train2017.json annotations/instances_val2017.json train2017 val2017; do
        [[ -e "${data_path}/${f}" ]] || missing+=("${f}")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        echo "[Error] data_path \"${data_path}\" is not a COCO layout: missing ${missing[*]}"
        exit 1
    fi
    data_path="$(cd "${data_path}" && pwd)"  # train.py runs from the repository root
    if [[ -n "${checkpoint}" ]]; then
        if [[ ! -f "${checkpoint}" ]]; then
            echo "[Error] checkpoint \"${checkpoint}\" not found"
            exit 1
        fi
        checkpoint="$(cd "$(dirname "${checkpoint}")" && pwd)/$(basename "${checkpoint}")"
    fi
    if ! [[ "${device_id}" =~ ^[0-9]+$ ]]; then
        echo "[Error] --device_id must be a number, got \"${device_id}\""
        exit 1
    fi
}

require_checkpoint() {
    if [[ -z "${checkpoint}" ]]; then
        echo "[Error] para \"checkpoint\" must be config"
        exit 1
    fi
}

setup_env() {
    export ASCEND_DEVICE_ID="${device_id}"
    if [[ -d /usr/local/Ascend ]]; then
        # shellcheck source=/dev/null
        source "${SCRIPT_DIR}/env_npu.sh"
    fi
    OUTPUT_DIR="${OUTPUT_DIR:-${PWD}/output}/${device_id}"
    rm -rf "${OUTPUT_DIR}"
    mkdir -p "${OUTPUT_DIR}"
    RUN_DIR="${OUTPUT_DIR}/run"
    LOG_FILE="${OUTPUT_DIR}/train_${device_id}.log"
}

# run_train OVERRIDE...: train.py with the common overrides, then the script's, then the user's.
run_train() {
    local args=("data.root='${data_path}'" "data.generate=false" "runtime.device=${device}" "run_dir='${RUN_DIR}'")
    [[ -n "${batch_size}" ]] && args+=("train.batch_size=${batch_size}")
    [[ -n "${epochs}" ]] && args+=("train.epochs=${epochs}")
    [[ -n "${checkpoint}" ]] && args+=("checkpoint='${checkpoint}'")
    echo "${PYTHON} train.py $* ${args[*]} ${EXTRA[*]}" > "${LOG_FILE}"
    (cd "${REPO_DIR}" && "${PYTHON}" train.py "$@" "${args[@]}" train.progress=plain "${EXTRA[@]}") >> "${LOG_FILE}" 2>&1
    local rc=$?
    if [[ ${rc} -ne 0 ]]; then
        tail -n 30 "${LOG_FILE}"
        echo "[Error] train.py failed with exit code ${rc}; full log: ${LOG_FILE}"
        exit "${rc}"
    fi
}

# summarize MODE: read summary.json, print the ModelZoo lines, write <CaseName>.log. MODE: acc | perf | eval
summarize() {
    local mode="$1"
    local summary="${RUN_DIR}/summary.json"
    if [[ ! -f "${summary}" ]]; then
        echo "[Error] ${summary} is missing; see ${LOG_FILE}"
        exit 1
    fi
    # shellcheck disable=SC2046
    read -r FPS AP LOSS E2E RANKS BS DEV ITERS <<< "$("${PYTHON}" - "${summary}" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
def num(v, fmt):
    return "None" if v is None else format(float(v), fmt)
print(num(s.get("fps"), ".3f"), num(s.get("segm_ap"), ".4f"), num(s.get("final_loss"), ".4f"),
      int(round(s.get("duration_sec", 0))), s.get("world_size", 1), s.get("batch_size", 0),
      s.get("device", "unknown"), s.get("iterations", 0))
PY
)"
    local total_bs=$(( BS * RANKS ))
    local step_ms="None"
    if [[ "${FPS}" != "None" ]] && "${PYTHON}" -c "import sys; sys.exit(float('${FPS}') <= 0)"; then
        step_ms=$("${PYTHON}" -c "print(f'{${total_bs} * 1000 / ${FPS}:.2f}')")
    fi
    local CaseName="${Network}_bs${total_bs}_${RANKS}p_${mode}"
    echo "------------------ Final result ------------------"
    if [[ "${mode}" != "eval" ]]; then
        echo "Final Performance images/sec : ${FPS}"
    fi
    if [[ "${mode}" != "perf" ]]; then
        echo "Final Train Accuracy : ${AP}"
    fi
    echo "E2E Training Duration sec : ${E2E}"
    {
        echo "Network = ${Network}"
        echo "RankSize = ${RANKS}"
        echo "BatchSize = ${total_bs}"
        echo "DeviceType = ${DEV}_$(uname -m)"
        echo "CaseName = ${CaseName}"
        echo "ActualFPS = ${FPS}"
        echo "TrainingTime = ${step_ms}"
        echo "TrainAccuracy = ${AP}"
        echo "ActualLoss = ${LOSS}"
        echo "E2ETrainingTime = ${E2E}"
    } > "${OUTPUT_DIR}/${CaseName}.log"
    echo "Summary: ${OUTPUT_DIR}/${CaseName}.log, log: ${LOG_FILE}"
}
