#!/usr/bin/env bash
# Ascend environment for training: CANN's set_env.sh plus the settings Huawei recommends for multi-device runs.
# Sourced by the scripts unless --device is cpu or cuda; `source test/env_npu.sh` (as the ModelZoo guide writes it;
# test/ is a link to scripts/) or `source scripts/env_npu.sh` works in a shell too.
# CANN is found as the Ascend ModelZoo SOLOv2 test/env_npu.sh finds it: the Install_Path line of
# /etc/Ascend/ascend_cann_install.info (CANN_INSTALL_PATH_CONF names another file), else /usr/local/Ascend;
# there ascend-toolkit/set_env.sh when ascend-toolkit/latest exists, else nnae/set_env.sh. CANN 8.5 and later install
# the toolkit under cann/ instead (Huawei's CANN 8.5.0 installation guide, "File Paths": cann/<arch>-linux/
# ascend_toolkit_install.info, where 8.0 has ascend-toolkit/latest/<arch>-linux/): its cann/set_env.sh is taken
# when there is no ascend-toolkit/latest.
CANN_INSTALL_PATH_CONF="${CANN_INSTALL_PATH_CONF:-/etc/Ascend/ascend_cann_install.info}"
CANN_INSTALL_PATH=""
if [[ -f "${CANN_INSTALL_PATH_CONF}" ]]; then
    CANN_INSTALL_PATH="$(grep Install_Path "${CANN_INSTALL_PATH_CONF}" | head -n 1 | cut -d "=" -f 2)"
fi
CANN_INSTALL_PATH="${CANN_INSTALL_PATH:-/usr/local/Ascend}"
if [[ -d "${CANN_INSTALL_PATH}/ascend-toolkit/latest" ]]; then
    _cann_env="${CANN_INSTALL_PATH}/ascend-toolkit/set_env.sh"
elif [[ -f "${CANN_INSTALL_PATH}/cann/set_env.sh" ]]; then
    _cann_env="${CANN_INSTALL_PATH}/cann/set_env.sh"
else
    _cann_env="${CANN_INSTALL_PATH}/nnae/set_env.sh"
fi
if [[ -f "${_cann_env}" ]]; then
    # set_env.sh appends to LD_LIBRARY_PATH, PYTHONPATH, ... without a default for an unset one: under `set -u` (the
    # scripts run with it) that would end the shell with no message. The shell's options are put back afterwards;
    # set_env.sh's own messages stay visible.
    _cann_opts="$(set +o)"
    set +u
    # shellcheck source=/dev/null
    source "${_cann_env}" || echo "[Warning] ${_cann_env} returned $?" >&2
    eval "${_cann_opts}"
    unset _cann_opts
elif [[ -z "${ASCEND_HOME_PATH:-}" ]]; then  # set by a set_env.sh sourced before
    echo "[Warning] CANN's set_env.sh not found: no ${_cann_env} nor ${CANN_INSTALL_PATH}/cann/set_env.sh (CANN 8.5" \
         "and later) (install path ${CANN_INSTALL_PATH}: the Install_Path" \
         "of ${CANN_INSTALL_PATH_CONF} when that file exists, else /usr/local/Ascend); torch_npu needs its environment" >&2
fi
unset _cann_env
# Open files: the Ascend ModelZoo SOLOv2 test/env_npu.sh sets `ulimit -SHn 512000` (data-loader workers of 8
# ranks share tensors through file descriptors). Here a limit is only raised, never lowered: a soft limit under
# 512000 goes up to 512000 where the hard limit allows it (raised first where it can be: root), else to the hard one.
_nofile_soft="$(ulimit -Sn)"
_nofile_hard="$(ulimit -Hn)"
if [[ "${_nofile_soft}" != unlimited && "${_nofile_soft}" -lt 512000 ]]; then
    if [[ "${_nofile_hard}" == unlimited || "${_nofile_hard}" -ge 512000 ]]; then
        ulimit -Sn 512000 2>/dev/null || true
    else
        ulimit -SHn 512000 2>/dev/null || ulimit -Sn "${_nofile_hard}" 2>/dev/null || true
    fi
fi
unset _nofile_soft _nofile_hard
export HCCL_CONNECT_TIMEOUT="${HCCL_CONNECT_TIMEOUT:-1800}"
export HCCL_WHITELIST_DISABLE="${HCCL_WHITELIST_DISABLE:-1}"
export TASK_QUEUE_ENABLE="${TASK_QUEUE_ENABLE:-2}"
export CPU_AFFINITY_CONF="${CPU_AFFINITY_CONF:-1}"
# expandable_segments (the allocator's virtual memory) needs Ascend HDK 23.0.0 or later, must be False when
# max_split_size_mb or garbage_collection_threshold is set, and before HDK 24.1.RC3 rules out one process driving
# several devices (CANN environment variable reference, PYTORCH_NPU_ALLOC_CONF): on an older driver export
# PYTORCH_NPU_ALLOC_CONF=expandable_segments:False (or your own value) before sourcing this file.
export PYTORCH_NPU_ALLOC_CONF="${PYTORCH_NPU_ALLOC_CONF:-expandable_segments:True}"
export ASCEND_SLOG_PRINT_TO_STDOUT="${ASCEND_SLOG_PRINT_TO_STDOUT:-0}"
export ASCEND_GLOBAL_LOG_LEVEL="${ASCEND_GLOBAL_LOG_LEVEL:-3}"
export ASCEND_GLOBAL_EVENT_ENABLE="${ASCEND_GLOBAL_EVENT_ENABLE:-0}"
