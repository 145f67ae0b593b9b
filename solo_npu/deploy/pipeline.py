"""The deploy pipeline: ordered stages over one run directory, and the CLI edge that turns expected
failures into one-line errors.

Each stage reads only what earlier stages wrote into the run directory, so any subset can be re-run
alone: ``python deploy.py run_dir=outputs/deploy/solov2-... stages=[evaluate,report]``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import PurePath
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from solo_npu.config.values import ConfigValueError, check_values
from solo_npu.data import check_dataset_files
from solo_npu.deploy.benchmark import run_benchmark
from solo_npu.deploy.compile_310p import run_compile
from solo_npu.deploy.context import BackendFailures, DeployContext, DeployError, read_json
from solo_npu.deploy.disk import check_disk, run_plan
from solo_npu.deploy.evaluate import run_evaluate
from solo_npu.deploy.export import run_export
from solo_npu.deploy.infer import FAILURE_STAGES, failures, run_infer
from solo_npu.deploy.preprocess import dataset_files, run_preprocess
from solo_npu.deploy.report import run_report
from solo_npu.deploy.verify import run_verify

logger = logging.getLogger(__name__)

STAGES: dict[str, Callable[[DeployContext], dict[str, Any]]] = {
    "plan": run_plan,  # the disk estimate only (runs nothing); the check itself runs before preprocess / infer
    "export": run_export,
    "verify": run_verify,
    "compile": run_compile,
    "preprocess": run_preprocess,
    "infer": run_infer,
    "evaluate": run_evaluate,
    "benchmark": run_benchmark,
    "report": run_report,
}

# Command-line overrides that set the class count explicitly (checked against the checkpoint's).
CLASS_OVERRIDES = {"num_classes": "num_classes", "model.num_classes": "model.num_classes", "data": "data.num_classes",
                   "data.num_classes": "data.num_classes"}

RANDOM_WEIGHTS_NOTICE = ("NOTE: no checkpoint given, the model has RANDOM weights: AP numbers are meaningless "
                         "(pass checkpoint=PATH, e.g. the best.pth a training run wrote)")


def check_stages(stages: Sequence[str] | None) -> list[str]:
    """The requested stages in pipeline order; an unknown name is a one-line error."""
    stages = list(stages) if stages else list(STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise DeployError(f"unknown stage(s) {unknown}: choose from {list(STAGES)}")
    return [s for s in STAGES if s in stages]


def mark_explicit_classes(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Set ``cfg.num_classes`` when the command line chose a class count (``data=``, ``data.num_classes=``,
    ``model.num_classes=``), so that a checkpoint with another count is refused instead of overridden."""
    if cfg.get("num_classes") is not None:
        return
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o]
    for key in keys:
        if key in CLASS_OVERRIDES:
            value = OmegaConf.select(cfg, CLASS_OVERRIDES[key])
            if value is not None:
                # which override asked, for the error that names it when the checkpoint disagrees: the last one
                # that sets this count (data=coco data.num_classes=5: data.num_classes=5)
                given = [o.split("=", 1) for o in overrides if "=" in o]
                said, text = [(k.lstrip("+~"), v) for k, v in given
                              if CLASS_OVERRIDES.get(k.lstrip("+~")) == CLASS_OVERRIDES[key]][-1]
                with open_dict(cfg):
                    cfg.num_classes = int(value)
                    cfg.num_classes_from = (f"{said}={text}" if CLASS_OVERRIDES[said] == said
                                            else f"{said}={text} sets {CLASS_OVERRIDES[said]}={int(value)}")
                return


# Stages after the export that run the backends' exported files.
BACKEND_STAGES = ("verify", "compile", "infer", "benchmark")


