#!/usr/bin/env bash
# Shared by the ModelZoo-style scripts: argument parsing, dataset checks, running train.py and the
# summary lines. Sourced, not run. test/ at the repository root is a link to this folder, so the commands of the
# Ascend ModelZoo SOLOv2 guide work as written from the repository root (bash ./test/train_full_1p.sh
# --data_path=./data/coco, source test/env_npu.sh); SCRIPT_DIR is then .../test and REPO_DIR its parent, the
# repository. Output goes to output/<device_id> under the directory the script is run from (OUTPUT_DIR=DIR in the
# environment: DIR/<device_id>). Every script accepts:
#   --data_path=PATH   COCO layout (annotations/instances_{train,val}2017.json, train2017/, val2017/); required.
#                      train_eval_1p.sh needs the val split only (COCO_SPLITS="val").
#   --device_id=N      device index; logs go to output/N/train_N.log (train_eval_1p.sh: output/N/eval_N.log).
#                      Which index is used:
#                        --device_id, else a pre-set ASCEND_DEVICE_ID, else 0
#                      (the ModelZoo scripts let a pre-set ASCEND_DEVICE_ID win; here the command line does, and
#                      a different ASCEND_DEVICE_ID is reported). 1p scripts run on that device (runtime.device=
#                      <kind>:N); 8p scripts use devices 0..7 and N only names the output directory.
#   --apex=O1|O0       O1: mixed precision with a static loss scale of 128; O0: fp32 (CaseName gets _fp32_).
#                      Without it the experiment decides (1p, 8p and performance runs are O1).
#   --batch_size=N     images per device for training (train_eval_1p.sh evaluates one image per batch)
#   --epochs=N         training epochs; --train_epochs=N (the ModelZoo templates' name) is the same
#   --device=KIND      npu (default) | auto | cuda | cpu. These are NPU scripts: without an NPU (torch_npu missing
#                      or failing to import, no device visible) a default run stops with the runtime's error instead
#                      of training elsewhere; auto falls back to CUDA, then CPU.
#   --checkpoint=PATH  weights (train_eval_1p.sh, train_finetune_1p.sh); --ckpt_path=PATH and --pth_path=PATH (the
#                      ModelZoo templates' names) are the same. Without it, the last checkpoint of a full training
#                      run for the device id; train_eval_1p.sh: of the latest training run, a fine-tuning included
#                      (see require_checkpoint)
#   --pretrained=PATH  ImageNet backbone weights (model.pretrained); "none" trains the backbone from scratch;
#                      --more_path1=PATH (the ModelZoo templates' pretrained weights) is the same
#   key=value          any further Hydra override of train.py, passed through last
# Every option may also be given as --name VALUE (a bare option without its value is an error). Another option
# (e.g. --conda_name, --profiling,
# passed by ModelZoo automation), as --name=value, --name value or a bare --name, is ignored with a warning, as the
# ModelZoo scripts' `for para in $*` loops ignore what they do not match; the word after a bare unknown --name is its
# value unless it is another --option or a key=value override.
# An existing output/N is renamed to output/N.<date>-<time> (never deleted): checkpoints of an interrupted run
# stay there for resume=PATH. A --checkpoint or --pretrained file inside it is followed there.
set -uo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "${SCRIPT_DIR}/.." && pwd)"
# The interpreter: $PYTHON when set; else python3 of an activated virtualenv; else the repository's .venv (what
# `make install` makes, as the demo uses it); else python3 on PATH. run_train checks that it can import the
# project's dependencies before anything else runs (one line instead of train.py's ModuleNotFoundError traceback).
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python3
    [[ -z "${VIRTUAL_ENV:-}" && -x "${REPO_DIR}/.venv/bin/python" ]] && PYTHON="${REPO_DIR}/.venv/bin/python"
fi
Network="SOLOv2"  # the Network of the Ascend ModelZoo SOLOv2 scripts, which starts every CaseName

