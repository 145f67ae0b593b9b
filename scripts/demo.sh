#!/usr/bin/env bash
# `make demo`: generate the synthetic COCO set, train and evaluate the demo SOLOv2-light on it
# (python train.py +experiment=demo), then export and deploy the best checkpoint with a report
# (deploy.py). Re-running continues the same run (resume=auto) instead of starting over.
#   bash scripts/demo.sh [key=value ...]      extra overrides go to train.py
set -euo pipefail
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_DIR}"
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python3
    [[ -x .venv/bin/python ]] && PYTHON=.venv/bin/python
fi
RUN_DIR="${RUN_DIR:-outputs/demo}"

"${PYTHON}" train.py +experiment=demo run_dir="${RUN_DIR}" resume=auto "$@"

ckpt="${RUN_DIR}/checkpoints/best.pth"
[[ -f "${ckpt}" ]] || ckpt="${RUN_DIR}/checkpoints/last.pth"
# The deploy config builds the same model and reads the same data: take them from the run's config.
mapfile -t MODEL_OVERRIDES < <("${PYTHON}" - "${RUN_DIR}/config.yaml" <<'PY'
import json
import sys

import yaml

def flat(node, prefix):
    for key, value in node.items():
        if key in ("_target_", "num_classes", "deploy"):
            continue
        if isinstance(value, dict):
            yield from flat(value, f"{prefix}{key}.")
        else:
            yield f"++model.{prefix}{key}={json.dumps(value, separators=(',', ':'))}"

cfg = yaml.safe_load(open(sys.argv[1]))
print("\n".join(flat(cfg["model"], "")))
print(f"++data.root={cfg['data']['root']}")
print(f"++data.img_scale={json.dumps(cfg['data']['img_scale'], separators=(',', ':'))}")
PY
)
"${PYTHON}" deploy.py model=solov2_light_r18 data=synthetic checkpoint="${ckpt}" "${MODEL_OVERRIDES[@]}" \
    deploy.input_shape=[192,256] deploy.batch_sizes=[1,4]
