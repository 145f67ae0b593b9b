"""Model-only CPU latency of eager PyTorch, TorchScript and ONNX Runtime (several session settings) at one
batch size, on the same static input: the check behind "ONNX Runtime is not slower than eager".

    python benchmarks/deploy_ort_vs_eager.py --model solov2 --shape 800 1216 --iters 5
    python benchmarks/deploy_ort_vs_eager.py --model solov2 --onnx outputs/deploy/.../export/model_b1.onnx \
        --ts outputs/deploy/.../export/model_b1.ts

Prints a markdown table (mean / p50 / p99 ms per batch, images/s). Random weights unless --checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

# Before anything imports torch (as in train.py): torch >= 2.5 imports installed device backends at `import torch`,
# and a torch_npu that cannot load CANN's libraries would end the benchmark there, on the CPU too. A set value wins.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from solo_npu.config import register_configs  # noqa: E402
from solo_npu.deploy.adapters import ModelAdapter  # noqa: E402
from solo_npu.deploy.benchmark import latency_stats, time_model  # noqa: E402
from solo_npu.deploy.context import build_eager_model  # noqa: E402
from solo_npu.deploy.export import example_input, export_onnx, export_torchscript  # noqa: E402
from solo_npu.deploy.runners import OnnxRuntimeRunner, PyTorchRunner, TorchScriptRunner  # noqa: E402
from solo_npu.deploy.verify import format_table  # noqa: E402
from solo_npu.runtime import resolve_device  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="solov2")
    parser.add_argument("--shape", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--onnx", default=None, help="an exported ONNX file (default: export to a temp dir)")
    parser.add_argument("--ts", default=None, help="an exported TorchScript file (default: trace to a temp dir)")
    args = parser.parse_args()

    register_configs()  # conf/deploy.yaml starts from the deploy_schema structured config
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("deploy", overrides=[f"model={args.model}", f"checkpoint={args.checkpoint or 'null'}"])
    device = resolve_device("cpu")
    model = build_eager_model(cfg).eval()
    adapter = ModelAdapter(model)
    module = adapter.export_module()
    images = example_input(args.batch, args.shape).numpy()
    tmp = Path(tempfile.mkdtemp(prefix="ort_vs_eager_"))
    onnx_path = args.onnx or export_onnx(module, torch.from_numpy(images), tmp / "model.onnx", adapter.output_names)
    ts_path = args.ts or export_torchscript(module, torch.from_numpy(images), tmp / "model.ts")

    runners = {
        "pytorch (eager)": PyTorchRunner(module, adapter.output_names, device),
        "torchscript": TorchScriptRunner(ts_path, adapter.output_names, device),
        "onnxruntime (default session)": OnnxRuntimeRunner(onnx_path, adapter.output_names, device),
        "onnxruntime (basic graph opt)": OnnxRuntimeRunner(onnx_path, adapter.output_names, device,
                                                           {"graph_optimization_level": "basic"}),
        f"onnxruntime ({torch.get_num_threads()} intra-op threads)": OnnxRuntimeRunner(
            onnx_path, adapter.output_names, device, {"intra_op_num_threads": torch.get_num_threads()}),
    }
    rows, reference = [], None
    for name, runner in runners.items():
        stats = latency_stats(time_model(runner, images, args.warmup, args.iters), args.batch)
        out = runner(images)
        reference = reference or out
        diff = float(np.abs(out["scores"] - reference["scores"]).max())
        rows.append({"backend": name, "mean ms": round(stats["mean_ms"], 1), "p50 ms": round(stats["p50_ms"], 1),
                     "p99 ms": round(stats["p99_ms"], 1), "img/s": round(stats["throughput"], 3),
                     "scores max abs vs eager": diff})
        print(f"{name}: {stats['mean_ms']:.1f} ms", flush=True)
    print(f"\n{args.model} {args.batch}x3x{args.shape[0]}x{args.shape[1]}, {args.iters} timed runs after "
          f"{args.warmup} warm-up, torch threads {torch.get_num_threads()}\n")
    print(format_table(rows, list(rows[0])))


if __name__ == "__main__":
    main()