data_path=""
device_id=""
batch_size=""
epochs=""
device="npu"
checkpoint=""
pretrained=""
apex=""
precision_mode=""
EXTRA=()
CHECKPOINT_NOTE=""  # where --checkpoint's file came from, when setup_env should say it
PASSED_OVER=""      # a full training run's checkpoint that the default of train_eval_1p.sh passed over
UNFINISHED=""       # why the default checkpoint's training run is not known to have ended (its summary.json)
OUTPUT_ROOT="${OUTPUT_DIR:-output}"  # output/<device_id> holds a run's output
[[ "${OUTPUT_ROOT}" == /* ]] || OUTPUT_ROOT="${PWD}/${OUTPUT_ROOT}"  # train.py runs from the repository root
COCO_SPLITS="train val"  # the splits --data_path must hold
LOG_STEM="train"         # the log is output/<device_id>/<LOG_STEM>_<device_id>.log; evaluation sets "eval"
# The options parse_args takes, which may also be given as --name VALUE.
OPTIONS=" --data_path --device_id --batch_size --epochs --train_epochs --device --checkpoint --ckpt_path --pth_path \
--pretrained --more_path1 --apex --precision_mode "

# abs_file NAME PATH: sets ABS_FILE to PATH made absolute (train.py runs from the repository root); exits when
# PATH is not a file.
abs_file() {
    if [[ ! -f "$2" ]]; then
        echo "[Error] $1 \"$2\" not found"
        exit 1
    fi
    ABS_FILE="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
}

parse_args() {
    local device_id_arg=""
    while [[ $# -gt 0 ]]; do
        local given="$1" arg="$1" value=""
        case "${arg}" in
            --*=*) value="${arg#*=}"; arg="${arg%%=*}" ;;
            --*)
                if [[ "${OPTIONS}" == *" ${arg} "* ]]; then
                    if [[ $# -lt 2 || "$2" == --* ]]; then
                        echo "[Error] ${arg} needs a value (${arg}=VALUE or ${arg} VALUE)"
                        exit 1
                    fi
                    value="$2"; shift
                elif [[ $# -gt 1 && "$2" != --* && "$2" != *=* ]]; then
                    given="${arg} $2"; shift  # an unknown option's value (--conda_name py38): ignored with it
                fi ;;
        esac
        case "${arg}" in
            --data_path) data_path="${value}" ;;
            --device_id) device_id_arg="${value}" ;;
            --batch_size) batch_size="${value}" ;;
            --epochs|--train_epochs) epochs="${value}" ;;
            --device) device="${value}" ;;
            --checkpoint|--ckpt_path|--pth_path) checkpoint="${value}" ;;
            --pretrained|--more_path1) pretrained="${value}" ;;
            --apex) apex="${value}" ;;
            --precision_mode) precision_mode="${value}" ;;
            --*) echo "[Warning] unknown option ${given} ignored" ;;
            *=*) EXTRA+=("${arg}") ;;
            *) echo "[Error] unexpected argument ${arg} (use --name=value or a key=value override)" >&2; exit 1 ;;
        esac
        shift
    done
    if [[ -z "${data_path}" ]]; then
        echo "[Error] para \"data_path\" must be config"
        exit 1
    fi
    local missing="" split f
    for split in ${COCO_SPLITS}; do
        for f in "annotations/instances_${split}2017.json" "${split}2017"; do
            [[ -e "${data_path}/${f}" ]] || missing+=" ${f}"
        done
    done
    if [[ -n "${missing}" ]]; then
        echo "[Error] data_path \"${data_path}\" is not a COCO layout: missing${missing}"
        exit 1
    fi
    data_path="$(cd "${data_path}" && pwd)"  # train.py runs from the repository root
    if [[ -n "${checkpoint}" ]]; then
        abs_file checkpoint "${checkpoint}"
        checkpoint="${ABS_FILE}"
    fi
    case "${pretrained}" in
        ""|none|None|null) ;;
        *) abs_file pretrained "${pretrained}"; pretrained="${ABS_FILE}" ;;
    esac
    # --precision_mode as the ModelZoo script template reads it: must_keep_origin_dtype trains in fp32, any other value
    # with mixed precision (e.g. Ascend/ModelZoo-PyTorch train_full_1p.sh templates: if [[ $precision_mode ==
    # "must_keep_origin_dtype" ]];then prec="" else prec="--amp"), i.e. --apex=O0 or O1 here.
    if [[ -n "${precision_mode}" ]]; then
        local wanted="O1"
        [[ "${precision_mode}" == "must_keep_origin_dtype" ]] && wanted="O0"
        if [[ -n "${apex}" && "${apex}" != "${wanted}" ]]; then
            echo "[Error] --precision_mode=${precision_mode} means --apex=${wanted}, but --apex=${apex} was given"
            exit 1
        fi
        apex="${wanted}"
    fi
    case "${apex}" in
        ""|O0|O1) ;;
        *) echo "[Error] --apex=${apex} is not supported: O1 (mixed precision, loss scale 128) or O0 (fp32)"; exit 1 ;;
    esac
    local env_id="${ASCEND_DEVICE_ID:-}" source="default"
    if [[ -n "${device_id_arg}" ]]; then
        device_id="${device_id_arg}" source="--device_id"
        if [[ -n "${env_id}" && "${env_id}" != "${device_id}" ]]; then
            echo "[Warning] --device_id=${device_id} overrides ASCEND_DEVICE_ID=${env_id}"
        fi
    elif [[ -n "${env_id}" ]]; then
        device_id="${env_id}" source="ASCEND_DEVICE_ID"
    else
        device_id=0
    fi
    if ! [[ "${device_id}" =~ ^[0-9]+$ ]]; then
        echo "[Error] ${source} must be a device number, got \"${device_id}\""
        exit 1
    fi
    echo "device id is ${device_id} (${source})"
}

# latest_training_checkpoint KINDS: sets LATEST_CHECKPOINT to run/checkpoints/last.pth of the latest training run of
# one of the KINDS (config.yaml's experiment_name, an extended regular expression: "1p|8p" for train_full_1p.sh and
# train_full_8p.sh, "1p|8p|finetune" with train_finetune_1p.sh) for the device id: output/<id>, else the earlier
# outputs setup_env moved aside, output/<id>.<date>-<time>[-n], newest first; LATEST_KIND to its experiment_name.
# Sets FULL_CHECKPOINT to the latest such checkpoint of a full training run (1p or 8p; "" when there is none), which
# may be older than LATEST_CHECKPOINT. Fails when there is no checkpoint of the KINDS.
latest_training_checkpoint() {
    local kinds="$1" dir kind
    LATEST_CHECKPOINT="" LATEST_KIND="" FULL_CHECKPOINT=""
    while IFS= read -r dir; do
        [[ -f "${dir}/run/checkpoints/last.pth" ]] || continue
        kind="$(sed -n '/^experiment_name: /{s///p;q;}' "${dir}/run/config.yaml" 2>/dev/null)"
        [[ "${kind}" =~ ^(${kinds})$ ]] || continue
        if [[ -z "${LATEST_CHECKPOINT}" ]]; then
            LATEST_CHECKPOINT="${dir}/run/checkpoints/last.pth" LATEST_KIND="${kind}"
        fi
        if [[ "${kind}" =~ ^(1p|8p)$ ]]; then
            FULL_CHECKPOINT="${dir}/run/checkpoints/last.pth"
            break
        fi
    done < <(
        printf '%s\n' "${OUTPUT_ROOT}/${device_id}"
        for dir in "${OUTPUT_ROOT}/${device_id}".*; do
            if [[ -d "${dir}" ]]; then printf '%s\n' "${dir}"; fi
        done | sort -rV
    )
    [[ -n "${LATEST_CHECKPOINT}" ]]
}

# require_checkpoint [eval]: --checkpoint, else a checkpoint of the device id's training outputs
# (latest_training_checkpoint), as the ModelZoo SOLOv2 scripts default to the training work_dir's latest checkpoint
# (Ascend/ModelZoo-PyTorch, PyTorch/contrib/cv/detection/SOLOv2/test/train_eval_1p.sh:
# MODEL="./work_dirs/solov2_release_r50_fpn_8gpu_1x/latest.pth", train_finetune_1p.sh: --resume_from
# work_dirs/solov2_release_r50_fpn_8gpu_1x/latest.pth); one line and exit when there is none. setup_env prints the
# file used, where setup_env's move has taken it.
#   train_finetune_1p.sh: the last checkpoint of the latest full training run (train_full_1p.sh, train_full_8p.sh),
#     not of an earlier fine-tuning, so that fine-tuning again starts from the same weights.
#   train_eval_1p.sh (eval): the last checkpoint of the latest training run, fine-tuning included. The ModelZoo
#     train_finetune_1p.sh fine-tunes into the training run's work_dir (PyTorch/contrib/cv/detection/SOLOv2/tools/
#     train.py keeps the config's cfg.work_dir, the script passes no --work_dir), so the latest.pth that
#     train_eval_1p.sh evaluates is then the fine-tuned one.
#     When that passes over an older full training run's checkpoint, setup_env says so in a [Warning] line.
require_checkpoint() {
    if [[ -n "${checkpoint}" ]]; then
        return 0
    fi
    local kinds="1p|8p" runs="train_full_1p.sh or train_full_8p.sh"
    if [[ "${1:-}" == eval ]]; then
        kinds="1p|8p|finetune" runs="train_full_1p.sh, train_full_8p.sh or train_finetune_1p.sh"
    fi
    if latest_training_checkpoint "${kinds}"; then
        checkpoint="${LATEST_CHECKPOINT}"
        # train.py writes summary.json when a run ends, its top-level "status" "ok" when it ended as asked
        # (solo_npu/engine/job.py: stopped, interrupted or nonfinite otherwise)
        local summary="${checkpoint%/checkpoints/last.pth}/summary.json" status
        if [[ ! -f "${summary}" ]]; then
            UNFINISHED="it has no summary.json: still running, or killed before it could write one"
        else
            status="$(sed -n 's/^  "status": "\([a-z_]*\)".*/\1/p' "${summary}" | head -n 1)"
            [[ "${status}" == ok ]] || UNFINISHED="its summary.json says status ${status:-unknown}"
        fi
        if [[ "${LATEST_KIND}" == finetune ]]; then
            CHECKPOINT_NOTE="no --checkpoint given: the last checkpoint of the latest training run for device ${device_id}, train_finetune_1p.sh's"
            PASSED_OVER="${FULL_CHECKPOINT}"
        else
            CHECKPOINT_NOTE="no --checkpoint given: the last checkpoint of train_full_1p.sh or train_full_8p.sh for device ${device_id}"
        fi
        return 0
    fi
    echo "[Error] para \"checkpoint\" must be config: give --checkpoint=PATH (no ${OUTPUT_ROOT}/${device_id}/run/checkpoints/last.pth of ${runs}, here or in ${OUTPUT_ROOT}/${device_id}.*)"
    exit 1
}

# setup_env RANKS: RANKS is 1p (the run uses device ${device_id}) or 8p (devices 0..N-1; the id names the output).
setup_env() {
    RUN_KIND="$1"
    export ASCEND_DEVICE_ID="${device_id}"
    case "${device}" in
        cpu|cuda|cuda:*) ;;
        *)  # the CANN environment, as the Ascend ModelZoo scripts source test/env_npu.sh, unless the platform runs
            # them (etp_running_flag=true in the environment: "非平台场景时source 环境变量", every ModelZoo SOLOv2
            # test/train_*.sh), which sets the environment itself
            if [[ "${etp_running_flag:-}" == true ]]; then
                echo "etp_running_flag=true: env_npu.sh is not sourced (the platform sets the environment)"
            else
                # shellcheck source=/dev/null
                source "${SCRIPT_DIR}/env_npu.sh"
            fi ;;
    esac
    OUTPUT_DIR="${OUTPUT_ROOT}/${device_id}"
    if [[ -e "${OUTPUT_DIR}" ]]; then
        local moved n=0
        moved="${OUTPUT_DIR}.$(date +%Y%m%d-%H%M%S)"
        while [[ -e "${moved}$([[ ${n} -gt 0 ]] && echo "-${n}")" ]]; do n=$((n + 1)); done
        [[ ${n} -gt 0 ]] && moved="${moved}-${n}"
        if ! mv "${OUTPUT_DIR}" "${moved}"; then
            echo "[Error] cannot move the previous ${OUTPUT_DIR} aside to ${moved}"
            exit 1
        fi
        echo "previous output moved to ${moved} (continue that run with resume=${moved}/run/checkpoints/last.pth)"
        # a weights file inside the output moved aside (the default checkpoint, or --checkpoint=output/N/...) is
        # read from its new place
        if [[ "${checkpoint}" == "${OUTPUT_DIR}/"* ]]; then
            checkpoint="${moved}/${checkpoint#"${OUTPUT_DIR}/"}"
            [[ -n "${CHECKPOINT_NOTE}" ]] || CHECKPOINT_NOTE="moved with the previous output"
        fi
        if [[ "${pretrained}" == "${OUTPUT_DIR}/"* ]]; then
            pretrained="${moved}/${pretrained#"${OUTPUT_DIR}/"}"
            echo "pretrained: ${pretrained} (moved with the previous output)"
        fi
    fi
    if [[ -n "${CHECKPOINT_NOTE}" ]]; then
        echo "checkpoint: ${checkpoint} (${CHECKPOINT_NOTE})"
    fi
    if [[ -n "${UNFINISHED}" ]]; then
        echo "[Warning] the training run of ${checkpoint} did not finish (${UNFINISHED}): its last save is used" \
            "(--checkpoint=PATH picks another)"
    fi
    if [[ -n "${PASSED_OVER}" ]]; then
        echo "[Warning] evaluating the fine-tuned ${checkpoint}, not the older full training run's ${PASSED_OVER}" \
            "(--checkpoint=${PASSED_OVER} evaluates that one)"
    fi
    mkdir -p "${OUTPUT_DIR}"
    RUN_DIR="${OUTPUT_DIR}/run"
    LOG_FILE="${OUTPUT_DIR}/${LOG_STEM}_${device_id}.log"
}

