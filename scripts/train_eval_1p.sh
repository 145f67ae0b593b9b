#!/usr/bin/env bash
# COCO segm/bbox AP of --checkpoint on val2017 on one device.
# Usage: bash scripts/train_eval_1p.sh --data_path=/path/to/coco [--device_id=0] [--batch_size=N] [--epochs=N] [--device=auto] --checkpoint=PATH [key=value ...]
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"
parse_args "$@"
require_checkpoint
setup_env
run_train +experiment=eval
summarize eval
