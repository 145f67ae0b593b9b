"""SOLOv2's exported selection (``select_static``: pre_budget pairs through the dynamic conv, Matrix NMS, top K)
timed eagerly and as the ONNX graph in ONNX Runtime, for this checkout and, with ``--against COMMIT``, for that
commit in one run (a temporary ``git worktree`` of it, run in a child process with its own code first on the path).

The model has the R50 config's head layout (grids, strides, 80 classes, K = 100, pre_budget 1000) with narrow
layers, so the post-processing is most of the graph; score_thr and filter_thr are 0, so that every slot is a
real candidate. Same weights, same input on both sides; the scores' sum shows that the outputs agree.

Usage: ``python benchmarks/export_selection.py [--against e7c1508] [--iters 5] [--threads 1] [--no-write]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")  # as in the other benchmarks

HERE = Path(__file__).resolve().parent
HEADING = "## SOLOv2 export selection"
OVERRIDES = ["model=solov2", "model.pretrained=null", "model.backbone.depth=18", "+model.backbone.base_channels=8",
             "model.neck.in_channels=[8,16,32,64]", "model.neck.out_channels=16", "model.head.in_channels=16",
             "model.head.feat_channels=16", "model.head.stacked_convs=1", "model.head.num_groups=4",
             "model.head.mask_feature.feat_channels=8", "model.head.mask_feature.out_channels=8",
             "data.num_classes=80", "model.test.score_thr=0.0", "model.test.filter_thr=0.0"]


def median_ms(fn, iters: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2], out


def measure(root: Path, iters: int) -> dict:
    """Export and time the graph with the code under ``root`` (imported first)."""
    sys.path.insert(0, str(root))
    import numpy as np
    import onnxruntime as ort
    import torch
    from hydra import compose, initialize_config_dir

    from solo_npu.config.schema import register_configs
    from solo_npu.deploy.adapters import ModelAdapter
    from solo_npu.deploy.export import example_input, export_onnx, slim_onnx
    from solo_npu.models import build_model
    from solo_npu.models.solov2.postprocess import flatten_predictions, select_static

    register_configs()
    with initialize_config_dir(str(root / "conf"), version_base="1.3"):
        cfg = compose("deploy", overrides=OVERRIDES)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    x = example_input(1, [800, 1216])
    with torch.no_grad():
        cls_preds, kernel_preds, mask_feats = model.forward_head(x)
        scores, kernels = flatten_predictions(cls_preds, kernel_preds)
        eager_ms, _ = median_ms(lambda: select_static(scores, kernels, mask_feats, model.cell_strides,
                                                      model.test_cfg, k=model.export_topk), iters)
    adapter = ModelAdapter(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(adapter.export_module(), x, Path(tmp) / "m.onnx", adapter.output_names, 13)
        slim_onnx(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        ort_ms, outputs = median_ms(lambda: session.run(None, {"input": x.numpy()}), iters)
    return {"eager_ms": eager_ms, "ort_ms": ort_ms, "valid": int((outputs[2] > 0).sum()),
            "scores_sum": float(np.float64(outputs[2]).sum()), "torch": torch.__version__, "ort": ort.__version__}


def measure_commit(commit: str, iters: int, threads: int | None) -> dict:
    """:func:`measure` for ``commit`` in a temporary worktree, in a child process."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(HERE.parent), "worktree", "add", "--detach", "-q", str(tree), commit],
                       check=True)
        try:
            argv = [sys.executable, __file__, "--child", str(tree), "--iters", str(iters)]
            argv += ["--threads", str(threads)] if threads else []
            env = {**os.environ, "PYTHONPATH": str(tree)}
            done = subprocess.run(argv, check=True, capture_output=True, text=True, env=env, cwd=tree)
            return json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            subprocess.run(["git", "-C", str(HERE.parent), "worktree", "remove", "--force", str(tree)], check=False)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="a commit to measure in the same run")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(Path(args.child), args.iters)))
        return ""
    head = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "this checkout"
    rows = [(head + " (this checkout)", measure_commit("HEAD", args.iters, args.threads))]
    if args.against:
        rows.insert(0, (args.against, measure_commit(args.against, args.iters, args.threads)))
    sys.path.insert(0, str(HERE))
    from common import command_line, describe_machine, publish

    lines = [HEADING, "", f"Measured {datetime.date.today().isoformat()} by "
             f"`{command_line('export_selection.py', sys.argv[1:] if argv is None else argv)}` on "
             f"{describe_machine()}, {torch.get_num_threads()} torch threads, onnxruntime {rows[-1][1]['ort']}. "
             "SOLOv2 with the R50 config's head layout (80 classes, 3872 cells, pre_budget 1000, K = 100) and "
             "narrow layers at 800x1216, score_thr and filter_thr 0; committed code (HEAD) of each row, each in "
             "its own worktree and process. Eager: `select_static` on the head's outputs; ONNX Runtime: the whole "
             "exported graph (opset 13, slimmed). Median of the timed runs after one warm-up.", "",
             "| commit | eager select_static (ms) | ONNX Runtime, whole graph (ms) | filled slots | scores' sum |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for label, r in rows:
        lines.append(f"| {label} | {r['eager_ms']:.0f} | {r['ort_ms']:.0f} | {r['valid']} | {r['scores_sum']:.6f} |")
    lines.append("")
    return publish(HEADING, lines, write=not args.no_write)


if __name__ == "__main__":
    main()
