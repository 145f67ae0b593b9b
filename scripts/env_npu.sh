#!/usr/bin/env bash
# Ascend environment for training: CANN toolkit variables plus the settings Huawei recommends for
# multi-device runs. Sourced by the scripts when /usr/local/Ascend exists; harmless elsewhere.
CANN_ROOT="${ASCEND_HOME_PATH:-/usr/local/Ascend/ascend-toolkit/latest}"
for env_file in /usr/local/Ascend/ascend-toolkit/set_env.sh "${CANN_ROOT}/../set_env.sh" /usr/local/Ascend/nnal/atb/set_env.sh; do
    if [[ -f "${env_file}" ]]; then
        # shellcheck source=/dev/null
        source "${env_file}" >/dev/null 2>&1 || true
        break
    fi
done
export HCCL_CONNECT_TIMEOUT="${HCCL_CONNECT_TIMEOUT:-1800}"
export HCCL_WHITELIST_DISABLE="${HCCL_WHITELIST_DISABLE:-1}"
export TASK_QUEUE_ENABLE="${TASK_QUEUE_ENABLE:-2}"
export CPU_AFFINITY_CONF="${CPU_AFFINITY_CONF:-1}"
export PYTORCH_NPU_ALLOC_CONF="${PYTORCH_NPU_ALLOC_CONF:-expandable_segments:True}"
export ASCEND_SLOG_PRINT_TO_STDOUT="${ASCEND_SLOG_PRINT_TO_STDOUT:-0}"
export ASCEND_GLOBAL_LOG_LEVEL="${ASCEND_GLOBAL_LOG_LEVEL:-3}"