# hydra_value STRING: sets HYDRA_VALUE to STRING as a single-quoted value of Hydra's override grammar that reads
# back as STRING whatever it holds (a path with a quote, a space, a backslash): a quote is written \', and a run of
# backslashes before a quote or at the end is doubled (facebookresearch/hydra, website/docs/advanced/override_grammar/
# basic.md, "Quoted values"; hydra/core/override_parser/overrides_visitor.py, _unescape_quoted_string, which un-escapes
# only backslashes before a quote: any other backslash stays as it is). "${" is written \${ (the backslashes before
# it doubled), as OmegaConf would otherwise take it for an interpolation when train.py reads the value.
hydra_value() {
    local s="$1" out="" bs="" c i
    for ((i = 0; i < ${#s}; i++)); do
        c="${s:i:1}"
        if [[ "${c}" == "\\" ]]; then
            bs+="${c}"
            continue
        fi
        if [[ "${c}" == "'" ]]; then
            out+="${bs}${bs}\\'"
        elif [[ "${c}" == "\$" && "${s:i+1:1}" == "{" ]]; then
            out+="${bs}${bs}\\\$"
        else
            out+="${bs}${c}"
        fi
        bs=""
    done
    HYDRA_VALUE="'${out}${bs}${bs}'"
}

# run_train OVERRIDE...: train.py with the common overrides, then the script's, then the user's. The paths are
# quoted for Hydra (hydra_value).
run_train() {
    if ! TORCH_DEVICE_BACKEND_AUTOLOAD=0 "${PYTHON}" -c "import hydra, omegaconf, pycocotools, torch" >/dev/null 2>&1; then
        echo "[Error] ${PYTHON} cannot import the project's dependencies (hydra-core, pycocotools, torch): run" \
             "'make install' and then 'source .venv/bin/activate', or pass PYTHON=/path/to/python" >&2
        exit 1
    fi
    local run_device="${device}"
    if [[ "${RUN_KIND}" == "1p" && "${device}" != "cpu" && "${device}" != *:* ]]; then
        run_device="${device}:${device_id}"
    fi
    local args=()
    hydra_value "${data_path}"
    args+=("data.root=${HYDRA_VALUE}" "data.generate=false" "runtime.device=${run_device}")
    hydra_value "${RUN_DIR}"
    args+=("run_dir=${HYDRA_VALUE}")
    [[ -n "${batch_size}" ]] && args+=("train.batch_size=${batch_size}")
    if [[ "${batch_size}" =~ ^[0-9]+$ && "${batch_size}" != 2 && "${RUN_KIND}" == "8p" ]]; then
        # (another value is train.py's to refuse) The Ascend ModelZoo SOLOv2 train_full_8p.sh and
        # train_performance_8p.sh pass --batch_size to each rank (default 2: a total of 16 on 8 devices), as here;
        # their earlier versions took no --batch_size and fixed batch_size=16, the total. Automation written for
        # those would train a total of 8 x 16 = 128 here (and scale the learning rate with it).
        echo "[Warning] --batch_size=${batch_size} is the images of each device, as in the Ascend ModelZoo SOLOv2 8p" \
             "scripts that take it (default 2): the total batch is ${batch_size} x the devices (8 with the 8p" \
             "preset: $((batch_size * 8))), and the learning rate scales with it; their earlier versions fixed" \
             "batch_size=16 as the total of 8 devices (--batch_size=2 here)"
    fi
    [[ -n "${epochs}" ]] && args+=("train.epochs=${epochs}")
    if [[ -n "${checkpoint}" ]]; then
        hydra_value "${checkpoint}"
        args+=("checkpoint=${HYDRA_VALUE}")
    fi
    case "${pretrained}" in
        "") ;;
        none|None|null) args+=("model.pretrained=none") ;;
        *) hydra_value "${pretrained}"; args+=("model.pretrained=${HYDRA_VALUE}") ;;
    esac
    case "${apex}" in
        O1) args+=("amp.enabled=true" "amp.loss_scale=128") ;;
        O0) args+=("amp.enabled=false") ;;
    esac
    # ${A[@]+"${A[@]}"}: an empty array under set -u is an unbound variable for bash < 4.4 (CentOS 7 has 4.2)
    echo "${PYTHON} train.py $* ${args[*]+${args[*]}} ${EXTRA[*]+${EXTRA[*]}}" > "${LOG_FILE}"
    echo "device id ${device_id}, ASCEND_DEVICE_ID=${ASCEND_DEVICE_ID}, runtime.device=${run_device}" >> "${LOG_FILE}"
    # E2E Training Duration is the wall clock of the run, timed as the ModelZoo scripts time it (start_time and
    # end_time from date +%s around training and evaluation), so it includes start-up and the workers' spawning.
    RUN_START=$(date +%s)
    (cd "${REPO_DIR}" && "${PYTHON}" train.py "$@" ${args[@]+"${args[@]}"} train.progress=plain \
        ${EXTRA[@]+"${EXTRA[@]}"}) >> "${LOG_FILE}" 2>&1
    local rc=$?
    RUN_END=$(date +%s)
    if [[ ${rc} -ne 0 ]]; then
        tail -n 30 "${LOG_FILE}"
        echo "[Error] train.py failed with exit code ${rc}; full log: ${LOG_FILE}"
        exit "${rc}"
    fi
}

