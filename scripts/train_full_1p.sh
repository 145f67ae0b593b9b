#!/usr/bin/env bash
# Full 1x training on one device (AMP, static loss scale 128), evaluated on COCO val2017.
# Usage: bash scripts/train_full_1p.sh --data_path=/path/to/coco [--device_id=N] [--apex=O1|O0] [--batch_size=N] [--epochs=N] [--device=npu|auto|cuda|cpu] [--pretrained=PATH] [key=value ...]
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"
parse_args "$@"
setup_env 1p
# evaluated once, after training, as the ModelZoo SOLOv2 scripts run tools/test_ins.py after tools/train.py
# (their log then holds one COCO table, which their 'maxDets' grep reads); train.eval_interval=N evaluates
# every N epochs as well
run_train +experiment=1p train.eval_interval=0
summarize acc