def check_plan(ctx: DeployContext, stages: Sequence[str]) -> None:
    """Before the first stage: settings that a later stage would refuse, found before the export takes its time.

    - ``deploy.infer.batch_sizes`` must name exported batch sizes (infer and evaluate read them);
    - an export whose later stages run a backend needs that backend's format in ``deploy.export_formats``;
    - ``deploy.om.extra_args`` must leave the ais_bench flags the om backend sets alone, and
      ``deploy.compile.atc_args`` the ATC flags the compile stage sets;
    - the opset must be one this torch's ONNX exporter writes (above it the exporter fails after printing the
      whole graph).
    """
    import torch

    from solo_npu.deploy.backends import BACKENDS
    from solo_npu.deploy.infer import infer_batch_sizes

    if any(s in stages for s in ("infer", "evaluate")):
        infer_batch_sizes(ctx)
    if "om" in ctx.settings.backends and any(s in stages for s in BACKEND_STAGES):
        from solo_npu.deploy.compile_310p import check_atc_args
        from solo_npu.deploy.om import check_extra_args

        check_extra_args(ctx.deploy_cfg.om.extra_args)
        check_atc_args(ctx.deploy_cfg.compile.atc_args)
    if "export" not in stages:
        return
    formats = list(ctx.deploy_cfg.export_formats)
    if any(s in stages for s in BACKEND_STAGES):
        needs = {b: BACKENDS[b].exported_format for b in ctx.settings.backends if BACKENDS[b].exported_format}
        left_out = {b: f for b, f in needs.items() if f not in formats}
        if left_out:
            named = ", ".join(f"{b} runs the {f} files" for b, f in left_out.items())
            raise DeployError(f"deploy.backends={list(ctx.settings.backends)}: {named}, which "
                              f"deploy.export_formats={formats} leaves out: add "
                              f"{' and '.join(sorted(set(left_out.values())))} to deploy.export_formats, or drop "
                              f"{', '.join(left_out)} from deploy.backends")
    most = onnx_exporter_max_opset()
    if "onnx" in formats and most is not None and ctx.settings.opset > most:
        raise DeployError(f"deploy.opset={ctx.settings.opset}: torch {torch.__version__}'s ONNX exporter writes opset "
                          f"{most} at most (ATC reads 11 to 13 on CANN 5 and 6, up to 18 on CANN 7)")


def onnx_exporter_max_opset() -> int | None:
    """The highest opset the TorchScript-based ``torch.onnx.export`` (the one used here, ``dynamo=False``) writes
    on this torch (None where torch does not say). Above it torch 2.13 still writes a file, stamped with the opset
    asked for but built of its highest one's operators, with a warning only."""
    try:
        from torch.onnx import _constants
    except ImportError:
        return None
    for name in ("ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", "ONNX_MAX_OPSET"):
        value = getattr(_constants, name, None)
        if isinstance(value, int):
            return value
    return None


# Stages that read the configured dataset (the others read what earlier stages wrote into the run directory).
DATA_STAGES = ("verify", "preprocess")


def check_data(ctx: DeployContext, stages: Sequence[str]) -> None:
    """Before the first stage: the split's annotation file and image folder exist (or ``data.generate`` makes
    them), so a wrong ``data.root`` is one line before the export rather than after it."""
    if not any(s in DATA_STAGES for s in stages):
        return
    split = str(ctx.deploy_cfg.split)
    dataset_files(ctx.cfg.data, split)  # a data config without a root or this split
    check_dataset_files(ctx.cfg.data, (split,))


def check_same_model(ctx: DeployContext, stages: Sequence[str]) -> None:
    """Stages after the export read the models, outputs and timings earlier runs wrote in the run directory: when
    these runs exported another model or checkpoint than this run names, refuse (one line) rather than report
    the two side by side under this run's name."""
    if "export" in stages:
        return
    path = ctx.path("export", "manifest.json")
    if not path.is_file():
        return
    manifest = read_json(path)
    ours = {"model": (ctx.cfg.get("model") or {}).get("name"), "checkpoint": ctx.cfg.get("checkpoint") or None}
    theirs = {"model": manifest.get("model_config"), "checkpoint": manifest.get("checkpoint") or None}
    # The model config's own name (conf/model/*.yaml name:), and checkpoints by file name: the run directory may
    # have been copied to a host where the file lies elsewhere. What a manifest or this run does not say is
    # not compared.
    if (ours["model"] and theirs["model"] and ours["model"] != theirs["model"]) or (
            ours["checkpoint"] and theirs["checkpoint"]
            and PurePath(str(ours["checkpoint"])).name != PurePath(str(theirs["checkpoint"])).name):
        raise DeployError(f"{ctx.run_dir} holds the export of model={theirs['model']} "
                          f"checkpoint={theirs['checkpoint']}, but this run names model={ours['model']} "
                          f"checkpoint={ours['checkpoint']}: add export to stages, or use another run_dir")
    # The exported graph holds the model's settings (SOLOv2's score_thr, nms_pre, mask_thr, ...): later stages with
    # others would score the old graph with the new host-side settings and the new eager reference.
    from solo_npu.deploy.export import model_settings

    exported = manifest.get("model_settings")
    if isinstance(exported, dict):
        now = model_settings(ctx.cfg)
        differ = [f"model.{k}={exported.get(k)!r} there, {now.get(k)!r} here" for k in sorted(set(exported) | set(now))
                  if exported.get(k) != now.get(k)]
        if differ:
            raise DeployError(f"{ctx.run_dir} holds an export made with other model settings ({'; '.join(differ[:4])}"
                              f"{'; ...' if len(differ) > 4 else ''}): the exported files hold them, so add export to "
                              "stages, or drop those overrides")


