"""Shared state of a deploy run: settings, run directory, device, adapter and the (lazily built) model.

The checkpoint decides the model's classes: its classifier gives the count and its metadata the names.
An explicit class count (``num_classes=N``, or ``data=`` / ``data.num_classes=`` / ``model.num_classes=``
on the command line) must agree with it; only fine-tuning re-initialises a classifier.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, ValidationError
from torch import nn

from solo_npu.config.deploy_schema import DeployConfig, ModelDeployConfig, unknown_key
from solo_npu.deploy.adapters import ModelAdapter
from solo_npu.models import build_model
from solo_npu.models.inference import compile_for_inference, compile_unsupported, prepare_for_inference
from solo_npu.runtime import DeviceInfo, apply_npu_env, resolve_device, seed_everything, setup_device
from solo_npu.utils.files import write_json_atomic

logger = logging.getLogger(__name__)


class DeployError(RuntimeError):
    """An expected failure (missing file, missing tool, bad setting): the CLI prints it as one line."""


class BackendFailures(DeployError):
    """Some backends failed in a stage that still did its work for the others and wrote its record (verify's
    table): the pipeline logs it and goes on with the later stages, and ends with one error naming every failure
    (:func:`solo_npu.deploy.infer.failed_runs`)."""


@dataclass
class DeploySettings:
    """Deploy settings after merging ``cfg.deploy`` over the model yaml's ``deploy:`` defaults."""

    input_shape: tuple[int, int]
    batch_sizes: list[int]
    opset: int
    soc_version: str
    backends: list[str]
    num_images: int | None
    scored_images: str = "all"  # all | annotated: the images AP is scored on
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def export_batch_sizes(self) -> list[int]:
        return sorted(set(self.batch_sizes))


def typed_deploy_config(cfg: DictConfig) -> DeployConfig:
    """``cfg.deploy`` as a DictConfig typed by :class:`DeployConfig` (deploy.py composes it so; a config
    built by hand is merged into the schema here, in place).

    Raises:
        DeployError: a key no deploy setting has (also one added with ``+deploy.KEY=``, which Hydra lets
            through), or a value of the wrong type; the message names the key.
    """
    node = cfg.get("deploy")
    if not (OmegaConf.is_config(node) and OmegaConf.get_type(node) is DeployConfig):
        try:
            node = OmegaConf.merge(OmegaConf.structured(DeployConfig), node or {})
        except (ConfigKeyError, ValidationError) as exc:
            raise DeployError(f"deploy.{exc.full_key}: {str(exc).splitlines()[0]}") from None
        with open_dict(cfg):
            cfg.deploy = node
    for path in _key_paths(node):
        why = unknown_key(["deploy", *path])
        if why is not None:
            raise DeployError(f"unknown setting deploy.{'.'.join(path)}: {why}")
    return node  # type: ignore[return-value]  # a DictConfig with DeployConfig's fields