# write_loss_file CASE: the total loss of every iteration line of ${LOG_FILE} (the "epoch [e/E] iter [i/I] ...
# loss: X ... eta: ..." lines train.py logs every train.log_interval steps and at the last step), one value a line,
# into output/<device_id>/train_<CASE>_loss.txt, as the ModelZoo scripts fill it from their training log; sets
# LOSS_FILE and ACTUAL_LOSS (its last line, "None" when there is none). That last value is summary.json's
# final_loss (the mean total loss, averaged over the ranks, of the last logged interval) as the log prints it,
# rounded to 4 decimals.
write_loss_file() {
    LOSS_FILE="${OUTPUT_DIR}/train_$1_loss.txt"
    awk '/epoch \[[0-9]+\/[0-9]+\] iter \[[0-9]+\/[0-9]+\] / && / eta: / {
        for (i = 1; i < NF; i++) if ($i == "loss:") { print $(i + 1); break }
    }' "${LOG_FILE}" > "${LOSS_FILE}"
    ACTUAL_LOSS="$(awk 'END { print }' "${LOSS_FILE}")"
    if [[ -z "${ACTUAL_LOSS}" ]]; then
        ACTUAL_LOSS="None"
        echo "[Warning] no iteration loss lines in ${LOG_FILE}: ActualLoss is None (summary.json final_loss ${LOSS})"
    fi
}

