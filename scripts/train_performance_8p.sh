#!/usr/bin/env bash
# Throughput on 8 devices: 1 epoch capped at 1000 steps, no evaluation.
# Usage: bash scripts/train_performance_8p.sh --data_path=/path/to/coco [--device_id=N] [--apex=O1|O0] [--batch_size=N] [--epochs=N] [--device=npu|auto|cuda|cpu] [--pretrained=PATH] [key=value ...]
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"
parse_args "$@"
setup_env 8p
run_train +experiment=performance_8p
summarize perf
