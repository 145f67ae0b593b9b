"""Deploy test helpers (imported by name: a module of its own, so it never clashes with another conftest)."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from solo_npu.config import register_configs
from solo_npu.runtime import DeviceInfo

ROOT = Path(__file__).resolve().parents[2]
CANVAS = (128, 160)  # H, W of the static model input used by the deploy tests
FIT_ITERS = 100
CPU = DeviceInfo("cpu", torch.device("cpu"), 0)
CUDA1 = DeviceInfo("cuda", torch.device("cuda", 1), 1)
NPU0 = DeviceInfo("npu", torch.device("cpu"), 0)  # torch.device("npu") needs torch_npu; only .type/.index matter

register_configs()  # conf/deploy.yaml starts from the deploy_schema structured config (as deploy.py registers it)


def compose_deploy_cfg(overrides: list[str]) -> DictConfig:
    """conf/deploy.yaml with command-line style overrides, exactly as deploy.py sees it."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("deploy", overrides=overrides)


def base_overrides(data_root: Path) -> list[str]:
    return ["model=solov2_tiny", "data=synthetic", f"data.root={data_root}", "data.generate=false",
            f"deploy.input_shape=[{CANVAS[0]},{CANVAS[1]}]", "deploy.batch_sizes=[1,2]",
            "deploy.benchmark.warmup=1", "deploy.benchmark.iters=2", "deploy.onnxruntime.intra_op_num_threads=1",
            # these tests compare raw outputs across batch sizes: infer runs all of them and keeps the raw files
            "deploy.infer.batch_sizes=all", "deploy.infer.keep_raw=true"]


def tiny_onnx(path: Path, shape=(1, 3, 8, 8), outputs=("output",)) -> Path:
    """A one-node ONNX per output (``output = Relu(input)``) for tests of the session, not of a model."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["input"], [name]) for name in outputs], "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape)) for n in outputs])
    # IR version 7 is opset 13's (ONNX 1.8); make_model would write the installed onnx's newest IR version, which
    # an older onnxruntime refuses (on Python 3.10 pip pairs onnx's IR 14 with onnxruntime 1.23's maximum of 11)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7), str(path))
    return path


def exported_ctx(make_ctx, *overrides: str):
    """A DeployContext from ``make_ctx(*overrides)`` after its export and preprocess stages."""
    from solo_npu.deploy.export import run_export
    from solo_npu.deploy.preprocess import run_preprocess

    ctx = make_ctx(*overrides)
    run_export(ctx)
    run_preprocess(ctx)
    return ctx