# FPS: the two definitions.
# "Final Performance images/sec" (and ActualFPS, TrainingTime) is ours: summary.json's fps, written by
# solo_npu.engine.hooks.ThroughputHook: the images of all ranks per step times the steps after the process's first 5,
# divided by rank 0's time of those steps (perf_counter from fetching the batch to the end of the step; the hooks
# between steps, evaluation and checkpoints, are not counted). One mean of the whole run.
# The Ascend ModelZoo SOLOv2 scripts (Ascend/ModelZoo-PyTorch PyTorch/contrib/cv/detection/SOLOv2/test/
# train_full_1p.sh, train_full_8p.sh, train_performance_1p.sh, train_performance_8p.sh) report the max of the FPS
# values of their training log:
#   FPS=`grep -a 'FPS' train_N.log | awk -F "FPS: " '{print $NF}' \
#        | awk 'NR==1{max=$1;next}{max=max>$1?max:$1}END{print max}'`
# (the later train_full_1p.sh greps '^FPS:'; train_performance_8p.sh and it keep 2 decimals). Their log's values
# (SOLOv2/mmcv/mmcv/runner/runner.py, Runner.train, and runner/hooks/iter_timer.py, IterTimerHook) are running means
# of one epoch. IterTimerHook.before_epoch sets time_all = 0 and skip_step = 0; after_iter adds the wall time since
# the previous step's end once skip_step >= 5, so the epoch's first 5 steps are left out and the mean restarts every
# epoch. Runner.train logs samples_per_gpu * num_of_gpus * (i - 5) / time_all after every 200th step (i: the
# 0-based step of the epoch; time_all then holds i - 4 steps, so these read 1/(i - 4) low, 0.5% at i = 200) and,
# at the end of an epoch of a full run, samples_per_gpu * num_of_gpus * (len(data_loader) - 5) / time_all (as many
# steps as timed). num_of_gpus is train.py's --gpus (8 in train_full_8p.sh): the images of all ranks. A
# performance run (train_performance_1p.sh: --train_performance=True, no --steps_per_epoch, which tools/train.py
# defaults to 1000) stops after step i = 1000 with no epoch-end value: the max of the means at i = 200, 400, ... 1000.
# Our log's FPS: values have the same meaning (solo_npu.engine.writers.ConsoleWriter): on every log line
# (train.log_interval steps), the running mean of images/s of all ranks over the current epoch's steps from its
# 6th on, restarted every epoch (a line within an epoch's first 5 steps has no FPS: marker, so the pipeline never
# reads a word for a number); and the closing "training done" line repeats summary.json's fps. ModelZoo's pipeline
# on our log is therefore like-for-like with their figure: the best running mean of any epoch. For a run at a
# steady speed it comes to summary.json's fps (tests/scripts/test_fps_definition.py: within 3% at 4% step-time
# noise); a max of running means picks the luckiest reading, the more so the more epochs and readings (ours on every
# log line, theirs every 200 steps; rank 0's lines in both), and it leaves out the first
# 5 steps of every epoch where summary.json's fps leaves out only the run's first 5: where each epoch starts slowly
# (data-loader workers started anew), theirs reads higher by those steps' share of the time. Ours stays
# summary.json's fps; the output prints ModelZoo's reading of our log beside it.
#
# modelzoo_fps LOG: the max of the numbers after "FPS: " in LOG, as the pipeline above reads them ("None": none).
modelzoo_fps() {
    grep -a 'FPS: ' "$1" \
        | awk -F 'FPS: ' '{ split($NF, v, " "); if (v[1] ~ /^[0-9]+([.][0-9]*)?([eE][-+]?[0-9]+)?$/) print v[1] }' \
        | awk 'NR == 1 { max = $1; next } { max = max > $1 + 0 ? max : $1 + 0 } END { print (NR ? max : "None") }'
}

