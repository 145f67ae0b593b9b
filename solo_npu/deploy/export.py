"""Export stage: the model's static export mode as TorchScript (trace) and ONNX, one file per batch size.

Writes ``export/model_b{B}.ts`` and ``export/model_b{B}.onnx`` (plus ``model_dynamic.onnx`` with a
symbolic batch axis when ATC dynamic-batch gears are asked for) and ``export/manifest.json``: input
name and shape, output names, per-image output shapes and dtypes, files, opset, weights.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from solo_npu.deploy.context import DeployContext, DeployError, read_json, write_json

logger = logging.getLogger(__name__)

INPUT_NAME = "input"


def example_input(batch_size: int, input_shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """A fixed pseudo-random normalised image batch (tracing needs values, not real images)."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch_size, 3, *input_shape, generator=gen).to(device)


def export_torchscript(module: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> Path:
    """Trace ``module`` (no scripting: torch_npu's transfer_to_npu disables it) and save it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        traced = torch.jit.trace(module, (example,), check_trace=False)
    traced.save(str(path))
    return path


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    output_names: Sequence[str],
    opset: int = 17,
    dynamic_batch: bool = False,
) -> Path:
    """Export with the TorchScript-based exporter (static shapes; optional symbolic batch axis)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes = {name: {0: "batch"} for name in (INPUT_NAME, *output_names)} if dynamic_batch else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(output_names),
            opset_version=int(opset),
            do_constant_folding=True,
            dynamic_axes=dynamic_axes,
        )
    return path


def slim_onnx(path: str | os.PathLike) -> str | None:
    """Simplify in place with onnxslim or onnxsim when installed; returns the tool used."""
    path = str(path)
    if importlib.util.find_spec("onnxslim") is not None:
        import onnxslim

        onnx.save(onnxslim.slim(onnx.load(path)), path)
        return "onnxslim"
    if importlib.util.find_spec("onnxsim") is not None:
        import onnxsim

        model, ok = onnxsim.simplify(onnx.load(path))
        if ok:
            onnx.save(model, path)
            return "onnxsim"
    return None


def onnx_output_specs(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Per-image output shapes (batch axis dropped) and numpy dtypes read from an ONNX graph."""
    model = onnx.load(str(path), load_external_data=False)
    specs = {}
    for out in model.graph.output:
        tensor_type = out.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
        specs[out.name] = {"shape": dims[1:], "dtype": dtype}
    return specs


@torch.no_grad()
def traced_output_specs(module: nn.Module, input_shape: Sequence[int], device: torch.device | str = "cpu",
                        output_names: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per-image output shapes and dtypes from one batch-1 forward (when no ONNX file was exported)."""
    outputs = module(example_input(1, input_shape, device))
    names = output_names or getattr(module, "output_names", None) or [f"output{i}" for i in range(len(outputs))]
    return {n: {"shape": list(t.shape[1:]), "dtype": str(t.detach().cpu().numpy().dtype)}
            for n, t in zip(names, outputs)}


def run_export(ctx: DeployContext) -> dict[str, Any]:
    settings = ctx.settings
    adapter = ctx.adapter
    out_dir = ctx.path("export")
    module = adapter.export_module(ctx.model())
    formats = list(ctx.deploy_cfg.get("export_formats") or ["torchscript", "onnx"])
    files: dict[str, dict[str, str]] = {fmt: {} for fmt in formats}
    for bs in settings.export_batch_sizes:
        example = example_input(bs, settings.input_shape, ctx.device.device)
        if "torchscript" in formats:
            files["torchscript"][str(bs)] = str(export_torchscript(module, example, out_dir / f"model_b{bs}.ts"))
        if "onnx" in formats:
            path = export_onnx(module, example.cpu() if ctx.device.type != "cpu" else example,
                               out_dir / f"model_b{bs}.onnx", adapter.output_names, settings.opset)
            files["onnx"][str(bs)] = str(path)
        logger.info("export: batch %d done", bs)
    gears = (ctx.deploy_cfg.get("compile") or {}).get("dynamic_batch")
    if gears and "onnx" in formats:
        example = example_input(min(int(g) for g in gears), settings.input_shape)
        files["onnx"]["dynamic"] = str(export_onnx(module, example, out_dir / "model_dynamic.onnx",
                                                   adapter.output_names, settings.opset, dynamic_batch=True))
    slimmed = None
    if ctx.deploy_cfg.get("slim", True) and "onnx" in formats:
        for path in files["onnx"].values():
            slimmed = slim_onnx(path)
    if files.get("onnx"):
        specs = onnx_output_specs(next(iter(files["onnx"].values())))
    else:
        specs = traced_output_specs(module, settings.input_shape, ctx.device.device)
    manifest = {
        "model": ctx.model_name,
        "input_name": INPUT_NAME,
        "input_shape": [3, *settings.input_shape],
        "batch_sizes": settings.export_batch_sizes,
        "output_names": list(adapter.output_names),
        "outputs": specs,
        "opset": settings.opset,
        "files": files,
        "slimmed_with": slimmed,
        "checkpoint": ctx.cfg.get("checkpoint"),
        "random_weights": ctx.random_weights,
    }
    write_json(out_dir / "manifest.json", manifest)
    return {"files": files, "slimmed_with": slimmed}


def load_manifest(ctx: DeployContext) -> dict[str, Any]:
    manifest = read_json(ctx.path("export", "manifest.json"), "export manifest", stage="export")
    if list(manifest["input_shape"][1:]) != list(ctx.settings.input_shape):
        raise DeployError(
            f"the exported models in {ctx.path('export')} take {manifest['input_shape'][1:]} but deploy.input_shape "
            f"is {list(ctx.settings.input_shape)}: re-run stages=[export] or drop the deploy.input_shape override"
        )
    return manifest


def exported_file(manifest: dict[str, Any], fmt: str, batch_size: int | str) -> str | None:
    return (manifest.get("files", {}).get(fmt) or {}).get(str(batch_size))
