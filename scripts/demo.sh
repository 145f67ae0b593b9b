#!/usr/bin/env bash
# `make demo`: generate the synthetic COCO set, train and evaluate the demo SOLOv2-light on it
# (python train.py +experiment=demo), then export and deploy the best checkpoint with a report
# (deploy.py). Re-running continues the same run (resume=auto) instead of starting over.
#   bash scripts/demo.sh [key=value ...]      extra overrides go to train.py
#   DEPLOY_OVERRIDES="key=value ..."          extra overrides for deploy.py (e.g. run_dir=..., deploy.benchmark.iters=3)
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
mapfile -t MODEL_OVERRIDES < <("${PYTHON}" scripts/deploy_overrides.py "${RUN_DIR}/config.yaml")
read -r -a DEPLOY_ARGS <<< "${DEPLOY_OVERRIDES:-}"
# ${A[@]+"${A[@]}"}: an empty array under set -u is an unbound variable for bash < 4.4
"${PYTHON}" deploy.py model=solov2_light_r18 data=synthetic checkpoint="${ckpt}" ${MODEL_OVERRIDES[@]+"${MODEL_OVERRIDES[@]}"} \
    deploy.batch_sizes=[1,4] ${DEPLOY_ARGS[@]+"${DEPLOY_ARGS[@]}"}
