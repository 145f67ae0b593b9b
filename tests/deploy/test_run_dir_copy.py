"""A deploy run directory is self-contained: its manifest and compile record name files relative to it, so a copy
(to the 310P host, or after moving the original away) runs its own files; a directory that holds another
model's export refuses to be reused for stages after the export; an .om that compile_310p.sh wrote by hand after
the compile stage is used."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from deploy_standins import write_om

from solo_npu.deploy.backends import compiled_file
from solo_npu.deploy.context import DeployError, write_json
from solo_npu.deploy.export import load_manifest, run_export
from solo_npu.deploy.infer import run_infer
from solo_npu.deploy.pipeline import check_same_model
from solo_npu.deploy.preprocess import run_preprocess


def test_a_copied_run_directory_runs_its_own_files(make_ctx, tmp_path) -> None:
    original = tmp_path / "orig"
    ctx = make_ctx("deploy.backends=[onnxruntime]", "deploy.batch_sizes=[1]", "deploy.num_images=2",
                   run_dir=original)
    run_export(ctx)
    run_preprocess(ctx)
    copy = tmp_path / "copied"
    shutil.copytree(original, copy)
    shutil.rmtree(original)  # the original is gone: only the copy's files can be read
    ctx = make_ctx("deploy.backends=[onnxruntime]", "deploy.batch_sizes=[1]", "deploy.num_images=2", run_dir=copy)
    assert load_manifest(ctx)["files"]["onnx"]["1"] == str(copy / "export" / "model_b1.onnx")
    summary = run_infer(ctx)
    assert summary and all(entry.get("images") == 2 for entry in summary.values()), summary


def test_stages_after_export_refuse_another_models_run_directory(make_ctx, tmp_path) -> None:
    run_dir = tmp_path / "run"
    ctx = make_ctx("deploy.backends=[onnxruntime]", "deploy.batch_sizes=[1]", run_dir=run_dir)
    run_export(ctx)
    check_same_model(ctx, ["infer", "evaluate"])  # the same model: nothing to say
    other = make_ctx("deploy.backends=[onnxruntime]", "deploy.batch_sizes=[1]", "model.name=solov2_light_r18",
                     run_dir=run_dir)
    with pytest.raises(DeployError, match=r"holds the export of model=solov2_tiny .* but this run names "
                                          r"model=solov2_light_r18 .*: add export to stages, or use another run_dir"):
        check_same_model(other, ["infer", "evaluate", "report"])
    check_same_model(other, ["export", "infer"])  # exporting again replaces it
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    manifest["checkpoint"] = "/data/ckpt/epoch_12.pth"
    (run_dir / "export" / "manifest.json").write_text(json.dumps(manifest))
    moved = make_ctx("deploy.backends=[onnxruntime]", "checkpoint=/elsewhere/epoch_12.pth", run_dir=run_dir)
    check_same_model(moved, ["infer"])  # the same checkpoint file, copied elsewhere with the run directory
    newer = make_ctx("deploy.backends=[onnxruntime]", "checkpoint=/data/ckpt/epoch_24.pth", run_dir=run_dir)
    with pytest.raises(DeployError, match="checkpoint=/data/ckpt/epoch_12.pth, but this run names"):
        check_same_model(newer, ["infer"])


def test_an_om_compiled_by_hand_after_the_compile_stage_is_used(make_ctx, tmp_path) -> None:
    ctx = make_ctx("deploy.backends=[om]", run_dir=tmp_path / "run")
    ctx.path("compile").mkdir(parents=True)
    leftover = write_om(ctx.path("compile", "model_b2.om"), "model.onnx")  # older than the compile record
    # the compile stage on a host without atc: the commands went to compile_310p.sh, no .om recorded
    write_json(ctx.path("compile", "compile.json"), {"om": {}, "torch_aie": {}, "messages": ["atc"]})
    stamp = ctx.path("compile", "compile.json").stat().st_mtime
    os.utime(leftover, (stamp - 60, stamp - 60))
    assert compiled_file(ctx, "om", 1) is None and compiled_file(ctx, "om", 2) is None
    by_hand = write_om(ctx.path("compile", "model_b1.om"), "model.onnx")  # bash compile_310p.sh on the 310P host
    os.utime(by_hand, (stamp + 60, stamp + 60))
    assert compiled_file(ctx, "om", 1) == str(by_hand)
    assert compiled_file(ctx, "om", 2) is None and leftover.is_file()


def test_a_missing_preprocessed_input_names_the_stage_to_rerun(make_ctx, tmp_path) -> None:
    from solo_npu.deploy.preprocess import load_index, load_inputs

    ctx = make_ctx("deploy.backends=[onnxruntime]", "deploy.batch_sizes=[1]", "deploy.num_images=2",
                   run_dir=tmp_path / "run")
    run_preprocess(ctx)
    records = load_index(ctx)["images"]
    (ctx.run_dir / records[1]["bin"]).unlink()
    assert load_inputs(ctx, records[:1]).shape[0] == 1
    with pytest.raises(DeployError, match=r"preprocessed input .* is missing .*: re-run stages=\[preprocess\]"):
        load_inputs(ctx, records)


def test_preprocessed_stems_have_no_dot_and_never_repeat(make_ctx, synthetic_coco, tmp_path) -> None:
    """ais_bench names an output after its input up to the first dot (io_oprations.py save_tensors_to_file), so
    shot.1.png and shot.2.png must not become shot.1.bin and shot.2.bin; a/b.png and a_b.png must not share one."""
    from solo_npu.deploy.preprocess import load_index

    root = tmp_path / "coco"
    shutil.copytree(synthetic_coco, root)
    path = root / "annotations" / "instances_val2017.json"
    ann = json.loads(path.read_text())
    names = ["shot.1.png", "shot.2.png", "a/b.png", "a_b.png"]
    (root / "val2017" / "a").mkdir()
    for image, name in zip(ann["images"], names):
        (root / "val2017" / image["file_name"]).rename(root / "val2017" / name)
        image["file_name"] = name
    path.write_text(json.dumps(ann))
    ctx = make_ctx("deploy.backends=[onnxruntime]", f"data.root={root}", "deploy.num_images=4",
                   run_dir=tmp_path / "run")
    run_preprocess(ctx)
    stems = [r["stem"] for r in load_index(ctx)["images"]]
    assert len(set(stems)) == 4 and not any("." in s for s in stems), stems
    assert all((ctx.run_dir / "preprocess" / "bins" / f"{s}.bin").is_file() for s in stems)
