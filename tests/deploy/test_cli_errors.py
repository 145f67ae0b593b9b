"""Bad input gives one line that says what to do, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from solo_npu.deploy.context import DeployError
from solo_npu.deploy.pipeline import main
from solo_npu.deploy.runners import TorchAieRunner
from solo_npu.runtime import resolve_device

ROOT = Path(__file__).resolve().parents[2]


def _one_line_error(capsys, code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    return err


def test_missing_checkpoint_through_the_cli(synthetic_coco, tmp_path):
    proc = subprocess.run(
        [sys.executable, "deploy.py", "model=solov2_tiny", f"data.root={synthetic_coco}", "data.generate=false",
         "deploy.input_shape=[128,160]", "checkpoint=/no/such/best.pth", f"run_dir={tmp_path / 'run'}",
         "stages=[export]"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: checkpoint not found: /no/such/best.pth (pass checkpoint=PATH to a .pth file)")


def test_a_training_run_folder_as_checkpoint_names_its_file(deploy_cfg, tmp_path, capsys):
    """It said "checkpoint not found" of a folder that is there."""
    run = tmp_path / "train_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pth").write_bytes(b"")
    err = _one_line_error(capsys, main(deploy_cfg(f"checkpoint={run}", f"run_dir={tmp_path / 'run'}",
                                                  "stages=[export]")))
    assert err == f"error: {run} is a directory, not a checkpoint file: pass the file, e.g. {run}/checkpoints/last.pth"


@pytest.mark.parametrize("shape, needle", [("[100,150]", "multiples of 32"), ("[0,64]", "multiples of 32")])
def test_bad_input_shape(deploy_cfg, tmp_path, capsys, shape, needle):
    cfg = deploy_cfg(f"deploy.input_shape={shape}", f"run_dir={tmp_path}")
    assert needle in _one_line_error(capsys, main(cfg))


def test_input_shape_differs_from_export(make_ctx, deploy_cfg, tmp_path, capsys):
    from solo_npu.deploy.export import run_export

    ctx = make_ctx("deploy.export_formats=[onnx]", "deploy.batch_sizes=[1]", run_dir=tmp_path)
    run_export(ctx)
    cfg = deploy_cfg("deploy.input_shape=[64,64]", f"run_dir={tmp_path}", "stages=[infer]")
    err = _one_line_error(capsys, main(cfg))
    assert "take [128, 160] but deploy.input_shape is [64, 64]" in err and "re-run stages=[export]" in err

    # A corrupt ONNX file is caught by verify's onnx.checker.
    (tmp_path / "export" / "model_b1.onnx").write_bytes(b"\x08\x07garbage")
    cfg = deploy_cfg(f"run_dir={tmp_path}", "stages=[verify]", "deploy.batch_sizes=[1]")
    err = _one_line_error(capsys, main(cfg))
    assert err.startswith(f"error: corrupt ONNX file {tmp_path}/export/model_b1.onnx") and "re-export" in err


def test_empty_image_folder(deploy_cfg, synthetic_coco, tmp_path, capsys):
    root = tmp_path / "empty"
    (root / "val2017").mkdir(parents=True)
    shutil.copytree(synthetic_coco / "annotations", root / "annotations")
    cfg = deploy_cfg(f"data.root={root}", f"run_dir={tmp_path / 'run'}", "stages=[preprocess]")
    err = _one_line_error(capsys, main(cfg))
    assert err.startswith(f"error: no images found in {root}/val2017") and "data.root" in err


def test_missing_annotation_file(deploy_cfg, tmp_path, capsys):
    cfg = deploy_cfg(f"data.root={tmp_path / 'nowhere'}", f"run_dir={tmp_path / 'run'}", "stages=[preprocess]")
    err = _one_line_error(capsys, main(cfg))
    assert err.startswith(f"error: data.val.ann_file: annotation file {tmp_path}/nowhere/annotations/"
                          "instances_val2017.json not found"), err


@pytest.mark.parametrize("missing", ["root", "val2017"])
def test_missing_dataset_is_reported_before_the_export(deploy_cfg, synthetic_coco, tmp_path, capsys, missing):
    """export then verify: a data.root that is not there, or lacks the image folder, is one line before the export
    runs (the export takes minutes for R50), not after it."""
    root = tmp_path / "data"
    if missing == "val2017":
        shutil.copytree(synthetic_coco / "annotations", root / "annotations")
    cfg = deploy_cfg(f"data.root={root}", f"run_dir={tmp_path / 'run'}", "stages=[export,verify]")
    err = _one_line_error(capsys, main(cfg))
    key, kind = ("ann_file", "annotation file") if missing == "root" else ("img_dir", "image folder")
    assert err.startswith(f"error: data.val.{key}: {kind} {root}/"), err
    assert not (tmp_path / "run" / "export").exists()  # nothing was exported


@pytest.mark.parametrize(("overrides", "needle"), [
    (["deploy.backends=[torchscript]", "deploy.export_formats=[onnx]"],
     "error: deploy.backends=['torchscript']: torchscript runs the torchscript files, which "
     "deploy.export_formats=['onnx'] leaves out: add torchscript to deploy.export_formats, or drop torchscript from "
     "deploy.backends"),
    (["deploy.batch_sizes=[1,2]", "deploy.infer.batch_sizes=[3]"],
     "error: deploy.infer.batch_sizes=[3]: each must be one of deploy.batch_sizes=[1, 2]"),
    (["deploy.opset=99"], "error: deploy.opset=99: torch "),
    # above the TorchScript exporter's highest (20 on torch 2.13, 17 on 2.1), torch 2.13 wrote a file stamped 21
    # of opset-20 operators, with a warning only
    (["deploy.opset=21"], "error: deploy.opset=21: torch "),
])
def test_settings_later_stages_refuse_are_refused_before_the_export(deploy_cfg, tmp_path, capsys, overrides, needle):
    """Each was found only after the export (and the preprocessing) had run, or, for an opset above the exporter's,
    after the exporter printed the whole graph."""
    cfg = deploy_cfg(f"run_dir={tmp_path / 'run'}", "stages=[export,verify,preprocess,infer,evaluate]", *overrides)
    err = _one_line_error(capsys, main(cfg))
    assert err.startswith(needle), err
    assert not (tmp_path / "run" / "export").exists()  # nothing was exported


def test_export_alone_needs_no_dataset(deploy_cfg, tmp_path):
    from solo_npu.deploy.pipeline import run_pipeline

    cfg = deploy_cfg(f"data.root={tmp_path / 'nowhere'}", f"run_dir={tmp_path / 'run'}", "stages=[export]",
                     "deploy.export_formats=[onnx]", "deploy.batch_sizes=[1]")
    ctx = run_pipeline(cfg)
    assert (tmp_path / "run" / "export" / "model_b1.onnx").is_file() and "export" in ctx.results


def test_annotation_file_cut_short(deploy_cfg, synthetic_coco, tmp_path, capsys):
    root = tmp_path / "cut"
    shutil.copytree(synthetic_coco, root)
    ann_file = root / "annotations" / "instances_val2017.json"
    ann_file.write_bytes(ann_file.read_bytes()[:500])
    cfg = deploy_cfg(f"data.root={root}", f"run_dir={tmp_path / 'run'}", "stages=[preprocess]")
    assert _one_line_error(capsys, main(cfg)).startswith(f"error: {ann_file} is not a JSON file (")


def test_unknown_backend_stage_and_rerun_without_inputs(deploy_cfg, tmp_path, capsys):
    cfg = deploy_cfg(f"run_dir={tmp_path}", "stages=[deploy_everything]")
    assert "unknown stage(s) ['deploy_everything']" in _one_line_error(capsys, main(cfg))
    cfg = deploy_cfg(f"run_dir={tmp_path}", "deploy.backends=[onnxruntime,tensorrt]")
    assert "unknown backend(s) ['tensorrt'] in deploy.backends" in _one_line_error(capsys, main(cfg))
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "manifest.json").write_text(json.dumps({"input_shape": [3, 128, 160]}))
    cfg = deploy_cfg(f"run_dir={tmp_path}", "stages=[infer]")
    err = _one_line_error(capsys, main(cfg))
    assert "preprocessed inputs not found" in err and "stages=[preprocess]" in err


def test_backend_not_installed():
    with pytest.raises(DeployError, match=r"torch_aie is not installed \(install the Ascend torch_aie wheel"):
        TorchAieRunner("model.ts", ["masks"], resolve_device("cpu"))


def test_predict_task_is_wired(deploy_cfg, synthetic_coco, tmp_path, capsys):
    cfg = deploy_cfg("task=predict", f"output={tmp_path / 'pred'}")
    assert "task=predict needs input=IMAGE_OR_DIR" in _one_line_error(capsys, main(cfg))
    images = tmp_path / "images"
    images.mkdir()
    for name in sorted(p.name for p in (synthetic_coco / "val2017").iterdir())[:2]:
        shutil.copy(synthetic_coco / "val2017" / name, images / name)
    cfg = deploy_cfg("task=predict", f"input={images}", f"output={tmp_path / 'pred'}")
    assert main(cfg) == 0
    assert len(list((tmp_path / "pred").glob("*.png"))) == 2
    assert isinstance(json.loads((tmp_path / "pred" / "predictions.json").read_text()), list)
    cfg = deploy_cfg("task=predict", f"input={tmp_path / 'pred' / 'nothing_here'}", f"output={tmp_path / 'p2'}")
    assert "input not found" in _one_line_error(capsys, main(cfg))


def test_predict_applies_the_runtime_section_as_the_deploy_stages(deploy_cfg, synthetic_coco, tmp_path):
    """task=predict sets the device up as the deploy stages do: runtime.npu.env (ASCEND_RT_VISIBLE_DEVICES and the
    like, applied where the device may be an NPU: auto here, which resolves to this machine's device) and
    runtime.seed. It used to resolve the device alone, and those settings were dropped in silence."""
    images = tmp_path / "images"
    images.mkdir()
    name = sorted(p.name for p in (synthetic_coco / "val2017").iterdir())[0]
    shutil.copy(synthetic_coco / "val2017" / name, images / name)
    saved = dict(os.environ)
    try:
        os.environ.pop("SOLO_PREDICT_PROBE", None)
        lively = ["model.test.score_thr=0.001", "model.test.filter_thr=0.0"]  # random weights that detect
        cfg = deploy_cfg("task=predict", f"input={images}", f"output={tmp_path / 'pred'}", "runtime.device=auto",
                         "+runtime.npu.env.SOLO_PREDICT_PROBE=set_by_predict", "runtime.seed=123", *lively)
        assert main(cfg) == 0
        assert os.environ.get("SOLO_PREDICT_PROBE") == "set_by_predict"
        first = (tmp_path / "pred" / "predictions.json").read_text()
        assert main(cfg) == 0  # random weights drawn after runtime.seed: the same predictions again
        assert first != "[]" and (tmp_path / "pred" / "predictions.json").read_text() == first
        assert main(deploy_cfg("task=predict", f"input={images}", f"output={tmp_path / 'pred'}",
                               "runtime.seed=124", *lively)) == 0
        assert (tmp_path / "pred" / "predictions.json").read_text() != first
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_data_settings_are_checked_as_in_training(deploy_cfg, tmp_path, capsys):
    cfg = deploy_cfg("data.normalize.style=caffe", "data.normalize.mean=[123.675,116.28,103.53]",
                     f"run_dir={tmp_path}", "stages=[plan]")
    assert "is the pytorch style's mean, but data.normalize.style=caffe feeds BGR" in _one_line_error(capsys, main(cfg))
    cfg = deploy_cfg("data.max_instances=0", f"run_dir={tmp_path}", "stages=[plan]")
    assert _one_line_error(capsys, main(cfg)) == "error: data.max_instances=0: must be >= 1"


def test_runtime_deterministic_holds_for_deploy(deploy_cfg):
    import torch

    from solo_npu.deploy.context import start_device

    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic)
    try:
        torch.use_deterministic_algorithms(False)
        start_device(deploy_cfg("runtime.deterministic=true"))
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[1:]


def test_later_stages_with_other_model_settings_than_the_export_are_refused(make_ctx, deploy_cfg, tmp_path, capsys):
    """The exported graph holds the model's settings (score_thr, nms_pre, mask_thr, ...): re-running later stages
    with another model.test.score_thr scored the old graph with the new host-side settings and eager reference."""
    from solo_npu.deploy.export import run_export

    ctx = make_ctx("deploy.export_formats=[onnx]", "deploy.batch_sizes=[1]", run_dir=tmp_path)
    run_export(ctx)
    cfg = deploy_cfg(f"run_dir={tmp_path}", "stages=[infer]", "deploy.batch_sizes=[1]", "model.test.score_thr=0.3")
    err = _one_line_error(capsys, main(cfg))
    assert "holds an export made with other model settings (model.test.score_thr=" in err
    assert "0.3 here" in err and "add export to stages" in err
    # a setting of eager prediction alone is not in the graph: the same export serves it
    cfg = deploy_cfg(f"run_dir={tmp_path}", "stages=[preprocess]", "deploy.batch_sizes=[1]",
                     "model.test.bound_before_conv=false")
    assert main(cfg) == 0