# summarize MODE: read summary.json and the run's config.yaml, print the ModelZoo lines and the device used, write
# <CaseName>.log (and, after training, the loss file). MODE: acc | perf | eval. As in the ModelZoo scripts, an fp32
# run (O0) is named ..._<N>p_fp32_<mode>. BatchSize is each device's, as the Ascend ModelZoo SOLOv2
# train_full_8p.sh and train_performance_8p.sh that take --batch_size write it (BatchSize=${batch_size}, 2:
# CaseName SOLOv2_bs2_8p_acc; their earlier versions fixed batch_size=16, the total, and were named bs16), and
# TrainingTime is theirs, BatchSize * 1000 / ActualFPS: with ActualFPS the images/s of all ranks that is one step's
# time divided by the ranks on 8p. The step time itself (total batch * 1000 / FPS) is printed on stdout.
summarize() {
    local mode="$1"
    local summary="${RUN_DIR}/summary.json"
    if [[ ! -f "${summary}" ]]; then
        echo "[Error] ${summary} is missing; see ${LOG_FILE}"
        exit 1
    fi
    # AP: summary.json's segm_ap; for a box-only model (FCOS, SSD-ResNet34: no "segm" in its iou_types, segm_ap
    # null) its bbox_ap. AP_KIND (segm / bbox) names which, on the "Accuracy definition" line.
    read -r FPS AP AP_KIND LOSS RANKS BS DEV AMP LOG_INTERVAL <<< "$("${PYTHON}" - "${summary}" "${RUN_DIR}/config.yaml" <<'PY'
import json, os, sys
import yaml
s = json.load(open(sys.argv[1]))
cfg = yaml.safe_load(open(sys.argv[2])) if os.path.isfile(sys.argv[2]) else {}
def num(v, fmt):
    return "None" if v is None else format(float(v), fmt)
train = cfg.get("train", {})
batch = train.get("eval_batch_size", 1) if s.get("mode") == "eval" else s.get("batch_size", train.get("batch_size", 0))
amp = cfg.get("amp", {}).get("enabled")
kind = "segm" if "segm" in (s.get("iou_types") or ["segm", "bbox"]) else "bbox"
print(num(s.get("fps"), ".3f"), num(s.get(f"{kind}_ap"), ".4f"), kind, num(s.get("final_loss"), ".4f"),
      s.get("world_size", 1), batch, s.get("device", "unknown"),
      {True: "O1", False: "O0"}.get(amp, "unknown"), train.get("log_interval", "?"))
PY
)"
    local E2E=$(( RUN_END - RUN_START ))
    local total_bs=$(( BS * RANKS ))
    local training_ms="None" step_ms="None"
    if [[ "${FPS}" != "None" ]] && "${PYTHON}" -c "import sys; sys.exit(float('${FPS}') <= 0)"; then
        training_ms=$("${PYTHON}" -c "print(f'{${BS} * 1000 / ${FPS}:.2f}')")
        step_ms=$("${PYTHON}" -c "print(f'{${total_bs} * 1000 / ${FPS}:.2f}')")
    fi
    local precision=""
    [[ "${AMP}" == "O0" && "${mode}" != "eval" ]] && precision="_fp32"
    local CaseName="${Network}_bs${BS}_${RANKS}p${precision}_${mode}"
    # DeviceType of <CaseName>.log is the machine (uname -m), as in the ModelZoo scripts; the device the run used
    # is on stdout and at the end of the log.
    local DeviceType
    DeviceType="$(uname -m)"
    local modelzoo_reading
    modelzoo_reading="$(modelzoo_fps "${LOG_FILE}")"  # of train.py's own lines
    # the later ModelZoo train_full_1p.sh reads grep -a '^FPS:' (a line that starts with it): summary.json's fps,
    # which the log's closing "training done ... FPS:" line repeats after its time stamp
    [[ "${mode}" != "eval" && "${FPS}" != "None" ]] && echo "FPS: ${FPS}" >> "${LOG_FILE}"
    echo "Device used : ${DEV}" >> "${LOG_FILE}"
    echo "------------------ Final result ------------------"
    if [[ "${mode}" != "eval" ]]; then
        echo "Final Performance images/sec : ${FPS}"
        echo "FPS definition : mean images/s of all ranks over the run after its first 5 steps (summary.json fps);" \
            "the ModelZoo SOLOv2 scripts report the max of their log's FPS: values, running means of each epoch" \
            "from its 6th step, as this log's are (see scripts/common.sh)"
        echo "ModelZoo reading of this log (max of its FPS values, running means of each epoch from its 6th step" \
            "every ${LOG_INTERVAL} steps) : ${modelzoo_reading}"
        echo "Step time ms (batch of all ranks ${total_bs} x 1000 / FPS) : ${step_ms}"
    fi
    if [[ "${mode}" == "eval" ]]; then  # the file evaluated, with the epoch and iteration it was saved at
        "${PYTHON}" - "${summary}" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
