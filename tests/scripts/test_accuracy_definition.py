"""The accuracy the scripts report ("Final Train Accuracy", TrainAccuracy): summary.json's segm_ap, and for a
box-only model (FCOS, SSD-ResNet34: no segm in its iou_types, segm_ap null) its bbox_ap, with a line naming
which. It used to print "None" for a box-only model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def summarize(tmp_path: Path, summary: dict) -> tuple[str, dict[str, str]]:
    """``summarize eval`` of scripts/common.sh on a run directory with this summary.json: (stdout, the case log)."""
    out = tmp_path / "output" / "0"
    run = out / "run"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"mode": "eval", "fps": 0.0, "final_loss": None, "world_size": 1,
                                                  "device": "cpu", **summary}))
    (run / "config.yaml").write_text("train:\n  eval_batch_size: 1\n  log_interval: 20\namp:\n  enabled: false\n")
    log = out / "eval_0.log"
    log.write_text("python3 train.py +experiment=[1p,eval]\n")
    script = (f'source "{ROOT / "scripts" / "common.sh"}"; OUTPUT_DIR="{out}"; RUN_DIR="{run}"; LOG_FILE="{log}"; '
              "RUN_START=0; RUN_END=7; summarize eval")
    proc = subprocess.run(["bash", "-c", script], env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    case = dict(line.split(" = ", 1) for line in next(out.glob("*_eval.log")).read_text().splitlines())
    return proc.stdout, case


def lines_of(stdout: str) -> dict[str, str]:
    return dict(re.findall(r"^([^:\n]+?) : (.+)$", stdout, re.M))


@pytest.mark.parametrize("summary, accuracy, kind", [
    ({"iou_types": ["bbox"], "segm_ap": None, "bbox_ap": 0.359}, "0.3590", "bbox"),  # FCOS
    ({"iou_types": ["segm", "bbox"], "segm_ap": 0.25, "bbox_ap": 0.3}, "0.2500", "segm"),  # SOLOv2
    ({"segm_ap": 0.25, "bbox_ap": 0.3}, "0.2500", "segm"),  # a summary.json written before iou_types
    ({"iou_types": ["segm", "bbox"], "segm_ap": None, "bbox_ap": None}, "None", "segm"),  # no annotations to score
])
def test_final_train_accuracy_names_its_ap(tmp_path: Path, summary: dict, accuracy: str, kind: str) -> None:
    stdout, case = summarize(tmp_path, summary)
    lines = lines_of(stdout)
    assert lines["Final Train Accuracy"] == accuracy and case["TrainAccuracy"] == accuracy
    assert lines["Accuracy definition"].startswith(f"COCO {kind} AP (summary.json {kind}_ap"), lines