def _skip_mismatched_evaluate(ctx: DeployContext, stages: list[str]) -> list[str]:
    """Leave out ``evaluate`` (WARNING) when the model's classes are not the dataset's: AP would be noise."""
    if "evaluate" not in stages:
        return stages
    manifest = ctx.path("export", "manifest.json")
    if manifest.is_file() and read_json(manifest).get("num_classes") is not None:
        num_classes = int(read_json(manifest)["num_classes"])
    else:
        num_classes = ctx.classes.num_classes
    data_classes = (ctx.cfg.get("data") or {}).get("num_classes")
    if data_classes is None or int(data_classes) == num_classes:
        return stages
    logger.warning("stage evaluate skipped: the model has %d classes but data %r has %d (pass data=coco "
                   "data.root=DIR, or a dataset with the checkpoint's classes, to score it)", num_classes,
                   str(ctx.cfg.data.get("name", "?")), int(data_classes))
    print(f"NOTE: evaluate skipped, the model has {num_classes} classes and the data {int(data_classes)}")
    return [s for s in stages if s != "evaluate"]


def run_pipeline(cfg: DictConfig, model_name: str | None = None, ctx: DeployContext | None = None) -> DeployContext:
    """Run ``cfg.stages`` (all by default) in order; returns the context with per-stage results."""
    stages = check_stages(cfg.stages)
    ctx = ctx or DeployContext(cfg, cfg.run_dir, model_name)
    print(f"deploy {ctx.model_name}: stages {stages}, run dir {ctx.run_dir}, device {ctx.device.type}")
    builds_model = any(s in stages for s in ("export", "verify"))
    # Building the model from the config says both itself (solo_npu.deploy.context.load_trained_model: the
    # WARNING of random weights, the classes a checkpoint gave); said here only where it does not.
    if ctx.random_weights and not builds_model and any(s in stages for s in ("infer", "evaluate", "benchmark")):
        print(RANDOM_WEIGHTS_NOTICE)
    if builds_model and not ctx.classes.origin.startswith("checkpoint"):
        print(f"model: {ctx.classes.describe()}")
    check_same_model(ctx, stages)
    stages = _skip_mismatched_evaluate(ctx, stages)
    check_plan(ctx, stages)
    check_data(ctx, stages)
    checked = False
    for i, name in enumerate(stages):
        if name in ("preprocess", "infer") and not checked:  # the large writes start here
            check_disk(ctx, stages[i:])
            checked = True
        start = time.perf_counter()
        try:
            ctx.results[name] = STAGES[name](ctx)
        except BackendFailures as exc:  # the stage did its work for the other backends and wrote its record
            ctx.results[name] = {"failed": str(exc)}
            logger.error("stage %s: %s; the later stages go on", name, exc)
        logger.info("stage %s done in %.1f s", name, time.perf_counter() - start)
    # Each backend's failure was one ERROR line and is a row of its stage's record; the other backends' results
    # and the report are written, and the run still fails, naming them (a regression run that CI can see).
    found = failures(ctx, [s for s in stages if s in FAILURE_STAGES])
    if len(found) == 1:
        key, stage, reason = found[0]
        raise DeployError(f"{reason}; {key} failed in {stage}, the other results are in {ctx.run_dir}")
    if found:
        failed = [f"{key} {stage}: {reason}" for key, stage, reason in found]
        raise DeployError(f"{len(failed)} backend run(s) failed ({'; '.join(failed)}); the others' results "
                          f"are in {ctx.run_dir}")
    return ctx


def run_task(cfg: DictConfig, model_name: str | None = None) -> Any:
    """``task=deploy`` (the pipeline) or ``task=predict`` (images -> overlays + json)."""
    task = str(cfg.task)
    if task == "deploy":
        return run_pipeline(cfg, model_name)
    if task == "predict":
        try:
            from solo_npu.deploy.predict import run_predict
        except ImportError as exc:
            raise DeployError(f"task=predict is not available: {exc}") from exc
        if not cfg.input:
            raise DeployError("task=predict needs input=IMAGE_OR_DIR (and output=DIR)")
        return run_predict(cfg)
    raise DeployError(f"unknown task {task!r}: use task=deploy or task=predict")


def expected_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or a missing tool, not a bug: printed as one line."""
    from solo_npu.checkpoints import CheckpointError
    from solo_npu.data import AnnotationFileError
    from solo_npu.runtime import DeviceError

    return (DeployError, CheckpointError, DeviceError, FileNotFoundError, FileExistsError, AnnotationFileError,
            ConfigValueError)


def main(cfg: DictConfig, model_name: str | None = None) -> int:
    """CLI edge: run the task, print expected failures as ``error: ...`` without a traceback."""
    try:
        if HydraConfig.initialized():
            mark_explicit_classes(cfg, HydraConfig.get().overrides.task)
        if cfg.get("data") is not None:  # the data settings' ranges and the normalisation, as train.py checks them
            check_values({"data": OmegaConf.to_container(cfg.data, resolve=True)})
        run_task(cfg, model_name)
    except expected_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
