#!/usr/bin/env bash
# Fine-tune --checkpoint (this project, mmdet or original SOLO) on the dataset at --data_path.
# Usage: bash scripts/train_finetune_1p.sh --data_path=/path/to/coco [--device_id=N] [--apex=O1|O0] [--batch_size=N] [--epochs=N] [--device=npu|auto|cuda|cpu] --checkpoint=PATH [key=value ...]
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"
parse_args "$@"
require_checkpoint
setup_env 1p
run_train +experiment=finetune
summarize acc
