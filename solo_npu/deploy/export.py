"""Export stage: the model's static export mode as TorchScript (trace) and ONNX, one file per batch size.

Writes ``export/model_b{B}.ts`` and ``export/model_b{B}.onnx`` (plus ``model_dynamic.onnx`` with a
symbolic batch axis when ATC dynamic-batch gears are asked for) and ``export/manifest.json``: input
name and shape, output names, per-image output shapes and dtypes, files, opset, the torch / onnx / onnxslim
versions that wrote them (``exported_with``), weights and classes.

The example batch is made on the model's device, so a model on an accelerator exports as it is. Every
ONNX graph goes through onnxslim: with a static input it folds the Shape arithmetic that feeds Resize
into constants, which ATC needs (its Resize takes constant sizes or scales). The default opset, 13, is
inside the range every CANN release documents for ATC (v9-v13 up to CANN 6, v9-v18 from CANN 7.0).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from solo_npu.deploy.context import DeployContext, DeployError, read_stage_json, write_json
from solo_npu.runtime.compat import torchscript_onnx_export_kwargs
from solo_npu.utils.files import atomic_path

logger = logging.getLogger(__name__)

INPUT_NAME = "input"


DEFAULT_OPSET = 13


def example_input(batch_size: int, input_shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """A fixed pseudo-random normalised image batch (tracing needs values, not real images)."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch_size, 3, *input_shape, generator=gen).to(device)


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter or buffer (the CPU for a module without tensors)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def module_example(module: nn.Module, batch_size: int, input_shape: Sequence[int]) -> torch.Tensor:
    """:func:`example_input` on ``module``'s device: what tracing and ONNX export feed the module."""
    return example_input(batch_size, input_shape, module_device(module))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def export_torchscript(module: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> Path:
    """Trace ``module`` (no scripting: torch_npu's transfer_to_npu disables it) and save it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            traced = torch.jit.trace(module, (example,), check_trace=False)
    except Exception as exc:  # noqa: BLE001 - any tracer failure is reported as one line
        logger.debug("TorchScript trace failed", exc_info=True)
        raise DeployError(f"TorchScript trace of {path.name} failed: {_first_line(exc)}") from exc
    with atomic_path(path) as tmp:  # a re-export interrupted midway keeps the previous file
        traced.save(str(tmp))
    return path


def export_onnx(
    module: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    output_names: Sequence[str],
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = False,
) -> Path:
    """Export with the TorchScript-based exporter (static shapes; optional symbolic batch axis).

    Raises:
        DeployError: the exporter failed (one line: the operator or error, and the opset).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes = {name: {0: "batch"} for name in (INPUT_NAME, *output_names)} if dynamic_batch else None
    try:
        with atomic_path(path) as tmp:  # an export that fails or is interrupted keeps the previous file
            _torch_onnx_export(module, example, tmp, output_names, opset, dynamic_axes)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; each is one line for the user
        logger.debug("ONNX export failed", exc_info=True)
        raise DeployError(f"ONNX export of {path.name} at opset {int(opset)} failed: {_first_line(exc)} "
                          "(ATC reads opsets 11 to 13 on CANN 5 and 6, up to 18 on CANN 7)") from exc
    return path


def _torch_onnx_export(module: nn.Module, example: torch.Tensor, path: Path, output_names: Sequence[str],
                       opset: int, dynamic_axes: dict[str, dict[int, str]] | None) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            **torchscript_onnx_export_kwargs(),  # dynamo=False where torch has it
            input_names=[INPUT_NAME],
            output_names=list(output_names),
            opset_version=int(opset),
            do_constant_folding=True,
            dynamic_axes=dynamic_axes,
        )


def slim_onnx(path: str | os.PathLike) -> str:
    """Simplify ``path`` in place with onnxslim (constant folding, shape inference, dead-node removal).

    Raises:
        DeployError: onnxslim is not installed or fails on the graph.
    """
    try:
        import onnxslim
    except ImportError as exc:
        raise DeployError("onnxslim is not installed (pip install onnxslim, or deploy.slim=false to keep the "
                          "raw graph, whose Resize sizes ATC may refuse)") from exc
    path = str(path)
    try:
        slimmed = onnxslim.slim(onnx.load(path))
        with atomic_path(path) as tmp:  # the raw graph stays if the save fails
            onnx.save(slimmed, str(tmp))
    except Exception as exc:  # noqa: BLE001 - reported as one line
        logger.debug("onnxslim failed", exc_info=True)
        raise DeployError(f"onnxslim failed on {path}: {_first_line(exc)} (deploy.slim=false skips it)") from exc
    return "onnxslim"


