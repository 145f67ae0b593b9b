"""Structured-config schemas for the fixed sections of the training config.

They are registered in Hydra's ConfigStore (``register_configs``) and used as the first entry of
``conf/config.yaml``'s defaults list, so a misspelled key in a yaml file or on the command line fails
with an error that names the key. The ``data`` and ``runtime`` groups are typed too (values in their yaml
files); ``model`` is typed ``Any``: a model yaml holds its builder's arguments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass
class OptimConfig:
    """SGD (or AdamW) with linear warm-up and a step schedule (epochs in ``lr_steps`` are 0-based)
    or a cosine decay over the whole run."""

    name: str = "sgd"  # sgd | adamw
    base_lr: float = 0.01
    base_batch_size: int = 16  # base_lr is for this total batch; scaled linearly when auto_scale_lr
    auto_scale_lr: bool = True
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adamw
    weight_decay: float = 1e-4
    nesterov: bool = False
    fused: bool = False  # torch_npu NpuFusedSGD on NPU
    grad_clip: float | None = 35.0  # max-norm; null disables clipping
    warmup_iters: int = 500
    warmup_ratio: float = 0.01
    lr_steps: list[int] = field(default_factory=lambda: [9, 11])
    gamma: float = 0.1
    policy: str = "step"  # step | cosine (over all iterations of the run, down to min_lr_ratio x lr)
    min_lr_ratio: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 2  # per device
    max_iters: int | None = None  # cap on the total number of iterations (performance runs)
    workers: int | None = None  # dataloader workers per process (null: data.num_workers)
    log_interval: int = 50  # iterations
    eval_interval: int = 1  # epochs; 0 evaluates only at the end
    eval_at_end: bool = True
    checkpoint_interval: int = 1  # epochs between numbered checkpoints (epoch_N.pth); 0 disables
    checkpoint_interval_iters: int = 500  # also refresh last.pth every N iterations (0: off)
    max_nonfinite: int = 10  # stop after this many non-finite losses in a row
    sync_bn: bool = False
    freeze_backbone: bool = False
    progress: str = "auto"  # auto (tqdm on a TTY, plain lines otherwise) | tqdm | plain
    eval_batch_size: int = 1  # per device; a batch holds images of one canvas, so the AP is that of batch 1
    vis_images: int = 4  # validation images drawn with predictions at the end
    plots: bool = True


@dataclass
class AmpConfig:
    enabled: bool = False
    dtype: str = "fp16"  # fp16 | bf16 (CPU autocast always runs bf16)
    loss_scale: Any = "dynamic"  # "dynamic" or a number (128 = ModelZoo apex O1)


@dataclass
class LauncherConfig:
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0  # 0: a free port on single-node runs (multi-node runs need a fixed one)
    timeout_min: int = 30


@dataclass
class FinetuneConfig:
    enabled: bool = False
    reinit_classifier: bool = True  # re-initialise the classifier when its shape does not match


@dataclass
class DebugConfig:
    nonfinite_iters: list[int] = field(default_factory=list)  # iterations whose loss is poisoned with NaN


@dataclass
class SplitConfig:
    img_dir: str = MISSING  # relative to data.root
    ann_file: str = MISSING  # COCO instances json, relative to data.root


@dataclass
class NormalizeConfig:
    style: str = MISSING  # pytorch (RGB) | caffe (BGR)
    mean: list[float] | None = MISSING
    std: list[float] | None = MISSING


@dataclass
class PadConfig:
    mode: str = MISSING  # divisor | fixed
    size_divisor: int = MISSING
    canvas: list[int] | None = MISSING  # [H, W] when mode is fixed
    position: str = MISSING  # top_left | centre


@dataclass
class DataConfig:
    """``data:`` (conf/data/*.yaml, read by solo_npu.data and the deploy stages); the values and their
    meaning are in the yaml files. The synthetic generator's keys are null for other datasets."""

    name: str = MISSING
    root: str = MISSING
    generate: bool = MISSING  # generate the synthetic dataset on first use
    train: SplitConfig = MISSING  # the training split
    val: SplitConfig = MISSING  # the evaluation split
    num_classes: int = MISSING
    class_names: list[str] | None = MISSING
    img_scale: list[int] = MISSING  # (long, short)
    multiscale_short: list[int] | None = MISSING
    flip_prob: float = MISSING
    normalize: NormalizeConfig = MISSING  # pixel normalisation of the images
    pad: PadConfig = MISSING  # canvas of a batch
    max_instances: int = MISSING
    # training skips an image whose shorter side is under this many px (mmdet's filter_cfg min_size, 32 in
    # configs/_base_/datasets/coco_instance.py); 0 keeps every size. A default: a data yaml may leave it out
    min_size: int = 32
    instance_slots: str = MISSING  # ladder | fixed
    slot_ladder: list[int] = MISSING
    num_workers: int = MISSING
    pin_memory: bool | None = MISSING
    group_by_aspect_ratio: bool = MISSING
    num_train: int | None = None  # synthetic: images per split, side, seed, shape sizes and count
    num_val: int | None = None
    size: int | None = None
    seed: int | None = None
    shape_scale: list[float] | None = None
    max_shapes: int | None = None


@dataclass
class NpuRuntimeConfig:
    jit_compile: bool = MISSING
    env: dict[str, Any] = MISSING  # extra environment variables set before the device is initialised


@dataclass
class RuntimeConfig:
    """``runtime:`` (conf/runtime/default.yaml, read by solo_npu.runtime); values in the yaml."""

    device: str = MISSING  # auto | npu | cuda | cpu
    seed: int = MISSING
    deterministic: bool = MISSING
    cudnn_benchmark: bool = MISSING
    channels_last: bool = MISSING
    fixed_shapes: str = "always"  # always | npu: where the config's fixed training shapes hold
    npu: NpuRuntimeConfig = MISSING  # NPU-only settings


@dataclass
class JobConfig:
    """What the roots of conf/config.yaml and conf/deploy.yaml share: the config groups. ``model`` is typed
    ``Any``: a model yaml holds its builder's arguments (``_target_``), which the builder checks."""

    model: Any = MISSING
    data: DataConfig = MISSING
    runtime: RuntimeConfig = MISSING


@dataclass
class TrainJobConfig(JobConfig):
    """The root of ``conf/config.yaml``."""

    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    amp: AmpConfig = field(default_factory=AmpConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    mode: str = "train"  # train | eval
    checkpoint: str | None = None  # weights for eval / finetune (any format the converters read)
    checkpoint_source: str = "auto"
    checkpoint_trust_pickle: bool = False
    eval_detections: str | None = None  # mode=eval: also write the detections (COCO results json) to this path
    resume: str | None = None  # null | auto | path to a checkpoint of this project
    run_dir: str | None = None  # reuse a previous run directory (with resume=auto)
    output_root: str = "outputs"
    experiment_name: str = "default"


def resolve_run_dir(run_dir: str | None, output_root: str, stamp: str) -> str:
    """``hydra.run.dir``: an explicit ``run_dir``, else ``$SOLO_RUN_DIR``, else ``<output_root>/<stamp>``.

    Under torchrun every rank composes the config itself, a clock tick apart: with a rendezvous id
    (``--standalone`` draws one, multi-node runs pass ``--rdzv-id``) all ranks use
    ``<output_root>/torchrun_<id>`` instead of their own timestamps.
    """
    if run_dir:
        return str(run_dir)
    if os.environ.get("SOLO_RUN_DIR"):
        return os.environ["SOLO_RUN_DIR"]
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if "RANK" in os.environ and run_id and run_id != "none":
        return os.path.join(output_root, f"torchrun_{run_id}")
    return os.path.join(output_root, stamp)


def canvas_side(img_scale: Any, size_divisor: Any = 32) -> int:
    """``${solo_canvas_side:${data.img_scale},${data.pad.size_divisor}}``: the side of the smallest square
    canvas, a multiple of ``size_divisor``, that holds every keep-ratio resize to ``img_scale`` =
    (long, short) in either orientation (no side exceeds ``max(img_scale)``, multi-scale training
    included). 1333 -> 1344, the canvas of the Ascend ModelZoo SOLOV2 for PyTorch training port."""
    divisor = max(1, int(size_divisor))
    return -(-max(int(v) for v in img_scale) // divisor) * divisor


_REGISTERED = False


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (``train_schema`` for conf/config.yaml, ``deploy_schema``
    for conf/deploy.yaml) and the ``solo_run_dir`` and ``solo_canvas_side`` resolvers (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from solo_npu.config.deploy_schema import DeployJobConfig

    ConfigStore.instance().store(name="train_schema", node=TrainJobConfig)
    ConfigStore.instance().store(name="deploy_schema", node=DeployJobConfig)
    if not OmegaConf.has_resolver("solo_run_dir"):
        OmegaConf.register_new_resolver("solo_run_dir", resolve_run_dir)
    if not OmegaConf.has_resolver("solo_canvas_side"):
        OmegaConf.register_new_resolver("solo_canvas_side", canvas_side)
    _REGISTERED = True
