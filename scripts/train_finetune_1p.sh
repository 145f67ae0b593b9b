#!/usr/bin/env bash
# Fine-tune --checkpoint (this project, mmdet or original SOLO) on the dataset at --data_path.
# Usage: bash scripts/train_finetune_1p.sh --data_path=/path/to/coco [--device_id=0] [--batch_size=N] [--epochs=N] [--device=auto] --checkpoint=PATH [key=value ...]
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"
parse_args "$@"
if [[ -z "${checkpoint}" ]]; then
    echo "[Error] para \"checkpoint\" must be config"
    exit 1
fi
setup_env
run_train +experiment=finetune
summarize acc