step = ", ".join(f"{k} {s[f'checkpoint_{k}']}" for k in ("epoch", "iteration") if s.get(f"checkpoint_{k}") is not None)
if s.get("checkpoint"):
    print(f"Evaluated checkpoint : {s['checkpoint']} ({step or 'the file records no training epoch or iteration'})")
PY
    fi
    if [[ "${mode}" != "perf" ]]; then
        echo "Final Train Accuracy : ${AP}"
        echo "Accuracy definition : COCO ${AP_KIND} AP (summary.json ${AP_KIND}_ap$( [[ "${AP_KIND}" == "bbox" ]] &&
            echo "; a box-only model has no segm AP"))"
    fi
    echo "E2E Training Duration sec : ${E2E}"
    echo "Device used : ${DEV}"
    [[ "${mode}" != "eval" ]] && write_loss_file "${CaseName}"
    # The keys of the ModelZoo scripts: evaluation has no FPS, step time or loss; a performance run no accuracy
    # (the template's train_performance_*.sh, e.g. Faster_Mask_RCNN_for_PyTorch and YOLOX, leaves TrainAccuracy out).
    {
        echo "Network = ${Network}"
        echo "RankSize = ${RANKS}"
        echo "BatchSize = ${BS}"
        echo "DeviceType = ${DeviceType}"
        echo "CaseName = ${CaseName}"
        if [[ "${mode}" != "eval" ]]; then
            echo "ActualFPS = ${FPS}"
            echo "TrainingTime = ${training_ms}"
        fi
        [[ "${mode}" != "perf" ]] && echo "TrainAccuracy = ${AP}"
        [[ "${mode}" != "eval" ]] && echo "ActualLoss = ${ACTUAL_LOSS}"
        echo "E2ETrainingTime = ${E2E}"
    } > "${OUTPUT_DIR}/${CaseName}.log"
    if [[ "${mode}" == "eval" ]]; then
        echo "Summary: ${OUTPUT_DIR}/${CaseName}.log, log: ${LOG_FILE}"
    else
        echo "Summary: ${OUTPUT_DIR}/${CaseName}.log, losses: ${LOSS_FILE}, log: ${LOG_FILE}"
    fi
}
