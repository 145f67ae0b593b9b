"""scripts/demo.sh (what `make demo` runs), shrunk: train, evaluate, then deploy the checkpoint it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_trains_then_deploys_its_checkpoint(tmp_path: Path) -> None:
    run_dir, deploy_dir = tmp_path / "demo", tmp_path / "deploy"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "RUN_DIR": str(run_dir),
           "DEPLOY_OVERRIDES": f"run_dir={deploy_dir} deploy.benchmark.iters=1 deploy.benchmark.warmup=0 "
                               "deploy.benchmark.e2e_images=2 deploy.num_images=4"}
    shrink = [f"data.root={tmp_path / 'data'}", "data.num_train=8", "data.num_val=4", "data.num_workers=0",
              "train.max_iters=3", "train.batch_size=2", "train.plots=false", "train.vis_images=0"]
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), *shrink], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["iterations"] == 3 and summary["segm_ap"] is not None
    stamp = json.loads((tmp_path / "data" / "synthetic_params.json").read_text())
    assert stamp["shape_scale"] == [0.25, 0.8] and stamp["max_shapes"] == 4 and stamp["size"] == 128
    # deploy.py rebuilt the demo's narrow model from the run's config (the checkpoint loads strictly only
    # into that model) and exported it at the training scale.
    manifest = json.loads((deploy_dir / "export" / "manifest.json").read_text())
    assert manifest["input_shape"] == [3, 128, 160] and manifest["random_weights"] is False
    assert manifest["checkpoint"] == str(run_dir / "checkpoints" / "best.pth")
    report = json.loads((deploy_dir / "report.json").read_text())
    assert report["num_images"] == 4 and {r["backend"] for r in report["benchmark"]["rows"]} >= {"pytorch",
                                                                                                   "onnxruntime"}
    assert (deploy_dir / "report.md").is_file()