def _key_paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path below ``node`` (a DictConfig), leaves and groups alike."""
    if not isinstance(node, DictConfig):
        return []
    paths = []
    for key in node.keys():
        paths.append((*prefix, str(key)))
        paths += _key_paths(node._get_node(key), (*prefix, str(key)))
    return paths


def model_deploy_defaults(cfg: DictConfig) -> ModelDeployConfig:
    """The model yaml's ``deploy:`` block over :class:`ModelDeployConfig` (SOLOv2's values where it is silent).

    Raises:
        DeployError: a key the block may not have (the message names it).
    """
    block = OmegaConf.select(cfg, "model.deploy", default=None) or {}
    try:
        return OmegaConf.merge(OmegaConf.structured(ModelDeployConfig), block)  # type: ignore[return-value]
    except (ConfigKeyError, ValidationError) as exc:
        raise DeployError(f"model.deploy.{exc.full_key}: {str(exc).splitlines()[0]} (a model yaml's deploy: "
                          f"block holds {', '.join(f.name for f in fields(ModelDeployConfig))})") from None


def _pick(user: Any, model_default: Any) -> Any:
    return user if user is not None else model_default


def resolve_settings(cfg: DictConfig, size_divisor: int = 1,
                     check_shape: Callable[[int, int], None] | None = None) -> DeploySettings:
    """Merge ``cfg.deploy`` (user overrides, null = unset) over ``cfg.model.deploy`` (model defaults).

    ``check_shape``: the model's ``check_input_shape(height, width)`` (solo_npu/models/contract.py), whose
    ValueError becomes a one-line DeployError."""
    user = typed_deploy_config(cfg)
    model_defaults = model_deploy_defaults(cfg)
    shape = [int(s) for s in _pick(user.input_shape, model_defaults.input_shape)]
    if len(shape) == 4:  # [B, 3, H, W] as the Ascend ModelZoo inference guides write it
        if shape[1] != 3:
            raise DeployError(f"deploy.input_shape={shape}: the models take 3 channels ([B, 3, H, W])")
        given_batch, full_shape, shape = shape[0], shape, shape[2:]
    else:
        given_batch = full_shape = None
    if len(shape) != 2 or min(shape) <= 0 or shape[0] % size_divisor or shape[1] % size_divisor:
        raise DeployError(
            f"deploy.input_shape={shape}: give [H, W] (or [B, 3, H, W]) with H and W positive"
            f"{f' multiples of {size_divisor}' if size_divisor > 1 else ''}, e.g. deploy.input_shape=[800,1216]"
        )
    if check_shape is not None:
        try:
            check_shape(*shape)
        except ValueError as exc:
            raise DeployError(f"deploy.input_shape={shape}: {exc}") from None
    if user.batch_size is not None:
        batch_sizes = [int(user.batch_size)]
    else:
        batch_sizes = [int(b) for b in _pick(user.batch_sizes, model_defaults.batch_sizes)]
    if not batch_sizes or min(batch_sizes) < 1:
        raise DeployError(f"deploy.batch_sizes={batch_sizes}: give positive batch sizes, e.g. [1,4,8]")
    if given_batch is not None and given_batch not in batch_sizes:
        raise DeployError(f"deploy.input_shape={full_shape}: its batch {given_batch} is not one of the batch sizes "
                          f"{batch_sizes} and would not be used: give deploy.input_shape=[{shape[0]},{shape[1]}] "
                          f"deploy.batch_sizes=[{given_batch}]")
    backends = list(user.backends)
    from solo_npu.deploy.backends import BACKENDS  # the registry (imports this module)

    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise DeployError(f"unknown backend(s) {unknown} in deploy.backends: choose from {list(BACKENDS)}")
    if user.num_images is not None and int(user.num_images) < 1:
        raise DeployError(f"deploy.num_images={user.num_images}: give a positive number of images, or null for all")
    # ais_bench refuses a negative --warmup_count and a --loop below 1 (Ascend/tools ais_bench/infer/__main__.py:
    # check_nonnegative_integer, check_positive_integer); the other backends need the same to time anything.
    for key, value, least in (("verify.num_images", user.verify.num_images, 1), ("benchmark.warmup",
                              user.benchmark.warmup, 0), ("benchmark.iters", user.benchmark.iters, 1)):
        if int(value) < least:
            raise DeployError(f"deploy.{key}={value}: give {'a positive' if least else 'a non-negative'} integer")
    opset = int(_pick(user.opset, model_defaults.opset))
    if opset < 11:  # below 11 torch's exporter lacks what the models use (Resize with scales, dynamic Slice, ...)
        raise DeployError(f"deploy.opset={opset}: the models export at opset 11 or later (11 to 13 for CANN 5 and 6, "
                          "up to 18 for CANN 7)")
    scored = str(_pick(user.evaluate.images, model_defaults.scored_images))
    if scored not in ("all", "annotated"):
        raise DeployError(f"deploy.evaluate.images={scored}: choose all (every image) or annotated (the images with "
                          "an annotation)")
    return DeploySettings(
        scored_images=scored,
        input_shape=(shape[0], shape[1]),
        batch_sizes=batch_sizes,
        opset=opset,
        soc_version=str(_pick(user.soc_version, model_defaults.soc_version)),
        backends=backends,
        num_images=None if user.num_images is None else int(user.num_images),
    )


def run_key(backend: str, batch_size: int | str) -> str:
    """The name of one backend's run at one batch size (``onnxruntime_b1``): its folder under ``infer/``,
    ``verify/`` and ``benchmark/``, its results file and its rows' key."""
    return f"{backend}_b{batch_size}"