def runtime_sized_resizes(model: onnx.ModelProto) -> list[str]:
    """Names of Resize nodes whose ``scales`` or ``sizes`` input is computed at run time (not an
    initializer or a Constant output): ATC wants them constant."""
    constants = {init.name for init in model.graph.initializer}
    constants |= {out for node in model.graph.node if node.op_type == "Constant" for out in node.output}
    return [node.name or f"Resize#{i}" for i, node in enumerate(model.graph.node)
            if node.op_type == "Resize" and any(name and name not in constants for name in node.input[2:4])]


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
    formats = list(ctx.deploy_cfg.export_formats)
    files: dict[str, dict[str, str]] = {fmt: {} for fmt in formats}
    for bs in settings.export_batch_sizes:
        example = module_example(module, bs, settings.input_shape)
        if "torchscript" in formats:
            files["torchscript"][str(bs)] = str(export_torchscript(module, example, out_dir / f"model_b{bs}.ts"))
        if "onnx" in formats:
            path = export_onnx(module, example, out_dir / f"model_b{bs}.onnx", adapter.output_names, settings.opset)
            files["onnx"][str(bs)] = str(path)
        logger.info("export: batch %d done", bs)
    gears = ctx.deploy_cfg.compile.dynamic_batch
    if gears and "onnx" in formats:
        example = module_example(module, min(int(g) for g in gears), settings.input_shape)
        files["onnx"]["dynamic"] = str(export_onnx(module, example, out_dir / "model_dynamic.onnx",
                                                   adapter.output_names, settings.opset, dynamic_batch=True))
    slimmed = None
    runtime_resizes: dict[str, int] = {}
    if "onnx" in formats:
        for key, path in files["onnx"].items():
            if ctx.deploy_cfg.slim:
                slimmed = slim_onnx(path)
            runtime_resizes[key] = len(runtime_sized_resizes(onnx.load(path, load_external_data=False)))
        static = {k: n for k, n in runtime_resizes.items() if n and k != "dynamic"}
        if static:
            logger.warning("export: Resize nodes with run-time sizes remain (%s); ATC may refuse the graph",
                           ", ".join(f"batch {k}: {n}" for k, n in static.items()))
    if files.get("onnx"):
        specs = onnx_output_specs(next(iter(files["onnx"].values())))
    else:
        specs = traced_output_specs(module, settings.input_shape, module_device(module))
    classes = ctx.classes
    manifest = {
        "model": ctx.model_name,
        "model_config": (ctx.cfg.get("model") or {}).get("name"),
        # the settings the model was built with: the exported graph holds them (score_thr, nms_pre, ...)
        "model_settings": model_settings(ctx.cfg),
        "input_name": INPUT_NAME,
        "input_shape": [3, *settings.input_shape],
        "batch_sizes": settings.export_batch_sizes,
        "output_names": list(adapter.output_names),
        "outputs": specs,
        "opset": settings.opset,
        # what wrote the files: torch.jit.load refuses a .ts that a newer torch saved with an operator it lacks, and
        # the ONNX graph is the torch exporter's at the opset above (onnx: the package that checked and saved it)
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__ if files.get("onnx") else None,
                          "onnxslim": _version("onnxslim") if slimmed else None},
        # the device the model was traced on: a TorchScript trace keeps it in its tensors and device arguments
        "traced_on": str(module_device(module)),
        # relative to the run directory, which may be copied (to the 310P host) or moved: load_manifest resolves them
        "files": {fmt: {k: os.path.relpath(Path(v).resolve(), ctx.run_dir.resolve()) for k, v in by_batch.items()}
                  for fmt, by_batch in files.items()},
        "slimmed_with": slimmed,
        "runtime_sized_resizes": runtime_resizes,
        "checkpoint": ctx.cfg.get("checkpoint"),
        "random_weights": ctx.random_weights,
        "num_classes": classes.num_classes,
        "class_names": None if classes.names is None else list(classes.names),
        "classes_from": classes.origin,
    }
    write_json(out_dir / "manifest.json", manifest)
    return {"files": files, "slimmed_with": slimmed, "num_classes": classes.num_classes}


# SOLOv2 settings of eager prediction alone (the reference order's bound and its cap), not of the exported graph
EAGER_ONLY = ("test.bound_before_conv", "test.exact_limit")


def model_settings(cfg: Any) -> dict[str, Any]:
    """The model config's settings as flat ``key: value`` pairs, without what does not shape the exported files:
    its name (compared on its own), ``pretrained`` (the checkpoint replaces it), ``num_classes`` (the checkpoint's),
    the ``deploy`` defaults and :data:`EAGER_ONLY`."""
    model = cfg.get("model")
    if model is None:
        return {}
    from solo_npu.checkpoints.convert import flat_settings

    tree = OmegaConf.to_container(model, resolve=True) if isinstance(model, DictConfig) else dict(model)
    return {k: v for k, v in flat_settings(tree).items()
            if k not in ("name", "pretrained", "num_classes", *EAGER_ONLY) and not k.startswith("deploy.")}


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def load_manifest(ctx: DeployContext) -> dict[str, Any]:
    """``export/manifest.json`` with its files as paths under this run directory (they are stored relative to
    it; an absolute path, of a manifest written before, stays as it is)."""
    manifest = read_stage_json(ctx, "export", "manifest.json", "exported models", "take",
                               "drop the deploy.input_shape override")
    manifest["files"] = {fmt: {k: str(ctx.run_dir / v) for k, v in (by_batch or {}).items()}
                         for fmt, by_batch in (manifest.get("files") or {}).items()}
    return manifest


def exported_file(manifest: dict[str, Any], fmt: str, batch_size: int | str) -> str | None:
    return (manifest.get("files", {}).get(fmt) or {}).get(str(batch_size))
