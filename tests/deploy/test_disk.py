"""Bounded disk: the estimate (stages=[plan]) against the output contract, the free-space check, and the bytes
a real run writes against the estimate.

Reference figures come from the Ascend ModelZoo SOLOV2 torch_aie inference guide (310P3): input
``batchsize x 3 x 800 x 1216`` RGB_FP32, outputs ``100 x 200 x 304`` FLOAT32 masks, ``100`` INT32 labels and
``100`` FLOAT32 scores per image (its "输入输出数据" tables), one ``.bin`` per image for the preprocessed
inputs (``solov2_preprocess.py --bin_file_path``) and for the outputs (``solov2_inference.py
--output-save-path``), over COCO val2017 (5000 images).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from deploy_support import compose_deploy_cfg

from solo_npu.data.synthetic import generate_synthetic_coco
from solo_npu.deploy import disk, infer
from solo_npu.deploy.context import DeployContext
from solo_npu.deploy.disk import estimate_disk
from solo_npu.deploy.pipeline import main, run_pipeline

COCO_VAL_IMAGES = 5000
GUIDE_INPUT = 3 * 800 * 1216 * 4                       # bytes of one preprocessed .bin
GUIDE_OUTPUT = 100 * 200 * 304 * 4 + 100 * 4 + 100 * 4  # masks + labels + scores of one image
GUIDE_SPECS = {"masks": {"shape": [100, 200, 304], "dtype": "float32"},
               "labels": {"shape": [100], "dtype": "int32"}, "scores": {"shape": [100], "dtype": "float32"}}
TARGET = 242e9  # twice the guide's raw outputs for val2017 (2 x 121 GB)
SMALL = 64      # H = W of the small model input used below
RUN_IMAGES = 200


def _walk(root: Path, under: str = "") -> int:
    base = root / under if under else root
    if base.is_file():
        return base.stat().st_size
    return sum(p.stat().st_size for p in base.rglob("*") if p.is_file()) if base.exists() else 0


def _preset_310p() -> tuple[list[str], list[int]]:
    cfg = compose_deploy_cfg(["model=solov2", "deploy=310p"])
    return list(cfg.deploy.backends), list(cfg.model.deploy.batch_sizes)


def test_full_coco_310p_estimate_is_within_twice_the_guide():
    backends, batch_sizes = _preset_310p()
    assert backends == ["pytorch", "torchscript", "onnxruntime", "om", "torch_aie"] and batch_sizes == [1, 4, 8]
    est = estimate_disk(COCO_VAL_IMAGES, [800, 1216], GUIDE_SPECS, backends, [1], batch_sizes, ("segm",),
                        verify_images=2, model_bytes=250_000_000, export_files=len(batch_sizes) * 4)
    # the arithmetic of the guide's own files: one input and one output set per image
    assert est.input_bytes == GUIDE_INPUT == 11_673_600 and est.output_bytes == GUIDE_OUTPUT == 24_320_800
    assert est.parts["inputs"] == COCO_VAL_IMAGES * (GUIDE_INPUT + disk.META_BYTES)
    assert est.raw_peak == COCO_VAL_IMAGES * GUIDE_OUTPUT  # one backend's raw outputs at a time: 121.6 GB
    assert est.peak <= TARGET, f"{est.peak / 1e9:.1f} GB"
    # what every backend x batch size with all raw outputs kept needs (the layout before): about 1.8 TB
    everything = estimate_disk(COCO_VAL_IMAGES, [800, 1216], GUIDE_SPECS, backends, batch_sizes, batch_sizes,
                               ("segm",), keep_raw=True)
    assert everything.raw_peak >= 15 * COCO_VAL_IMAGES * GUIDE_OUTPUT > 1.8e12


def test_om_at_batch_above_one_counts_its_batched_copies():
    est = estimate_disk(10, [800, 1216], GUIDE_SPECS, ["om"], [4], [4])
    padded = 12  # 10 images in batches of 4
    assert est.runs["om_b4"] == padded * GUIDE_INPUT + padded * GUIDE_OUTPUT + 4 * GUIDE_OUTPUT


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory) -> dict[str, Path]:
    """5000 annotated small images (annotations only: a dry run reads no pixels) and 200 real ones."""
    big = tmp_path_factory.mktemp("coco5000")
    (big / "annotations").mkdir()
    (big / "val2017").mkdir()
    images = [{"id": i + 1, "file_name": f"{i + 1:012d}.png", "height": 48, "width": 64}
              for i in range(COCO_VAL_IMAGES)]
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(["circle", "rectangle", "triangle"])]
    (big / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": [], "categories": cats}))
    small = generate_synthetic_coco(tmp_path_factory.mktemp("coco200"), 1, RUN_IMAGES, size=SMALL, seed=0)
    return {"dry": big, "run": small}


def _small_cfg(root: Path, run_dir: Path, *extra: str):
    return compose_deploy_cfg([
        "model=solov2_tiny", "data=synthetic", f"data.root={root}", "data.generate=false", "deploy=310p",
        f"deploy.input_shape=[{SMALL},{SMALL}]", "deploy.batch_sizes=[1,2]", "deploy.slim=false",
        "deploy.onnxruntime.intra_op_num_threads=1", f"run_dir={run_dir}", *extra])


def test_dry_run_of_the_310p_preset_over_5000_small_images(small_sets, tmp_path, capsys):
    run_dir = tmp_path / "dry"
    assert main(_small_cfg(small_sets["dry"], run_dir, "stages=[plan]")) == 0
    out = capsys.readouterr().out
    assert "disk plan: 5000 images at 3x64x64, backends ['pytorch', 'torchscript', 'onnxruntime', 'om', " \
           "'torch_aie']" in out and "peak" in out
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["num_images"] == COCO_VAL_IMAGES and plan["input_bytes"] == 3 * SMALL * SMALL * 4
    # solov2_tiny's contract at 64x64: K=20 masks at stride 4, labels int32, scores float32 per image
    assert plan["output_bytes"] == 20 * 16 * 16 * 4 + 20 * 4 + 20 * 4
    assert plan["runs"] == {f"{b}_b1": COCO_VAL_IMAGES * plan["output_bytes"]
                            for b in ("pytorch", "torchscript", "onnxruntime", "om", "torch_aie")}
    assert sorted(p.name for p in run_dir.iterdir()) == ["plan.json"]  # a dry run writes nothing else


def test_bytes_written_by_200_images_scale_within_the_estimate(small_sets, fitted_tiny, tmp_path, monkeypatch):
    """A real run (the fitted tiny model, 64x64 input, the CPU backends) against the estimate of the same
    settings; about 15 s on 2 cores.

    Tolerances: inputs and raw outputs match the estimate's arithmetic to the byte (meta files within the
    2 KiB-per-image allowance); COCO results stay under their allowance; the peak measured while a
    backend's raw outputs were on disk stays under the estimated peak.
    """
    run_dir = tmp_path / "run"
    cfg = _small_cfg(small_sets["run"], run_dir, "deploy.backends=[pytorch,torchscript,onnxruntime]",
                     "stages=[export,preprocess,infer,evaluate,benchmark,report]", "deploy.benchmark.warmup=0",
                     "deploy.benchmark.iters=1", "deploy.benchmark.e2e_images=2")
    ctx = DeployContext(cfg, run_dir, "solov2_tiny")
    ctx.set_model(fitted_tiny)  # trained weights: detections to write (random ones give none)
    peaks: list[int] = []
    original = infer.collect_results

    def measured(ctx_, key, records, label_to_cat):  # the moment a backend's raw outputs are all on disk
        peaks.append(_walk(run_dir))
        return original(ctx_, key, records, label_to_cat)

    monkeypatch.setattr(infer, "collect_results", measured)
    run_pipeline(cfg, "solov2_tiny", ctx)
    plan = json.loads((run_dir / "plan.json").read_text())  # written by the check before preprocess
    assert plan["num_images"] == RUN_IMAGES and len(peaks) == 3

    inputs = _walk(run_dir, "preprocess")
    assert RUN_IMAGES * plan["input_bytes"] <= inputs <= plan["parts"]["inputs"]
    summary = json.loads((run_dir / "infer" / "summary.json").read_text())
    assert set(summary) == {"pytorch_b1", "torchscript_b1", "onnxruntime_b1"}  # batch 2 is timed only
    for key, entry in summary.items():
        assert entry["raw_bytes"] == plan["runs"][key] == RUN_IMAGES * plan["output_bytes"]
        assert not list((run_dir / "infer" / key).glob("*.bin"))  # raw outputs gone once they are results
    results = sum(_walk(run_dir, f"evaluate/{key}.json") for key in summary)
    detections = sum(m["detections"] for k, m in json.loads((run_dir / "evaluate" / "metrics.json").read_text()).items()
                     if k in summary)
    assert detections > 0 and 0 < results <= plan["parts"]["COCO results"]
    print(f"COCO results: {results} bytes for {detections} detections ({results / detections:.0f} per detection)")
    export = _walk(run_dir, "export")
    assert max(peaks) - export <= plan["peak"]
    # per image, what scales with the number of images: measured vs estimated (the 5000-image dry run uses
    # the same per-image arithmetic), then 5000 images of the 310P guide's size stay within the target
    measured_per_image = (max(peaks) - export) / RUN_IMAGES
    estimated_per_image = (plan["peak"] - plan["parts"]["export+compile"] - plan["parts"]["verify"]
                           - plan["parts"]["benchmark"]) / RUN_IMAGES
    assert measured_per_image <= estimated_per_image
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert set(metrics["onnxruntime_b1"]["metrics"]) == {"segm", "bbox"}
    report = (run_dir / "report.md").read_text()
    assert "- classes: 3 from the config: circle, rectangle, triangle" in report
    for column in ("timing scope", "memory source", "segm AP", "bbox AP"):
        assert f" {column} |" in report
    assert "scored at batch 1; other batch sizes are timed only" in report


def test_refuses_in_one_line_when_the_disk_is_short(small_sets, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "short"
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100_000_000, 0, 10_000_000))
    cfg = _small_cfg(small_sets["dry"], run_dir, "deploy.backends=[onnxruntime]", "deploy.disk.reserve_gb=0",
                     "stages=[preprocess,infer]")
    assert main(cfg) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: the run needs about ") and "0.0 GB free" in err
    assert "deploy.num_images=N" in err
    assert not (run_dir / "preprocess").exists()
    cfg = _small_cfg(small_sets["dry"], run_dir, "deploy.backends=[onnxruntime]", "deploy.disk.check=false",
                     "stages=[plan]")
    assert main(cfg) == 0
