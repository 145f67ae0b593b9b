"""Export (TorchScript + ONNX at batch 1 and 2) and the verify stage on the fitted tiny SOLOv2."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from solo_npu.deploy.context import DeployError
from solo_npu.deploy.export import load_manifest, run_export
from solo_npu.deploy.preprocess import build_deploy_dataset, collate_canvas
from solo_npu.deploy.verify import run_verify

CANVAS = (128, 160)  # conftest.CANVAS


@pytest.fixture(scope="module")
def exported(make_ctx):
    """One export shared by the module (both formats, batch 1 and 2)."""
    ctx = make_ctx()
    run_export(ctx)
    return ctx


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_export_files_and_graph_signature(exported):
    manifest = load_manifest(exported)
    h, w = CANVAS
    k = exported.model().export_topk
    assert manifest["output_names"] == ["masks", "labels", "scores"]
    assert manifest["outputs"] == {"masks": {"shape": [k, h // 4, w // 4], "dtype": "float32"},
                                   "labels": {"shape": [k], "dtype": "int32"},
                                   "scores": {"shape": [k], "dtype": "float32"}}
    for bs in (1, 2):
        graph = onnx.load(manifest["files"]["onnx"][str(bs)]).graph
        assert graph.input[0].name == "input"
        assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [bs, 3, h, w]
        assert [o.name for o in graph.output] == ["masks", "labels", "scores"]
        assert graph.output[0].type.tensor_type.shape.dim[0].dim_value == bs
        ts = torch.jit.load(manifest["files"]["torchscript"][str(bs)])
        masks, labels, scores = ts(torch.zeros(bs, 3, h, w))
        assert masks.shape == (bs, k, h // 4, w // 4) and labels.dtype == torch.int32 and scores.shape == (bs, k)


def test_batch2_onnx_matches_eager_per_image(exported, synthetic_coco):
    """Each image of a batch-2 ONNX run equals eager PyTorch on that image alone."""
    dataset, _ = build_deploy_dataset(exported)
    images, _ = collate_canvas([dataset[0], dataset[1]], CANVAS)
    sess = ort.InferenceSession(load_manifest(exported)["files"]["onnx"]["2"], providers=["CPUExecutionProvider"])
    masks, labels, scores = sess.run(None, {"input": images.numpy()})
    model = exported.model()
    for i in range(2):
        with torch.no_grad():
            ref_masks, ref_labels, ref_scores = model.export_forward(images[i:i + 1])
        valid = ref_scores[0].numpy() > 0
        assert valid.sum() >= 1  # the fitted model finds the shapes
        np.testing.assert_allclose(scores[i], ref_scores[0].numpy(), atol=1e-4)
        np.testing.assert_array_equal(labels[i][valid], ref_labels[0].numpy()[valid])
        np.testing.assert_allclose(masks[i][valid], ref_masks[0].numpy()[valid], atol=1e-4)


def test_verify_passes_and_reports_table(exported, capsys):
    run_verify(exported)
    out = capsys.readouterr().out
    assert "| backend | batch | scores_max_abs | masks_max_abs | labels_mismatch | valid | status |" in out
    import json

    rows = json.loads(exported.path("verify", "verify.json").read_text())["rows"]
    assert {(r["backend"], r["batch"]) for r in rows} == {
        ("onnxruntime", 1), ("torchscript", 1), ("onnxruntime", 2), ("torchscript", 2), ("pytorch", 2)}
    for r in rows:
        assert r["status"] == "ok" and r["valid"] >= 3
        assert r["scores_max_abs"] <= 1e-4 and r["masks_max_abs"] <= 1e-4 and r["labels_mismatch"] == 0


@pytest.mark.parametrize(("asked", "verified"), [
    (["onnxruntime"], {"onnxruntime"}),
    (["om"], {"onnxruntime"}),  # ATC compiles the ONNX file: an export fault is told apart from a compile one
    (["pytorch", "torch_aie"], {"pytorch", "torchscript"}),
])
def test_verify_runs_the_backends_asked_for(exported, asked, verified):
    """deploy.backends names what verify runs too (it ran every in-process backend: with deploy.backends=[pytorch]
    the run verified, and could fail on, ONNX Runtime and TorchScript)."""
    import json

    saved = list(exported.settings.backends)
    exported.settings.backends = asked
    try:
        run_verify(exported)
    finally:
        exported.settings.backends = saved
    rows = json.loads(exported.path("verify", "verify.json").read_text())["rows"]
    assert {r["backend"] for r in rows} == verified


def test_verify_fails_above_tolerance(exported):
    exported.cfg.deploy.verify.atol = 0.0
    exported.cfg.deploy.verify.num_images = 1
    exported.settings.batch_sizes = [1]
    try:
        # Zero tolerance fails unless every backend is bit-identical to eager (ORT never is).
        with pytest.raises(DeployError, match="verify failed for onnxruntime"):
            run_verify(exported)
    finally:
        exported.cfg.deploy.verify.atol = 1e-4
        exported.cfg.deploy.verify.num_images = 2
        exported.settings.batch_sizes = [1, 2]


def test_torchscript_only_export_records_output_specs(make_ctx, exported):
    ctx = make_ctx("deploy.export_formats=[torchscript]", "deploy.batch_sizes=[2]")
    run_export(ctx)
    manifest = load_manifest(ctx)
    assert set(manifest["files"]) == {"torchscript"} and set(manifest["files"]["torchscript"]) == {"2"}
    assert manifest["outputs"] == load_manifest(exported)["outputs"]  # same specs as read from the ONNX graph


def test_failed_re_export_keeps_the_previous_models(make_ctx, tmp_path, monkeypatch):
    """An export that fails (or is stopped) partway leaves each exported file as the previous export wrote it."""
    import solo_npu.deploy.export as export

    ctx = make_ctx("deploy.batch_sizes=[1]", "deploy.slim=false", run_dir=tmp_path)
    run_export(ctx)
    files = {p.name: p.read_bytes() for p in (tmp_path / "export").iterdir() if p.suffix in (".onnx", ".ts")}
    assert set(files) == {"model_b1.onnx", "model_b1.ts"}

    def half_then_fail(module, example, path, *args):
        path.write_bytes(files["model_b1.onnx"][:1000])
        raise RuntimeError("exporter stopped")

    monkeypatch.setattr(export, "_torch_onnx_export", half_then_fail)
    with pytest.raises(DeployError, match="ONNX export of model_b1.onnx at opset .* failed: RuntimeError"):
        run_export(ctx)
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in (tmp_path / "export").iterdir() if p.suffix in (".onnx", ".ts")}
    assert after["model_b1.onnx"] == files["model_b1.onnx"]  # the TorchScript file, exported first, is a new one
    files = after

    def ts_half_then_fail(self, name, *args, **kwargs):
        with open(name, "wb") as f:
            f.write(files["model_b1.ts"][:1000])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.jit._trace.TopLevelTracedModule, "save", ts_half_then_fail)  # what trace returns
    with pytest.raises(OSError, match="No space left"):
        run_export(ctx)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "export").iterdir() if p.suffix in (".onnx", ".ts")} == files
    assert not [p.name for p in (tmp_path / "export").iterdir() if p.name.startswith(".")]
