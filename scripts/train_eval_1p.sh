#!/usr/bin/env bash
# COCO segm/bbox AP of --checkpoint on val2017 on one device, one image per batch (as the ModelZoo evaluation
# runs): padding images of different shapes to one canvas would make the AP depend on the batch composition.
# --batch_size is not a training batch here and is ignored with a warning; train.eval_batch_size=N overrides.
# It evaluates with the experiment the training scripts train with, +experiment=[1p,eval] (conf/experiment/eval.yaml
# asks for it for their checkpoints): the canvas train_full_1p.sh and train_full_8p.sh train on on that device (on
# the NPU every image on the fixed square canvas, 1344x1344 at 1333x800; elsewhere padded to a multiple of 32), with
# mixed precision (O1; --apex=O0: fp32), so the AP is the one their last evaluation of the same checkpoint reported.
# Without --checkpoint it evaluates the last checkpoint of the latest training run for the device id, train_full_1p.sh,
# train_full_8p.sh or train_finetune_1p.sh (output/<device_id>/run/checkpoints/last.pth, or of an earlier output moved
# aside; common.sh, require_checkpoint): after a fine-tuning, the fine-tuned weights, as the ModelZoo SOLOv2 scripts'
# latest.pth is then the fine-tuned one; a [Warning] line names the full training run's checkpoint passed over.
# The log and the final result name the file evaluated, with the epoch and iteration it was saved at.
# Usage: bash scripts/train_eval_1p.sh --data_path=/path/to/coco [--checkpoint=PATH] [--device_id=N] [--apex=O1|O0] [--device=npu|auto|cuda|cpu] [key=value ...]
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"
COCO_SPLITS="val"  # evaluation reads val2017 only
LOG_STEM="eval"    # output/<device_id>/eval_<device_id>.log, as the ModelZoo SOLOv2 train_eval_1p.sh logs
parse_args "$@"
require_checkpoint eval
if [[ -n "${batch_size}" ]]; then
    echo "[Warning] --batch_size=${batch_size} ignored: evaluation runs one image per batch (override with train.eval_batch_size=N)"
    batch_size=""
fi
if [[ -n "${epochs}" ]]; then
    echo "[Warning] --epochs=${epochs} ignored: evaluation does not train"
    epochs=""
fi
setup_env 1p
run_train "+experiment=[1p,eval]" train.eval_batch_size=1
summarize eval
