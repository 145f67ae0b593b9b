#!/usr/bin/env bash
# COCO segm/bbox AP of --checkpoint on val2017 on one device.
# Usage: bash scripts/train_eval_1p.sh --data_path=/path/to/coco [--device_id=0] [--batch_size=N] [--epochs=N] [--device=auto] --checkpoint=PATH [key=value ...]
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"
parse_args "$@"
if [[ -z "${checkpoint}" ]]; then
    echo "[Error] para \"checkpoint\" must be config"
    exit 1
fi
setup_env
run_train +experiment=eval
summarize eval
