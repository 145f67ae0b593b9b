#!/usr/bin/env bash
# Throughput on one device: 1 epoch capped at 1000 steps, no evaluation.
# Usage: bash scripts/train_performance_1p.sh --data_path=/path/to/coco [--device_id=N] [--apex=O1|O0] [--batch_size=N] [--epochs=N] [--device=npu|auto|cuda|cpu] [--pretrained=PATH] [key=value ...]
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"
parse_args "$@"
setup_env 1p
run_train +experiment=performance_1p
summarize perf
