#!/usr/bin/env bash
# Fine-tune --checkpoint (this project, mmdet or original SOLO) on the dataset at --data_path on one device, with
# +experiment=[1p,finetune]: the 1p preset of train_full_1p.sh (mixed precision with a static loss scale of 128, as
# the ModelZoo SOLOv2 train_finetune_1p.sh runs apex O1; on the NPU every image on the fixed square canvas) and the
# fine-tuning schedule of conf/experiment/finetune.yaml (conf/optim/finetune.yaml: 6 epochs, LR 0.005 per 16 images).
# --apex=O0 fine-tunes in fp32. Without --checkpoint it starts from the last checkpoint of train_full_1p.sh or
# train_full_8p.sh for the device id (common.sh, require_checkpoint), as the ModelZoo script starts from the
# training run's latest.pth (its --resume_from with --fine-tune: weights to fine-tune from, not a run to resume; it
# trains --total_epochs 1, this recipe 6 epochs).
# Usage: bash scripts/train_finetune_1p.sh --data_path=/path/to/coco [--device_id=N] [--apex=O1|O0] [--batch_size=N] [--epochs=N] [--device=npu|auto|cuda|cpu] [--checkpoint=PATH] [key=value ...]
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"
parse_args "$@"
require_checkpoint
setup_env 1p
run_train "+experiment=[1p,finetune]"
summarize acc