def default_run_dir(model_name: str) -> Path:
    return Path("outputs") / "deploy" / f"{model_name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, obj, indent=2, default=_json_default)


def read_json(path: str | os.PathLike, what: str = "file", stage: str | None = None) -> Any:
    path = Path(path)
    if not path.is_file():
        hint = f"; run stage {stage!r} first (stages=[{stage}]) or point run_dir= at a run that has it" if stage else ""
        raise DeployError(f"{what} not found: {path}{hint}")
    return json.loads(path.read_text())


def read_stage_json(ctx: DeployContext, stage: str, filename: str, what: str, holds: str, otherwise: str) -> Any:
    """A stage's json record whose ``input_shape`` ([3, H, W]) must be the run's ``deploy.input_shape``.

    Raises:
        DeployError: the file is missing (run ``stage`` first) or was written for another input shape.
    """
    record = read_json(ctx.path(stage, filename), what, stage=stage)
    if list(record["input_shape"][1:]) != list(ctx.settings.input_shape):
        raise DeployError(f"the {what} in {ctx.path(stage)} {holds} {record['input_shape'][1:]} but deploy.input_shape "
                          f"is {list(ctx.settings.input_shape)}: re-run stages=[{stage}] or {otherwise}")
    return record


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@dataclass(frozen=True)
class ModelClasses:
    """The classes the deployed model predicts: count, names (``None`` when unknown) and who decided."""

    num_classes: int
    names: tuple[str, ...] | None
    origin: str  # "checkpoint (<where>)" or "config"

    def describe(self) -> str:
        shown = "" if self.names is None else ": " + ", ".join(self.names[:5]) + (", ..." if len(self.names) > 5
                                                                                  else "")
        return f"{self.num_classes} classes from the {self.origin}{shown}"


def start_device(cfg: DictConfig) -> DeviceInfo:
    """The device of ``runtime.device`` set up as the ``runtime`` section says (``runtime.npu.env`` such as
    ASCEND_RT_VISIBLE_DEVICES applied before torch_npu counts the devices, the NPU compile mode, cuDNN settings)
    and ``runtime.seed`` set (random-weight runs repeat) with ``runtime.deterministic``'s kernels, for the deploy
    stages and ``task=predict`` alike."""
    requested = str(OmegaConf.select(cfg, "runtime.device", default="auto"))
    runtime_cfg = OmegaConf.select(cfg, "runtime", default=None)
    apply_npu_env(OmegaConf.to_container(runtime_cfg, resolve=True) if runtime_cfg is not None else None,
                  device=requested)
    device = resolve_device(requested)
    setup_device(device, cfg.get("runtime"))
    seed_everything(int(OmegaConf.select(cfg, "runtime.seed", default=0)),
                    bool(OmegaConf.select(cfg, "runtime.deterministic", default=False)))
    return device


