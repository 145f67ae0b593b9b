"""Train, fine-tune or evaluate SOLOv2 on NPU, CUDA or CPU.

Examples::

    python train.py +experiment=demo                      # light SOLOv2 on the synthetic set (CPU friendly)
    python train.py +experiment=1p data.root=data/coco    # one device
    python train.py +experiment=8p data.root=data/coco    # 8 devices on this machine (spawns 8 workers)
    torchrun --nproc_per_node=8 train.py +experiment=8p   # same, launched by torchrun
    python train.py +experiment=eval checkpoint=outputs/<run>/checkpoints/best.pth
    python train.py +experiment=finetune checkpoint=SOLOv2_R50_1x.pth data=synthetic
    python train.py resume=auto run_dir=outputs/<run>     # continue an interrupted run in its directory

The config is composed once (``conf/config.yaml``); every run gets one directory under ``outputs/``
holding ``config.yaml``, ``train.log``, ``metrics.csv``, TensorBoard scalars, ``checkpoints/``,
``summary.json`` and the plots.
"""

from __future__ import annotations

import os

# Before anything imports torch: torch >= 2.5 imports every "torch.backends" entry point at `import torch`
# (torch/__init__.py, _import_device_backends), torch_npu's among them, and turns any failure of it into a
# RuntimeError that ends the program there, even for runtime.device=cpu. Off, torch_npu is imported by
# solo_npu.runtime.import_torch_npu only (resolve_device for npu and auto): a
# broken install is one WARNING, or one error line for runtime.device=npu. The spawned workers inherit the
# setting; a value the user set wins.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

import contextlib  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from solo_npu.config import register_configs  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from solo_npu.checkpoints import CheckpointError
    from solo_npu.config.values import ConfigValueError
    from solo_npu.data import AnnotationFileError, DatasetNotFoundError
    from solo_npu.engine.backbone_init import BackboneInitError
    from solo_npu.engine.interrupts import InterruptedMidStep, Terminated
    from solo_npu.engine.job import check_start, run_job
    from solo_npu.engine.launch import launch, torchrun_env
    from solo_npu.engine.logs import setup_logging
    from solo_npu.engine.trainer import NonFiniteLossError
    from solo_npu.runtime import DeviceError

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise SystemExit(f"[Error] missing mandatory config values: {', '.join(missing)} (set them as key=value)")
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    env = torchrun_env()
    if env is None or env.rank == 0:
        setup_logging(run_dir, 0)
    job_cfg = OmegaConf.to_container(cfg, resolve=True)
    try:
        check_start(job_cfg, run_dir)  # before any worker: one line for a run that cannot start as configured
        launch(run_job, job_cfg, run_dir)
    except (BackboneInitError, ConfigValueError, DatasetNotFoundError) as exc:
        raise _stop(f"[Error] {exc}") from None
    except DeviceError as exc:  # the device asked for is not usable here: one line, not a traceback
        raise _stop(f"[Error] DeviceError: {exc}") from None
    except CheckpointError as exc:  # a resume or weights file that does not fit this run
        raise _stop(f"[Error] CheckpointError: {exc}") from None
    except AnnotationFileError as exc:  # read by the workers: one line, not a traceback
        raise _stop(f"[Error] {exc}") from None
    except NonFiniteLossError:  # logged by the run (train.log and the console), last.pth saved: no traceback
        raise SystemExit(1) from None
    except InterruptedMidStep:  # a second Ctrl-C inside a step: nothing saved (solo_npu.engine.interrupts)
        _say(f"[Error] interrupted inside a step; resume=auto run_dir={run_dir} continues from the last checkpoint")
        raise SystemExit(130) from None
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM after a step: the state is saved; exit as the shells say
        name = "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"
        _say(f"[Error] stopped by {name}; resume=auto run_dir={run_dir} continues the run")
        raise SystemExit(143 if isinstance(exc, Terminated) else 130) from None


def _stop(line: str) -> SystemExit:
    """The exit of a run that cannot go on: ``line`` on stderr (Python prints a SystemExit's message there) and in
    the run's train.log, which would otherwise say nothing of why the run ended."""
    from solo_npu.engine.logs import to_log_file

    to_log_file(line)
    return SystemExit(line)


def _say(line: str) -> None:
    """One line on stderr and in train.log; a stderr that is gone (a pipe to `tee`, ended by the same Ctrl-C)
    changes nothing."""
    from solo_npu.engine.logs import to_log_file

    to_log_file(line)
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)


def _unknown_override(argv: list[str]) -> str | None:
    """The first command-line mistake as one line, before Hydra's longer report: a key no training setting has
    (``train.epochz=3``: ``train has no setting 'epochz' (did you mean train.epochs?)``), a value of the wrong
    type, or a config-group choice that is not there (``model=solov3``)."""
    from solo_npu.config.deploy_schema import check_overrides
    from solo_npu.config.schema import TrainJobConfig

    return check_overrides(argv, TrainJobConfig, Path(__file__).resolve().parent / "conf")


if __name__ == "__main__":
    unknown = _unknown_override(sys.argv[1:])
    if unknown:
        print(f"[Error] {unknown}", file=sys.stderr)
        sys.exit(1)
    try:
        code = main()
    except SystemExit as exc:
        code = exc.code
    from solo_npu.engine.launch import exit_process

    exit_process(code)
