"""Structured-config schema of ``conf/deploy.yaml`` (deploy.py): the type of every deploy setting.

``DeployJobConfig`` is registered in Hydra's ConfigStore as ``deploy_schema`` and is the first entry of
``conf/deploy.yaml``'s defaults list, so ``conf/deploy/*.yaml`` and every ``deploy.*`` override are validated
against ``DeployConfig``: a misspelled key fails naming it, a value of the wrong type fails naming its key.
The values live in one place, ``conf/deploy/default.yaml`` (with their meaning); the schema gives types
only (``MISSING``), so no second copy of a default can disagree with it. Stages read the typed fields
(``ctx.deploy_cfg.verify.atol``), never ``.get(key, default)``.

Null ``deploy.input_shape``, ``batch_sizes``, ``opset`` and ``soc_version`` fall back to the model yaml's
``deploy:`` block, typed by :class:`ModelDeployConfig`, whose field defaults (SOLOv2's) are the one place
for what a model yaml leaves out.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from solo_npu.config.schema import JobConfig


@dataclass
class Tolerances:
    """How close a backend's results must be to eager PyTorch's (solo_npu/deploy/verify.py)."""

    atol: float = MISSING
    rtol: float = MISSING
    score_atol: float | None = MISSING  # null: atol
    iou: float = MISSING


@dataclass
class VerifyConfig(Tolerances):
    """``deploy.verify``: the float32 tolerances, and ``fp16`` for backends compiled to half precision (om
    with ATC's default, torch_aie FP16)."""

    num_images: int = MISSING
    fp16: Tolerances = MISSING


@dataclass
class InferConfig:
    batch_sizes: Any = MISSING  # null | all | a list of deploy.batch_sizes
    keep_raw: bool = MISSING


@dataclass
class DiskConfig:
    check: bool = MISSING
    reserve_gb: float = MISSING


@dataclass
class EvaluateConfig:
    eager: bool = MISSING
    images: str | None = MISSING  # all | annotated; None: the model yaml's deploy.scored_images


@dataclass
class TorchAieCompileConfig:
    precision_policy: str = MISSING


@dataclass
class CompileConfig:
    atc: str = MISSING
    precision_mode: str | None = MISSING
    precision_mode_v2: str | None = MISSING  # ATC refuses it together with precision_mode
    log: str = MISSING
    dynamic_batch: list[int] | None = MISSING
    customize_dtypes: str | None = MISSING
    atc_args: list[str] = MISSING
    timeout_s: float | None = MISSING
    torch_aie: TorchAieCompileConfig = MISSING


@dataclass
class ProviderOptions:
    npu: dict[str, Any] = MISSING  # CANNExecutionProvider options: CANN_PROVIDER_OPTIONS
    cuda: dict[str, Any] = MISSING  # CUDAExecutionProvider options: CUDA_PROVIDER_OPTIONS


# The option names each execution provider parses; onnxruntime refuses any other (ProviderOptionsParser::Parse,
# core/framework/provider_options_utils.h: 'Unknown provider option: "<name>".') and then builds a CPU session.
# CANN (microsoft/onnxruntime onnxruntime/core/providers/cann/cann_execution_provider_info.cc,
# CANNExecutionProviderInfo::FromProviderOptions): released providers parse device_id, npu_mem_limit,
# arena_extend_strategy, enable_cann_graph, dump_graphs, precision_mode, op_select_impl_mode and
# optypelist_for_implmode (at a8091220), dump_om_model (PR #20075) and enable_cann_subgraph (PR #25867), as the
# onnxruntime.ai CANN Execution Provider page documents them; the version of PR #27970 (at 38170d0f; open when read)
# parses precision_mode_v2 instead of precision_mode, and input_format, dynamic_batch_size, dynamic_image_size and
# dynamic_dims. Both sets are taken here; an option the installed release refuses stops the backend
# (solo_npu.deploy.runners.create_session).
CANN_PROVIDER_OPTIONS = (
    "device_id", "npu_mem_limit", "arena_extend_strategy", "enable_cann_graph", "enable_cann_subgraph", "dump_graphs",
    "dump_om_model", "precision_mode", "precision_mode_v2", "op_select_impl_mode", "optypelist_for_implmode",
    "input_format", "dynamic_batch_size", "dynamic_image_size", "dynamic_dims")
# CUDA (onnxruntime/core/providers/cuda/cuda_execution_provider_info.cc, CUDAExecutionProviderInfo::
# FromProviderOptions, the version with use_tf32, PR #19426), fuse_conv_bias (PR #19470) and sdpa_kernel (both passed
# as CUDA provider options by onnxruntime/test/util/default_providers.cc, CudaPluginExecutionProviderWithOptions).
CUDA_PROVIDER_OPTIONS = (
    "device_id", "has_user_compute_stream", "user_compute_stream", "gpu_mem_limit", "arena_extend_strategy",
    "cudnn_conv_algo_search", "do_copy_in_default_stream", "gpu_external_alloc", "gpu_external_free",
    "gpu_external_empty_cache", "cudnn_conv_use_max_workspace", "enable_cuda_graph", "cudnn_conv1d_pad_to_nc1d",
    "tunable_op_enable", "tunable_op_tuning_enable", "tunable_op_max_tuning_duration_ms",
    "enable_skip_layer_norm_strict_mode", "prefer_nhwc", "use_ep_level_unified_stream", "use_tf32", "fuse_conv_bias",
    "sdpa_kernel")
PROVIDER_OPTION_NAMES = {"npu": ("CANNExecutionProvider", CANN_PROVIDER_OPTIONS),
                         "cuda": ("CUDAExecutionProvider", CUDA_PROVIDER_OPTIONS)}


def unknown_provider_option(kind: str, name: str) -> str | None:
    """Why ``name`` is no option of the execution provider of ``deploy.onnxruntime.provider_options.<kind>``, naming
    the ones it has; None when it is one."""
    if kind not in PROVIDER_OPTION_NAMES:
        return f"no provider group {kind!r} (npu: CANNExecutionProvider, cuda: CUDAExecutionProvider)"
    provider, names = PROVIDER_OPTION_NAMES[kind]
    if name in names:
        return None
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"onnxruntime's {provider} has no option {name!r} ({hint}its options: {', '.join(names)})"


@dataclass
class OnnxRuntimeConfig:
    intra_op_num_threads: int = MISSING
    inter_op_num_threads: int = MISSING
    graph_optimization_level: str = MISSING
    allow_spinning: bool | None = MISSING
    provider_options: ProviderOptions = MISSING


@dataclass
class PyTorchConfig:
    compile: bool = MISSING  # the pytorch backend under torch.compile (solo_npu.models.inference.compile_for_inference)


@dataclass
class TorchAieConfig:
    python: str | None = MISSING
    precision_policy: str | None = MISSING  # null: compile.torch_aie.precision_policy
    timeout_s: float | None = MISSING


@dataclass
class OmConfig:
    launcher: str | None = MISSING
    extra_args: list[str] = MISSING
    timeout_s: float | None = MISSING


@dataclass
class BenchmarkConfig:
    warmup: int = MISSING
    iters: int = MISSING
    e2e_images: int | None = MISSING
    npu_smi: str = MISSING


@dataclass
class DeployConfig:
    """``deploy:`` (conf/deploy/default.yaml). Null ``input_shape``, ``batch_sizes``, ``opset`` and
    ``soc_version`` fall back to the model yaml's ``deploy:`` block (:class:`ModelDeployConfig`)."""

    input_shape: list[int] | None = MISSING
    batch_size: int | None = MISSING
    batch_sizes: list[int] | None = MISSING
    opset: int | None = MISSING
    soc_version: str | None = MISSING
    backends: list[str] = MISSING
    device_id: int | None = MISSING
    export_formats: list[str] = MISSING
    slim: bool = MISSING
    split: str = MISSING
    num_images: int | None = MISSING
    verify: VerifyConfig = MISSING  # verify and the compile stage's check of what it compiled
    infer: InferConfig = MISSING  # which batch sizes score every image; raw outputs kept or not
    disk: DiskConfig = MISSING  # the free-space check before preprocess / infer
    evaluate: EvaluateConfig = MISSING
    compile: CompileConfig = MISSING  # ATC and torch_aie
    pytorch: PyTorchConfig = MISSING  # the eager backend
    onnxruntime: OnnxRuntimeConfig = MISSING  # session options and execution-provider options
    torch_aie: TorchAieConfig = MISSING
    om: OmConfig = MISSING  # ais_bench
    benchmark: BenchmarkConfig = MISSING


@dataclass
class ModelDeployConfig:
    """The ``deploy:`` block of a model yaml (``conf/model/*.yaml``): the model's deploy defaults, read by
    deploy.py only (the model builder never sees it). Unset fields take SOLOv2's values."""

    input_shape: list[int] = field(default_factory=lambda: [800, 1216])  # [H, W] or [B, 3, H, W]
    opset: int = 13  # inside ATC's documented range since CANN 5
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 8])
    soc_version: str = "Ascend310P3"
    # The images AP is scored on: all (COCOeval's default) or annotated (those with an annotation, as the MLPerf
    # SSD reference and its Ascend guide score, 4952 of val2017's 5000).
    scored_images: str = "all"
    # Published figures shown beside the benchmark table: {source, device, batch, fps, segm_AP / bbox_AP}.
    anchors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class DeployJobConfig(JobConfig):
    """The root of ``conf/deploy.yaml`` (its values and their meaning are there)."""

    deploy: DeployConfig = MISSING
    task: str = MISSING  # deploy | predict
    checkpoint: str | None = MISSING
    checkpoint_source: str = MISSING  # auto | ours | a layout the model reads (its checkpoint_layouts)
    checkpoint_trust_pickle: bool = MISSING
    num_classes: int | None = MISSING
    run_dir: str | None = MISSING
    stages: list[str] = MISSING
    input: str | None = MISSING
    output: str = MISSING
    score_thr: float = MISSING


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _without_none(tp: Any) -> Any:
    """``X`` for ``X | None``; any other type as it is."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1 else tp


def unknown_key(path: Sequence[str], schema: type = DeployJobConfig) -> str | None:
    """Why ``path`` (a dotted key split into parts) names no setting of ``schema``, or None when it does.

    Parts below a ``dict`` field and below a config group typed ``Any`` are not checked, except the names of the
    execution-provider options (``deploy.onnxruntime.provider_options.npu`` / ``cuda``), which must be the
    provider's (:func:`unknown_provider_option`).
    """
    cls: Any = schema
    for depth, part in enumerate(path):
        if not (isinstance(cls, type) and is_dataclass(cls)):
            if typing.get_origin(cls) is dict or cls is Any:
                return None
            return f"{'.'.join(path[:depth])} is a value, not a group of settings"
        types = _field_types(cls)
        if part not in types:
            where = ".".join(path[:depth]) or "the config"
            close = difflib.get_close_matches(part, list(types), n=1)
            hint = f"did you mean {'.'.join([*path[:depth], close[0]])}?" if close else ""
            return f"{where} has no setting {part!r} ({hint or 'its settings: ' + ', '.join(types)})"
        if cls is ProviderOptions and depth + 1 < len(path):
            return unknown_provider_option(part, path[depth + 1])
        cls = _without_none(types[part])
    return None


def field_type(path: Sequence[str], schema: type) -> Any:
    """The declared type of the setting ``path`` names in ``schema`` (``Any`` below an unchecked part)."""
    cls: Any = schema
    for part in path:
        if not (isinstance(cls, type) and is_dataclass(cls)):
            return Any
        cls = _field_types(cls).get(part, Any)
    return cls


_SCALARS = {int: "an integer", float: "a number", bool: "true or false"}


def wrong_value(value: Any, tp: Any) -> str | None:
    """Why ``value`` (as Hydra's override parser reads it) cannot be a setting of type ``tp``, or None when it
    can or the type is not one checked here (scalars, lists of scalars; ``None`` where the type allows it)."""
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)
    tp = _without_none(tp)
    if value is None:
        return None if optional or tp is Any else "null is not allowed here"
    if isinstance(value, str) and "${" in value:
        return None  # an interpolation: resolved later
    if tp in _SCALARS:  # what OmegaConf's typed node accepts (it is what Hydra applies next): "3", "yes", 1
        from omegaconf import BooleanNode, FloatNode, IntegerNode
        from omegaconf.errors import ValidationError

        try:
            {int: IntegerNode, float: FloatNode, bool: BooleanNode}[tp](value)
        except ValidationError:
            return f"{value!r} is not {_SCALARS[tp]}"
        return None
    if typing.get_origin(tp) is list:
        if not isinstance(value, list):
            return f"{value!r} is not a list ([a,b,...])"
        (item,) = typing.get_args(tp) or (Any,)
        return next((why for why in (wrong_value(v, item) for v in value) if why is not None), None)
    return None


def _unknown_choice(group: Path, value: Any) -> str | None:
    """Why ``value`` (a choice, or a list of them) names no yaml file of the config group folder ``group``."""
    choices = sorted(p.stem for p in group.glob("*.yaml"))
    for choice in value if isinstance(value, list) else [value]:
        if isinstance(choice, str) and "${" not in choice and choice not in choices:
            close = [choice.lower()] if choice.lower() in choices else difflib.get_close_matches(choice, choices, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            return f"no {group.name} {choice!r} ({hint}choose from {', '.join(choices)})"
    return None


def check_deploy_overrides(overrides: Sequence[str], conf_dir: str | os.PathLike | None = None) -> str | None:
    """The first command-line override of deploy.py that sets a key no deploy setting has, as one line
    naming it (``deploy.verfy.atol=1``: ``deploy has no setting 'verfy' (did you mean deploy.verify?)``);
    None when all are known. Keys inside ``model`` (its builder's arguments) and ``hydra.*`` are left to
    Hydra and the builder; config-group choices (``deploy=310p``) name a group, which is a setting."""
    return check_overrides(overrides, DeployJobConfig, conf_dir=conf_dir)


def check_overrides(overrides: Sequence[str], schema: type, conf_dir: str | os.PathLike | None = None) -> str | None:
    """:func:`check_deploy_overrides` for the root ``schema`` (train.py: TrainJobConfig). With ``conf_dir`` its
    folders are config groups, set as a whole (``+experiment=8p``, which no schema field names), and a group's
    choice (``model=solov3``, ``+experiment=[1p,finetun]``) must be one of its yaml files, unless other config
    folders are added (``--config-dir``, ``hydra.searchpath``), which may hold more choices."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    groups = {p.name: p for p in Path(conf_dir).iterdir() if p.is_dir()} if conf_dir is not None else {}
    check_choices = not any(o.startswith(("--config-dir", "-cd", "--config-path", "-cp", "hydra.searchpath",
                                          "+hydra.searchpath")) for o in overrides)
    parser = OverridesParser.create()
    model_sets: list[tuple[str, list[str]]] = []  # (text, key parts) of the overrides that set a model key
    rest: list[str] = []  # the others, which compose the model those keys are looked up in
    for text in overrides:
        if text.startswith("-") or "=" not in text and not text.startswith("~"):
            continue  # Hydra's own flags (--cfg job, -m)
        try:
            override = parser.parse_override(text)
        except HydraException:
            continue  # Hydra reports its own grammar errors
        key = override.key_or_group
        parts = key.split(".")
        if parts[0] == "model" and len(parts) > 1 and override.package is None and not override.is_delete() \
                and not override.is_add() and not override.is_force_add():  # +model.x / ++model.x add a key
            model_sets.append((text, parts))
        elif parts[0] != "hydra":
            rest.append(text)
        if override.package is not None or "/" in key:
            continue
        if key in groups:
            why = None if override.is_delete() or not check_choices else _unknown_choice(groups[key], override.value())
            if why is not None:
                return f"{text}: {why}"
            continue
        if parts[0] == "hydra":
            continue
        why = unknown_key(parts, schema)
        if why is not None:
            return f"unknown setting {key} in {text!r}: {why}"
        if override.is_delete() or override.is_sweep_override():
            continue
        why = wrong_value(override.value(), field_type(parts, schema))
        if why is not None:
            return f"{text}: {why}"
    if model_sets and conf_dir is not None and check_choices:
        return _unknown_model_key(model_sets, rest, schema, Path(conf_dir))
    return None


def _unknown_model_key(model_sets: Sequence[tuple[str, list[str]]], rest: Sequence[str], schema: type,
                       conf_dir: Path) -> str | None:
    """The first override of ``model_sets`` that sets a key the model does not have, as one line naming it, the
    model and the settings there (``model.head.norm=bn``: ``model.head of solov2_r50_fpn has no setting 'norm'
    (its settings: ...)``); Hydra's own report of it is several lines (``Could not override 'model.head.norm'.
    ... Key 'norm' is not in struct``). ``model`` is typed ``Any`` (a yaml holds its builder's arguments), so its
    keys are looked up in the model the other overrides compose; None when they do not compose (Hydra says why)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from solo_npu.config.schema import register_configs

    if GlobalHydra.instance().is_initialized():
        return None
    register_configs()
    name = "deploy" if isinstance(schema, type) and issubclass(schema, DeployJobConfig) else "config"
    try:
        with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base="1.3"):
            model = OmegaConf.to_container(compose(name, overrides=list(rest)).model, resolve=False)
    except Exception:  # noqa: BLE001 - whatever keeps the config from composing, Hydra reports it next
        return None
    if not isinstance(model, dict):
        return None
    label = model.get("name") or "the model"
    for text, parts in model_sets:
        node: Any = model
        for depth, part in enumerate(parts[1:], start=1):
            if not isinstance(node, dict):
                return f"unknown setting {'.'.join(parts)} in {text!r}: {'.'.join(parts[:depth])} of {label} is a " \
                       "value, not a group of settings"
            if part not in node:
                settings = [str(k) for k in node if k != "_target_"]
                close = difflib.get_close_matches(part, settings, n=1)
                hint = f"did you mean {'.'.join([*parts[:depth], close[0]])}?" if close else \
                    f"its settings: {', '.join(settings)}"
                return f"unknown setting {'.'.join(parts)} in {text!r}: {'.'.join(parts[:depth])} of {label} has " \
                       f"no setting {part!r} ({hint})"
            node = node[part]
    return None