class DeployContext:
    """What every stage receives: config, settings, run directory, device, adapter and model.

    The model is built (and its checkpoint read) on first use; the adapter and the settings, which check
    the input shape against the model's size divisor, follow it.
    """

    def __init__(self, cfg: DictConfig, run_dir: str | os.PathLike | None = None, model_name: str | None = None):
        self.cfg = cfg
        typed_deploy_config(cfg)  # unknown keys and wrong types fail here, naming the key
        self.model_name = model_name or "model"
        self._adapter: ModelAdapter | None = None
        self._settings: DeploySettings | None = None
        self.run_dir = Path(run_dir) if run_dir else default_run_dir(self.model_name)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.device: DeviceInfo = start_device(cfg)
        self._model: nn.Module | None = None
        self._compiled: nn.Module | None = None  # the pytorch backend's module under torch.compile
        self._compile_warned = False
        self._classes: ModelClasses | None = None
        self.random_weights = cfg.get("checkpoint") in (None, "")
        self.results: dict[str, Any] = {}

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)

    @property
    def deploy_cfg(self) -> DeployConfig:
        """``cfg.deploy``, typed by :class:`DeployConfig`: stages read its fields (``.verify.atol``)."""
        return self.cfg.deploy

    @property
    def adapter(self) -> ModelAdapter:
        """The deploy view of the model (builds the model), with the model yaml's published anchors."""
        if self._adapter is None:
            anchors = OmegaConf.to_container(model_deploy_defaults(self.cfg).anchors, resolve=True)
            self._adapter = ModelAdapter(self.model(), anchors)
        return self._adapter

    @property
    def settings(self) -> DeploySettings:
        """``cfg.deploy`` over the model yaml's defaults, checked against the model's size divisor."""
        if self._settings is None:
            self._settings = resolve_settings(self.cfg, self.adapter.size_divisor,
                                              getattr(self.adapter.model, "check_input_shape", None))
        return self._settings

    def model(self) -> nn.Module:
        """The eager model in eval mode on the run's device, weights loaded once per process."""
        if self._model is None:
            model, self._classes = load_eager_model(self.cfg)
            # Inference mode (frozen BatchNorm folded into the convolutions): what eager, TorchScript and
            # ONNX run; the same outputs to float rounding. A model given with set_model is left as it is.
            self._model = prepare_for_inference(model.to(self.device.device))
        return self._model

    @property
    def classes(self) -> ModelClasses:
        """The model's classes (builds the model, which reads them from the checkpoint)."""
        model = self.model()
        if self._classes is None:  # a model given with set_model
            self._classes = _config_classes(self.cfg, _model_classes(model) or 0)
        return self._classes

    def set_model(self, model: nn.Module) -> None:
        """Use an already built model (tests, notebooks) instead of building one from the config."""
        self._model = model.to(self.device.device).eval()
        self._compiled = None
        self._classes = None
        self._adapter = self._settings = None
        self.random_weights = False

    @property
    def compile_pytorch(self) -> bool:
        """Whether the pytorch backend runs under torch.compile: ``deploy.pytorch.compile`` where this device and
        Python support it (:func:`~solo_npu.models.inference.compile_unsupported`; where not, one WARNING says so
        and eager PyTorch runs)."""
        if not self.deploy_cfg.pytorch.compile:
            return False
        why = self.compile_refusal
        if why is not None and not self._compile_warned:
            logger.warning("deploy.pytorch.compile=true: the pytorch backend runs eager: %s", why)
            self._compile_warned = True
        return why is None

    @property
    def compile_refusal(self) -> str | None:
        """Why torch.compile cannot serve this run's device (:func:`~solo_npu.models.inference.compile_unsupported`),
        or None."""
        return compile_unsupported(self.device.type)

    def pytorch_module(self) -> nn.Module:
        """What the pytorch backend runs: the adapter's export module of :meth:`model`, under torch.compile when
        :attr:`compile_pytorch` (one compiled module per process, so each batch size compiles once)."""
        if not self.compile_pytorch:
            return self.adapter.export_module(self.model())
        if self._compiled is None:
            self._compiled = compile_for_inference(self.adapter.export_module(self.model()), self.device.type)
        return self._compiled


def build_eager_model(cfg: DictConfig) -> nn.Module:
    """Build ``cfg.model`` and load ``cfg.checkpoint`` (random weights, loudly, when there is none)."""
    return load_eager_model(cfg)[0]


def load_eager_model(cfg: DictConfig) -> tuple[nn.Module, ModelClasses]:
    """The model of ``cfg.model`` with the checkpoint's classes and weights, and those classes.

    Raises:
        DeployError: missing or unreadable checkpoint, or an explicit class count that differs from it.
    """
    model, classes, _ = load_trained_model(cfg)
    return model, classes


