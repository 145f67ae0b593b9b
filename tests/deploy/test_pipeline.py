"""Preprocess file formats, and preprocess -> infer -> evaluate: backend AP equals eager AP."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from failing_writes import DISK_FULL, fail_text_writes

from solo_npu.data.transforms import PYTORCH_MEAN, PYTORCH_STD
from solo_npu.deploy.evaluate import run_evaluate
from solo_npu.deploy.export import run_export
from solo_npu.deploy.infer import read_image_outputs, run_infer
from solo_npu.deploy.pipeline import run_pipeline
from solo_npu.deploy.preprocess import run_preprocess
from solo_npu.deploy.report import run_report


@pytest.fixture(scope="module")
def pipeline_run(make_ctx):
    """export -> preprocess -> infer (pytorch, onnxruntime at batch 1 and 2) -> evaluate with the eager reference."""
    ctx = make_ctx("deploy.backends=[pytorch,onnxruntime]", "deploy.evaluate.eager=true",
                   "deploy.export_formats=[onnx]")
    for stage in (run_export, run_preprocess, run_infer, run_evaluate):
        stage(ctx)
    return ctx


def _letterbox_reference(path, canvas):
    """Keep-ratio fit into the canvas, ImageNet normalisation, centred zero padding, CHW float32."""
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    h0, w0 = image.shape[:2]
    factor = min(canvas[0] / h0, canvas[1] / w0)
    h, w = int(h0 * factor + 0.5), int(w0 * factor + 0.5)
    image = (cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32) - PYTORCH_MEAN) / PYTORCH_STD
    out = np.zeros((canvas[0], canvas[1], 3), np.float32)
    top, left = (canvas[0] - h) // 2, (canvas[1] - w) // 2
    out[top:top + h, left:left + w] = image
    return out.transpose(2, 0, 1), (h0, w0), (h, w), (top, left)


def test_preprocess_files_match_reference_letterbox(pipeline_run, synthetic_coco, canvas):
    ctx = pipeline_run
    index = json.loads(ctx.path("preprocess", "index.json").read_text())
    assert len(index["images"]) == 8 and index["input_shape"] == [3, *canvas]
    info_lines = ctx.path("preprocess", "dataset.info").read_text().splitlines()
    meta_lines = ctx.path("preprocess", "meta.info").read_text().splitlines()
    assert len(info_lines) == len(meta_lines) == 8
    for i, rec in enumerate(index["images"]):
        data = np.fromfile(ctx.run_dir / rec["bin"], dtype=np.float32)
        assert data.size == 3 * canvas[0] * canvas[1]
        ref, ori, img_shape, pad = _letterbox_reference(synthetic_coco / "val2017" / rec["file_name"], canvas)
        np.testing.assert_allclose(data.reshape(ref.shape), ref, atol=1e-4)
        meta = json.loads((ctx.run_dir / rec["meta"]).read_text())
        assert (tuple(meta["ori_shape"]), tuple(meta["img_shape"]), tuple(meta["pad"])) == (ori, img_shape, pad)
        assert meta["canvas"] == list(canvas)
        idx, bin_path, width, height = info_lines[i].split()
        assert (int(idx), bin_path.endswith(f"{rec['stem']}.bin"), int(width), int(height)) == (
            i, True, canvas[1], canvas[0])
        assert meta_lines[i].split()[3:] == [str(ori[1]), str(ori[0])]


def test_outputs_layout_is_per_image(pipeline_run):
    ctx = pipeline_run
    info = json.loads(ctx.path("infer", "onnxruntime_b2", "outputs.json").read_text())
    assert info["output_names"] == ["masks", "labels", "scores"] and len(info["stems"]) == 8
    stem = info["stems"][-1]
    a = read_image_outputs(ctx.path("infer", "onnxruntime_b2"), stem, info["output_names"], info["outputs"])
    b = read_image_outputs(ctx.path("infer", "pytorch_b1"), stem, info["output_names"], info["outputs"])
    assert a["masks"].shape == (20, 32, 40) and a["labels"].dtype == np.int32
    np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-4)


def test_backend_ap_matches_eager(pipeline_run):
    metrics = json.loads(pipeline_run.path("evaluate", "metrics.json").read_text())
    eager = metrics["eager"]["metrics"]["segm"]["AP"]
    assert eager > 0.3  # the fitted model is far from trivial
    for key in ("pytorch_b1", "pytorch_b2", "onnxruntime_b1", "onnxruntime_b2"):
        assert abs(metrics[key]["metrics"]["segm"]["AP"] - eager) <= 0.005, key
    results = json.loads(pipeline_run.path("evaluate", "onnxruntime_b1.json").read_text())
    assert results and {"image_id", "category_id", "score", "segmentation"} <= set(results[0])
    assert results[0]["category_id"] in (1, 3, 7)  # contiguous labels mapped back to COCO ids


def test_stages_rerun_alone_and_report(pipeline_run, make_ctx, capsys):
    """benchmark + report from what earlier stages wrote, in a fresh context on the same run dir."""
    # Published figures come from the model yaml's deploy.anchors (solov2.yaml holds the SOLOV2 guide's).
    ctx = make_ctx("deploy.backends=[pytorch,onnxruntime]", "stages=[benchmark,report]",
                   "deploy.benchmark.e2e_images=2",
                   '+model.deploy.anchors=[{source:"SOLOV2 torch_aie guide",fps:26.19}]',
                   run_dir=pipeline_run.run_dir)
    run_pipeline(ctx.cfg, ctx=ctx)
    out = capsys.readouterr().out
    bench = json.loads(ctx.path("benchmark", "benchmark.json").read_text())
    rows = {(r["backend"], r["batch_size"]): r for r in bench["rows"]}
    assert set(rows) == {("pytorch", 1), ("pytorch", 2), ("onnxruntime", 1), ("onnxruntime", 2)}
    for (_, bs), r in rows.items():
        assert r["p50_ms"] > 0 and r["mean_ms"] > 0 and r["e2e_throughput"] > 0
        assert r["throughput"] == pytest.approx(1000 * bs / r["mean_ms"])
        assert r["AP"] is not None and r["peak_mb"] > 100  # process RSS with torch loaded
    assert "| backend | batch | latency mean (ms) |" in out and "SOLOV2 torch_aie guide" in out
    assert (ctx.run_dir / "report.md").read_text().count("| onnxruntime |") == 2


def test_report_without_the_benchmark_stage_gives_the_evaluate_aps(pipeline_run, make_ctx, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(pipeline_run.run_dir, run_dir, ignore=shutil.ignore_patterns("benchmark"))
    ctx = make_ctx("deploy.backends=[pytorch,onnxruntime]", "stages=[report]", run_dir=run_dir)
    run_report(ctx)
    metrics = json.loads(ctx.path("evaluate", "metrics.json").read_text())
    report = (run_dir / "report.md").read_text()
    assert "AP of the evaluate stage (no benchmark stage ran: nothing was timed):" in report
    rows = {line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ")}
    for key in ("pytorch_b1", "onnxruntime_b1", "onnxruntime_b2", "eager"):
        ap = metrics[key]["metrics"]["segm"]["AP"]
        assert f"| {key} | {metrics[key]['images']} | {round(ap, 4):.4g} |" in rows[key]
    data = json.loads((run_dir / "report.json").read_text())
    assert {r["run"] for r in data["evaluated"]} >= {"pytorch_b1", "onnxruntime_b1", "eager"}


@pytest.mark.parametrize("stage,relative", [(run_preprocess, ("preprocess", "dataset.info")),
                                            (run_preprocess, ("preprocess", "meta.info")),
                                            (run_report, ("report.md",))], ids=["dataset.info", "meta.info", "report"])
def test_failed_rewrite_keeps_previous_file(pipeline_run, monkeypatch, stage, relative):
    """A stage run again whose write of one of its text files fails after 20 characters (a full disk) leaves
    the previous file byte for byte and no temporary file."""
    path = pipeline_run.path(*relative)
    if not path.is_file():
        stage(pipeline_run)
    before = path.read_bytes()
    failures = fail_text_writes(monkeypatch, 20, DISK_FULL, name=path.name)
    with pytest.raises(OSError, match="No space left"):
        stage(pipeline_run)
    monkeypatch.undo()
    assert failures == [DISK_FULL], "the failure was not injected"
    assert path.read_bytes() == before
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_end_to_end_timing_runs_and_counts_whole_batches_of_real_images(make_ctx, monkeypatch):
    """e2e at batch 4 over 3 images: 4 images read, run and post-processed, the first taken again, and 4 counted;
    it ran a batch padded with a filler whose model work was timed but neither post-processed nor counted."""
    from solo_npu.deploy.benchmark import e2e_count, time_end_to_end
    from solo_npu.deploy.preprocess import build_deploy_dataset
    from solo_npu.deploy.runners import PyTorchRunner

    ctx = make_ctx("deploy.batch_sizes=[4]")
    dataset = build_deploy_dataset(ctx)[0]
    runner = PyTorchRunner(ctx.adapter.export_module(ctx.model()), ctx.adapter.output_names, ctx.device)
    seen, posted = [], []

    def spy(images):
        seen.append(images.copy())
        return runner(images)

    postprocess = ctx.adapter.postprocess
    monkeypatch.setattr(ctx.adapter, "postprocess", lambda out, meta: posted.append(meta) or postprocess(out, meta))
    assert time_end_to_end(ctx, spy, dataset, 3, 4) > 0
    assert e2e_count(3, 4) == 4 and e2e_count(8, 4) == 8 and e2e_count(9, 4) == 12
    assert [len(s) for s in seen] == [4] and len(posted) == 4
    np.testing.assert_array_equal(seen[0][3], seen[0][0])
    assert not np.array_equal(seen[0][2], seen[0][0])