def load_trained_model(cfg: DictConfig) -> tuple[nn.Module, ModelClasses, dict[str, Any] | None]:
    """:func:`load_eager_model`, and the training config the checkpoint carries (a checkpoint of this project;
    ``None`` for other files and without a checkpoint)."""
    checkpoint = cfg.get("checkpoint")
    explicit = cfg.get("num_classes")
    if checkpoint in (None, ""):
        logger.warning(
            "no checkpoint given: the model has RANDOM weights, so AP is meaningless "
            "(pass checkpoint=outputs/.../best.pth)"
        )
        model = build_model(cfg.model, num_classes=explicit)
        return model, _config_classes(cfg, _model_classes(model) or 0), None
    if not Path(checkpoint).is_file():
        from solo_npu.checkpoints.io import folder_not_checkpoint

        raise DeployError(folder_not_checkpoint(Path(checkpoint)) if Path(checkpoint).is_dir() else
                          f"checkpoint not found: {checkpoint} (pass checkpoint=PATH to a .pth file)")
    from solo_npu.checkpoints import CheckpointError, load_checkpoint
    from solo_npu.checkpoints.convert import checkpoint_classes, load_model_weights, require_whole_model

    source = str(cfg.checkpoint_source)
    ckpt = None
    try:
        ckpt = load_checkpoint(checkpoint, trust_pickle=bool(cfg.checkpoint_trust_pickle))
        # A weightless model of the config reads the file's layout and classifier size.
        configured = (cfg.get("data") or {}).get("class_names")
        found = checkpoint_classes(ckpt, build_model(cfg.model, num_classes=explicit, device="meta"), source,
                                   path=checkpoint, names_instead=None if configured is None else list(configured))
        if found.num_classes is not None and explicit is not None and int(explicit) != found.num_classes:
            asked = cfg.get("num_classes_from") or f"num_classes={int(explicit)}"
            raise DeployError(f"{checkpoint} was trained on {found.num_classes} classes ({found.origin}) but the "
                              f"config asks for {int(explicit)} ({asked}): drop that override to deploy the file's "
                              f"{found.num_classes} classes, add data.num_classes={found.num_classes} for a dataset of "
                              "its classes, or fine-tune it on the new ones")
        model = build_model(cfg.model, num_classes=found.num_classes if found.num_classes is not None else explicit)
        normalize = (cfg.get("data") or {}).get("normalize")  # what the weights were trained on is checked
        report = load_model_weights(model, checkpoint, source=source, loaded=ckpt, normalize=normalize)
        require_whole_model(report, checkpoint)  # not a backbone-only file with a random neck and head
    except CheckpointError as exc:
        from solo_npu.checkpoints.convert import trained_model_hint

        hint = trained_model_hint(ckpt, cfg.model) if "shape mismatch" in str(exc) else ""
        raise DeployError(f"{exc}{hint}") from exc
    num_classes = _model_classes(model) or found.num_classes or 0
    trained = report.get("config")
    if found.num_classes is None:
        return model, _config_classes(cfg, num_classes), trained
    names = found.names or _config_classes(cfg, num_classes).names
    classes = ModelClasses(num_classes, names, f"checkpoint ({found.origin})")
    logger.info("model: %s", classes.describe())
    return model, classes, trained


def _model_classes(model: nn.Module) -> int | None:
    value = getattr(model, "num_classes", None)
    return int(value) if isinstance(value, int) else None


def _config_classes(cfg: DictConfig, num_classes: int) -> ModelClasses:
    """Classes the config decided; names from the data config when its count matches."""
    if not num_classes:  # a model without a ``num_classes`` attribute: its config says
        num_classes = int(OmegaConf.select(cfg, "model.num_classes", default=0) or 0)
    data = cfg.get("data") or {}
    names = data.get("class_names")
    if names is not None and len(names) == num_classes:
        return ModelClasses(num_classes, tuple(str(n) for n in names), "config")
    return ModelClasses(num_classes, None, "config")
