"""Everything that depends on the kind of device: NPU (torch_npu), CUDA or CPU.

This is the only module of the project that branches on the device kind. The rest of the code asks it
which device to use, which distributed backend, how to autocast, how to scale the loss, how to
synchronise and how much memory is in use.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import logging
import math
import os
import platform
import random
import resource
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

DEVICE_KINDS = ("npu", "cuda", "cpu")
_BACKENDS = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}
_AMP_DTYPES = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
AMP_DTYPES = tuple(_AMP_DTYPES)  # amp.dtype: amp_dtype

# Defaults Huawei documents for multi-device training; set only when the user has not set them.
NPU_ENV_DEFAULTS = {
    "HCCL_CONNECT_TIMEOUT": "1800",
    "HCCL_WHITELIST_DISABLE": "1",
    "TASK_QUEUE_ENABLE": "2",
}
# Variables that torch_npu reads when it counts the devices, which resolve_device does (importing torch_npu) before
# setup_device applies runtime.npu.env: ASCEND_RT_VISIBLE_DEVICES chooses the visible devices, and
# torch.npu.device_count() is lru_cached from its first call in older torch_npu (Ascend/pytorch
# torch_npu/npu/utils.py @ fe31f4d8) and cached once the NPU is initialised in newer ones (torch_npu/npu/__init__.py
# @ a145e511, _parse_visible_devices). Even uncached, the device index was already chosen among the devices
# visible then. The other defaults take effect later: HCCL reads its variables when the process group is made,
# and torch_npu reads TASK_QUEUE_ENABLE once, at its first use after set_device
# (torch_npu/csrc/core/npu/register/OptionsManager.cpp @ 99cd9087, GetTaskQueueEnable).
NPU_ENV_BEFORE_IMPORT = ("ASCEND_RT_VISIBLE_DEVICES",)


class DeviceError(RuntimeError):
    """The requested device is not available on this machine."""


@dataclass(frozen=True)
class DeviceInfo:
    """The device a process runs on.

    Attributes:
        type: "npu", "cuda" or "cpu".
        device: the torch.device (with index for accelerators).
        index: the device index (0 on CPU).
    """

    type: str
    device: torch.device
    index: int = 0

    @property
    def is_accelerator(self) -> bool:
        return self.type != "cpu"

    @property
    def inference_channels_last(self) -> bool:
        """Whether eager inference runs channels-last here: on the CPU, where oneDNN's channels-last
        convolutions measured 1.4x faster on SOLOv2 R50 (``benchmarks/inference_mode.py``); accelerators
        keep NCHW (the NPU kernels' native layout; CUDA not measured)."""
        return self.type == "cpu"


def prefers_few_shapes(device: torch.device) -> bool:
    """Whether work on ``device`` should come in a few fixed shapes (padded, batched) rather than in exact,
    varying ones.

    NPU operators are compiled per input shape, and CUDA pays per kernel launch and tunes per shape, so a
    handful of padded or batched shapes beats exact ones there; on the CPU every padded row is only extra
    work.
    """
    return torch.device(device).type != "cpu"


# The torch_npu import failures already reported, so that the several callers of import_torch_npu in one
# resolve_device log each cause once.
_TORCH_NPU_FAILURES_REPORTED: set[str] = set()


def import_torch_npu(*, auto: bool = False) -> ModuleType | None:
    """Import torch_npu when it is installed; None otherwise (never raises for a missing or broken package).

    A torch_npu that is installed but does not import is a disabled NPU with one WARNING naming the cause, and
    with ``auto`` (``resolve_device`` for device=auto) the device the run uses instead; other callers have no
    device to name (device=npu stops with a DeviceError of its own). Since torch 2.5 that failure shows here,
    not at ``import torch``, only where ``TORCH_DEVICE_BACKEND_AUTOLOAD`` is 0 (train.py, deploy.py and
    ``python -m solo_npu...`` set it): otherwise ``import torch`` itself imports torch_npu and fails.

    Only what asks for the NPU or looks for it calls this; the rest of the runtime uses :func:`npu_loaded`,
    so a CPU or CUDA run never imports torch_npu.
    """
    if "torch_npu" in sys.modules:
        return sys.modules["torch_npu"]
    try:
        return importlib.import_module("torch_npu")
    except Exception as exc:  # a broken CANN install raises all kinds of errors at import time
        if isinstance(exc, ModuleNotFoundError) and exc.name == "torch_npu":  # not installed
            return None
        # torch_npu releases with the "torch.backends" entry point (Ascend/pytorch torch_npu/__init__.py @
        # 2655b894; torch_npu/_init/core/module_loader.py, _check_npu_import, on master) re-raise the ImportError
        # of libhccl.so / libascendcl.so with "Please run 'source set_env.sh' in the CANN installation path."
        # and an "[ERROR] ... ERR00008 PTA" line appended: the first line names the cause and the fix.
        lines = str(exc).strip().splitlines()
        cause = f"{type(exc).__name__}: {lines[0].rstrip('.') if lines else ''}"
    except SystemExit:
        # Older torch_npu (torch_npu/__init__.py @ 0036adaa) prints the ImportError of a CANN library it cannot
        # load (libhccl.so, libascendcl.so: CANN's set_env.sh not sourced) and calls sys.exit(), which would end
        # the run with status 0 as if it had succeeded.
        cause = "it could not load a CANN library (see the ImportError above; source CANN's set_env.sh)"
    if cause not in _TORCH_NPU_FAILURES_REPORTED:
        _TORCH_NPU_FAILURES_REPORTED.add(cause)
        instead = f" (device=auto uses {'CUDA' if torch.cuda.is_available() else 'the CPU'} instead)" if auto else ""
        logger.warning("torch_npu is installed but failed to import: %s; NPU disabled%s", cause, instead)
    return None


def _device_count(torch_npu: ModuleType | None) -> int:
    # torch_npu registers its device module as torch.npu (torch._register_device_module in Ascend/pytorch
    # torch_npu/__init__.py) when it imports.
    if torch_npu is None:
        return 0
    npu = getattr(torch, "npu", None) or getattr(torch_npu, "npu", None)
    if npu is None:
        return 0
    try:
        return int(npu.device_count()) if npu.is_available() else 0
    except Exception:  # driver missing or not reachable
        return 0


def _npu_device_count(auto: bool = False) -> int:
    return _device_count(import_torch_npu(auto=auto))


def is_npu_available() -> bool:
    """True when torch_npu imports and reports at least one device (imports torch_npu: see :func:`npu_loaded`
    for a check that does not)."""
    return _npu_device_count() > 0


def npu_loaded() -> bool:
    """True when torch_npu is already imported and reports at least one device; never imports it.

    Every run on the NPU has imported torch_npu (``resolve_device`` does for device npu and auto) before it asks
    this, so a CPU or CUDA run that did not ask for the NPU does not touch torch_npu, broken or not.
    """
    return _device_count(sys.modules.get("torch_npu")) > 0


def resolve_device(name: str = "auto", local_rank: int = 0) -> DeviceInfo:
    """Pick the device for this process.

    Args:
        name: "auto" (npu when torch_npu imports and a device is present, then cuda, then cpu),
            "npu", "cuda", "cpu", or an explicit "npu:1" / "cuda:1".
        local_rank: the process's rank on its node; accelerators are assigned one per rank,
            wrapping around the visible devices.

    Raises:
        DeviceError: an explicitly requested device kind is not available, or an explicit index is not one of
            the visible devices.
    """
    name = (name or "auto").lower()
    explicit_index: int | None = None
    if ":" in name:
        name, idx = name.split(":", 1)
        if not idx.isdigit():
            raise DeviceError(f"bad device {name}:{idx}: the index after ':' is a device number (e.g. {name}:0)")
        explicit_index = int(idx)
    if name not in ("auto", *DEVICE_KINDS):
        raise DeviceError(f"unknown device {name!r}: use one of auto, npu, cuda, cpu")

    def index_of(kind: str, count: int, visible_env: str) -> int:
        # Indices count the visible devices from 0. torch.npu.set_device passes an index beyond them to ACL,
        # which fails with a bare error code (Ascend/pytorch torch_npu/csrc/npu/Module.cpp
        # THNPModule_setDevice_wrap -> csrc/core/npu/sys_ctrl/npu_sys_ctrl.cpp ExchangeDevice: 107001).
        if explicit_index is None:
            # One device per rank: HCCL and NCCL refuse two ranks on one device (NCCL: "Duplicate GPU detected"),
            # HCCL only once its communicator setup times out. LOCAL_WORLD_SIZE: torchrun's, or the launcher's.
            ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
            if ranks > count:
                raise DeviceError(
                    f"{ranks} ranks on this node but {count} {kind} device{'s are' if count > 1 else ' is'} visible "
                    f"({visible_env}={os.environ.get(visible_env, '<unset>')}): each rank needs its own device; "
                    f"start at most {count} per node (launcher.nproc_per_node, torchrun --nproc_per_node)")
            return local_rank % count
        if explicit_index >= count:
            visible = f"{kind}:0" if count == 1 else f"{kind}:0 to {kind}:{count - 1}"
            raise DeviceError(
                f"device={kind}:{explicit_index} requested but {count} {kind} device{'s are' if count > 1 else ' is'}"
                f" visible ({visible}): indices count the visible devices from 0"
                f" ({visible_env}={os.environ.get(visible_env, '<unset>')})")
        return explicit_index

    if name in ("auto", "npu"):
        count = _npu_device_count(auto=name == "auto")
        if count:
            index = index_of("npu", count, "ASCEND_RT_VISIBLE_DEVICES")
            return DeviceInfo("npu", torch.device("npu", index), index)
        if name == "npu":
            from importlib.util import find_spec

            if "torch_npu" in sys.modules:  # imported by _npu_device_count: no second try of a failed import
                hint = "torch_npu imports but reports no device (check the driver and ASCEND_RT_VISIBLE_DEVICES)"
            elif find_spec("torch_npu") is None:
                hint = "torch_npu is not installed (pip install .[npu])"
            else:
                hint = ("torch_npu is installed but does not import (python -c 'import torch_npu' shows why; "
                        "is CANN's set_env.sh sourced? scripts/env_npu.sh does it)")
            raise DeviceError(f"device=npu requested but {hint}")
    if name in ("auto", "cuda"):
        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            index = index_of("cuda", count, "CUDA_VISIBLE_DEVICES")
            return DeviceInfo("cuda", torch.device("cuda", index), index)
        if name == "cuda":
            raise DeviceError("device=cuda requested but torch.cuda.is_available() is False")
    return DeviceInfo("cpu", torch.device("cpu"), 0)


def dist_backend(info: DeviceInfo) -> str:
    """The torch.distributed backend for the device kind: hccl, nccl or gloo."""
    return _BACKENDS[info.type]


def amp_dtype(info: DeviceInfo, dtype: str = "fp16") -> torch.dtype:
    """The autocast dtype: fp16 or bf16 as asked on accelerators; CPU autocast runs bf16 only."""
    if dtype not in _AMP_DTYPES:
        raise ValueError(f"amp.dtype must be one of fp16, bf16 (got {dtype!r})")
    if info.type == "cpu":
        return torch.bfloat16
    return _AMP_DTYPES[dtype]


def amp_notice(info: DeviceInfo, enabled: bool, dtype: str = "fp16", loss_scale: Any = "dynamic") -> str | None:
    """The WARNING for an AMP setting this device runs differently from what it says, or ``None``: fp16 on
    the CPU runs as bf16 (:func:`amp_dtype`), without loss scaling (:func:`make_grad_scaler`); a static
    ``loss_scale`` (the 1p/8p presets' 128) with bf16 on an accelerator is not used either.

    Raises:
        DeviceError: bf16 on an NPU or a CUDA device that says it has no bf16 (:func:`check_amp_dtype`).
    """
    check_amp_dtype(info, enabled, dtype)
    if enabled and info.type == "cpu" and amp_dtype(info, dtype) != _AMP_DTYPES[dtype]:
        return (f"amp.dtype={dtype} on the CPU: autocast runs bf16 here, without loss scaling (amp.loss_scale is "
                "not used); amp.dtype=bf16 says so, amp.enabled=false trains in fp32")
    if enabled and info.type != "cpu" and amp_dtype(info, dtype) == torch.bfloat16 and loss_scale not in (
            None, "dynamic"):
        return (f"amp.loss_scale={loss_scale} is not used with amp.dtype=bf16: bf16 trains without loss scaling "
                "(amp.loss_scale=dynamic says so)")
    return None


def check_amp_dtype(info: DeviceInfo, enabled: bool, dtype: str = "fp16") -> None:
    """Stop a bf16 run on an accelerator that says it has no bf16, before it trains.

    NPU: torch_npu's ``get_amp_supported_dtype`` lists fp16 and fp32 only where ``torch.npu.is_bf16_supported()``
    is False (Ascend/pytorch torch_npu/npu/autocast_utils.py @ 287c65d6; ``is_bf16_supported`` is in
    torch_npu/npu/utils.py @ fe31f4d8, a version before error codes, and in later ones; a torch_npu without it is
    asked ``get_amp_supported_dtype`` itself), and ``torch.autocast`` then only warns and disables itself
    (torch/amp/autocast_mode.py, torch 2.1 and 2.13): the run would train in fp32, and the loss scaler is off for
    bf16 (:func:`make_grad_scaler`). CUDA: ``torch.autocast`` raises at the first forward pass where
    ``torch.cuda.is_bf16_supported()`` is False (same file).

    Raises:
        DeviceError: naming amp.dtype=fp16 as the fix.
    """
    if not enabled or info.type == "cpu" or amp_dtype(info, dtype) != torch.bfloat16:
        return
    if info.type == "npu":
        npu = getattr(torch, "npu", None)
        is_bf16 = getattr(npu, "is_bf16_supported", None)
        if is_bf16 is not None:
            supported, answer = is_bf16(), "torch.npu.is_bf16_supported() is False"
        else:
            supported = torch.bfloat16 in npu.get_amp_supported_dtype()
            answer = "torch.npu.get_amp_supported_dtype() has no bfloat16"
        fallback = "torch.autocast would only warn and train in fp32"
    else:
        supported, answer = torch.cuda.is_bf16_supported(), "torch.cuda.is_bf16_supported() is False"
        fallback = "torch.autocast would stop at the first step"
    if not supported:
        raise DeviceError(f"amp.dtype={dtype} but this {info.type.upper()} device has no bfloat16 ({answer}; "
                          f"{fallback}): use amp.dtype=fp16 (with loss scaling), or amp.enabled=false for fp32")


def autocast(info: DeviceInfo, enabled: bool, dtype: str = "fp16") -> contextlib.AbstractContextManager:
    """An autocast context for the device (a no-op context when disabled)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=info.type, dtype=amp_dtype(info, dtype))


def grad_scaler_class(device_type: str) -> type:
    """The GradScaler class for the device kind, found by feature rather than by version number.

    NPU: ``torch_npu.npu.amp.GradScaler`` wherever torch_npu has it, on every torch (Ascend/pytorch
    torch_npu/npu/amp/grad_scaler.py @ 4ee8ead91253a641b91023d366a86fc75b71a604). On chips in saturation mode
    (Ascend 910, ``torch_npu.npu.utils.is_support_inf_nan()`` False: an fp16 overflow saturates instead of
    giving inf/NaN) it clears the NPU overflow flag in ``scale()`` and all-reduces an overflow count across
    the ranks in ``_sync_dist_overflow_count``, so that every rank skips the same steps; PyTorch's scaler
    has no such exchange, and the ranks' parameters could drift apart. Without it: ``torch.amp.GradScaler``
    (torch >= 2.3, which takes the device kind ``"npu"``).

    CUDA and CPU: ``torch.amp.GradScaler`` on torch >= 2.3, ``torch.cuda.amp.GradScaler`` before (torch 2.1,
    the oldest line torch_npu still maintains).

    Raises:
        DeviceError: NPU where torch_npu lacks ``npu.amp.GradScaler`` and torch has no ``torch.amp.GradScaler``.
    """
    amp_scaler = getattr(torch.amp, "GradScaler", None)
    if device_type == "npu":
        npu_scaler = getattr(getattr(getattr(import_torch_npu(), "npu", None), "amp", None), "GradScaler", None)
        if npu_scaler is not None:
            return npu_scaler
        if amp_scaler is None:
            raise DeviceError(
                f"torch {torch.__version__} has no torch.amp.GradScaler and torch_npu.npu.amp.GradScaler is missing")
        return amp_scaler
    return amp_scaler if amp_scaler is not None else torch.cuda.amp.GradScaler


def _grad_scaler_args(base: type, device: str, init_scale: float, enabled: bool) -> tuple[tuple, dict[str, Any]]:
    # Decided by the constructor, not by the class tree: torch.amp.GradScaler takes the device kind first, the
    # per-device classes do not, and torch_npu's GradScaler subclasses torch.cuda.amp.GradScaler (itself a
    # torch.amp.GradScaler on torch >= 2.3) with GradScaler(init_scale, growth_factor, backoff_factor,
    # growth_interval, dynamic, enabled). Its dynamic=True (the default) is asked for explicitly: with False it
    # neither checks the gradients for inf/NaN nor skips a step (_unscale_grads_, step).
    params = inspect.signature(base.__init__).parameters
    args = (device,) if "device" in params else ()
    kwargs: dict[str, Any] = {"init_scale": init_scale, "enabled": enabled}
    if "dynamic" in params:
        kwargs["dynamic"] = True
    return args, kwargs


class StaticGradScaler:
    """A GradScaler whose scale never changes (apex ``loss_scale=128``).

    Steps whose gradients hold inf/NaN are still skipped by ``step``; ``update`` puts the scale back
    to its fixed value instead of backing off or growing. ``StaticGradScaler(device, scale)`` returns
    an instance of a subclass of ``grad_scaler_class(device)``, so it works on every torch the project
    supports. torch_npu's own ``dynamic=False`` mode is not used: it stops checking gradients for
    inf/NaN (``_unscale_grads_`` only checks when dynamic), so overflowing steps would be applied, and it
    skips the cross-rank overflow exchange (``_sync_dist_overflow_count``); underneath it stays dynamic and
    ``update`` passes the fixed scale as ``new_scale``, which torch_npu's ``update`` sets without backing off.
    """

    static_scale: float
    _base: type

    def __new__(cls, device: str, scale: float, enabled: bool = True) -> StaticGradScaler:
        if cls is StaticGradScaler:
            cls = _static_scaler_class(grad_scaler_class(device))
        return object.__new__(cls)

    def __init__(self, device: str, scale: float, enabled: bool = True) -> None:
        args, kwargs = _grad_scaler_args(self._base, device, float(scale), enabled)
        super().__init__(*args, **kwargs)
        self.static_scale = float(scale)

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        super().update(self.static_scale if new_scale is None else new_scale)  # type: ignore[misc]

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a saved state but keep this scaler's fixed scale: a checkpoint of a dynamic scale (or of another
        ``amp.loss_scale``) would otherwise set its own scale until the first ``update``, so the first resumed
        step ran at a scale the config does not name. The caller says so (the checkpoint's ``scale``)."""
        super().load_state_dict({**state_dict, "scale": self.static_scale})  # type: ignore[misc]

    def overflowed(self, optimizer: Any) -> bool:
        """Whether the last ``step(optimizer)`` was skipped for an overflow, as the scaler found it (every rank's on
        torch_npu); call it between ``step`` and ``update``, which forgets it. The gradients cannot tell: the NPU's
        check leaves them scaled on an overflow, and an Ascend 910 in saturation mode finds it in the chip's float
        status while every gradient stays finite (Ascend/op-plugin AmpForeachNonFiniteCheckAndUnscaleKernelNpu.cpp).
        """
        if not self.is_enabled():  # type: ignore[attr-defined]
            return False  # a disabled scaler keeps no state and skips nothing
        state = self._per_optimizer_states.get(id(optimizer))  # type: ignore[attr-defined]
        if not state:
            return False
        return any(float(found.sum()) > 0 for found in state["found_inf_per_device"].values())


@functools.cache
def _static_scaler_class(base: type) -> type:
    return type(f"Static{base.__name__}", (StaticGradScaler, base), {"__module__": __name__, "_base": base})


def load_grad_scaler_state(scaler: Any, state: Mapping[str, Any]) -> None:
    """Load a GradScaler state saved by any of the scaler classes (:func:`grad_scaler_class`) into ``scaler``.

    torch_npu's GradScaler adds ``"dynamic"`` to its state and its ``load_state_dict`` reads
    ``state_dict["dynamic"]`` (KeyError without it; torch_npu/npu/amp/grad_scaler.py @ 4ee8ead9), while
    PyTorch's scalers neither write nor read it. A state without it (saved on CUDA, on another torch, or where
    torch_npu had no scaler) gets the scaler's own mode, which is always dynamic here (inf/NaN checked, see
    :class:`StaticGradScaler`); PyTorch's scalers ignore an extra ``"dynamic"``.
    """
    state = dict(state)
    if "dynamic" not in state and scaler.is_enabled():
        own = scaler.state_dict()
        if "dynamic" in own:
            state["dynamic"] = own["dynamic"]
    scaler.load_state_dict(state)


def make_grad_scaler(
    info: DeviceInfo, enabled: bool, loss_scale: str | float | None = "dynamic", dtype: str = "fp16"
) -> Any:
    """A GradScaler (of :func:`grad_scaler_class`): dynamic, or static like apex O1 with ``loss_scale=128``.

    Only fp16 needs loss scaling: the scaler is disabled when AMP is off or runs in bf16 (always the
    case on CPU), and then ``scale``/``step``/``update`` pass straight through.
    """
    use = enabled and amp_dtype(info, dtype) == torch.float16
    scale = static_loss_scale(loss_scale)
    if scale is None:
        base = grad_scaler_class(info.type)
        args, kwargs = _grad_scaler_args(base, info.type, 2.0**16, use)
        return base(*args, **kwargs)
    return StaticGradScaler(info.type, scale, enabled=use)


def static_loss_scale(loss_scale: Any) -> float | None:
    """``amp.loss_scale`` read: ``None`` for a dynamic scale (``"dynamic"`` or null), else the static scale, a finite
    number > 0 (apex O1's 128); ValueError for anything else."""
    if loss_scale in (None, "dynamic"):
        return None
    try:
        scale = float(loss_scale) if not isinstance(loss_scale, bool) else math.nan
    except (TypeError, ValueError):
        scale = math.nan
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"amp.loss_scale must be 'dynamic' or a positive number (got {loss_scale!r})")
    return scale


def _device_module(info: DeviceInfo) -> Any:
    return getattr(torch, info.type, None) if info.is_accelerator else None


def synchronize(info: DeviceInfo) -> None:
    """Wait for all queued work on the device (no-op on CPU)."""
    mod = _device_module(info)
    if mod is not None:
        mod.synchronize()


def _rss_mb() -> tuple[float, float]:
    current = 0.0
    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        pass
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak_kb / 1024 if sys.platform != "darwin" else peak_kb / 2**20
    return current, peak


def memory_stats(info: DeviceInfo) -> dict[str, float]:
    """Memory in MiB: device allocator on accelerators, process RSS on CPU."""
    mod = _device_module(info)
    if mod is not None:
        return {
            "allocated_mb": mod.memory_allocated(info.index) / 2**20,
            "peak_mb": mod.max_memory_allocated(info.index) / 2**20,
        }
    current, peak = _rss_mb()
    return {"allocated_mb": current, "peak_mb": peak}


def reset_peak_memory(info: DeviceInfo) -> None:
    """Reset the peak counter of the device allocator (the CPU's max RSS cannot be reset)."""
    mod = _device_module(info)
    if mod is not None:
        mod.reset_peak_memory_stats(info.index)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); optionally ask for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def sgd_class(info: DeviceInfo, fused: bool = False) -> type[torch.optim.Optimizer]:
    """torch.optim.SGD, or torch_npu's NpuFusedSGD on NPU when ``fused`` is asked for.

    NpuFusedSGD flattens parameters into one buffer: parameters must never be re-allocated after the
    optimiser is built.
    """
    if fused and info.type == "npu":
        torch_npu = import_torch_npu()
        fused_cls = getattr(getattr(torch_npu, "optim", None), "NpuFusedSGD", None)
        if fused_cls is not None:
            return fused_cls
        logger.warning("optim.fused=true but torch_npu.optim.NpuFusedSGD is missing; using torch.optim.SGD")
    elif fused:
        logger.info("optim.fused applies to NPU only; using torch.optim.SGD on %s", info.type)
    return torch.optim.SGD


def is_fused_optimizer(optimizer: torch.optim.Optimizer) -> bool:
    """True for torch_npu's fused optimisers (NpuFusedSGD ...), which mark themselves ``is_fused_optimizer``.

    At their first use they move every parameter and gradient into one flat buffer per dtype and from then
    on work on that buffer. Three rules follow, each answered by a function of this module:
    :func:`zero_grad` (``set_to_none=True`` raises ValueError), :func:`clip_grad_norm` (the optimiser clips
    its own buffer) and :func:`ddp_options` (no gradient bucket views). See docs/npu.md.
    """
    return bool(getattr(optimizer, "is_fused_optimizer", False))


def zero_grad(optimizer: torch.optim.Optimizer) -> None:
    """Clear the gradients before a backward pass.

    Plain optimisers drop them (``set_to_none=True``: no memset, and a skipped step cannot leave stale
    gradients). Fused optimisers zero their combined buffer: dropping a gradient would detach it from the
    buffer, and ``NpuFusedOptimizerBase.zero_grad`` raises ValueError when asked to.
    """
    optimizer.zero_grad(set_to_none=not is_fused_optimizer(optimizer))


def clip_grad_norm(optimizer: torch.optim.Optimizer, max_norm: float | None) -> float:
    """Clip the optimiser's gradients to an L2 norm of ``max_norm`` and return their norm before clipping.

    ``max_norm`` None or 0 only measures the norm. Call it after ``GradScaler.unscale_`` so that the limit
    applies to true gradients. Fused optimisers clip their combined buffer (``clip_grad_norm_fused_``);
    the others use ``torch.nn.utils.clip_grad_norm_`` over the parameters that have a gradient.
    """
    limit = float(max_norm) if max_norm else float("inf")
    if is_fused_optimizer(optimizer):
        return float(optimizer.clip_grad_norm_fused_(limit))
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return float(torch.nn.utils.clip_grad_norm_(params, limit)) if params else 0.0


def ddp_options(info: DeviceInfo, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Keyword arguments for ``DistributedDataParallel`` on this device with this optimiser.

    ``device_ids`` names the device of a device-resident module (None for one in host memory).
    ``gradient_as_bucket_view`` saves a gradient-sized copy per step, but DDP then re-points each
    ``.grad`` at its own bucket, which would detach it from a fused optimiser's combined buffer (the
    optimiser would step on stale gradients): off for fused optimisers, on otherwise.
    ``broadcast_buffers`` stays at DDP's default, on (mmdetection turns it off): the backbone's FrozenBatchNorm keeps
    its affine and statistics in buffers, and before torch 2.13 ``broadcast_buffers=False`` also skips DDP's
    construction-time sync (``_sync_module_states``), so a rank that loaded other ImageNet weights (another file
    at the same path on one node) would keep other frozen statistics with nothing to say so; the per-step broadcast
    is one coalesced collective of small tensors.
    """
    return {"device_ids": [info.index] if info.device.type != "cpu" else None,
            "gradient_as_bucket_view": not is_fused_optimizer(optimizer)}


def apply_env_defaults(defaults: Mapping[str, str], env: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Set environment variables that are not set yet; explicit ``env`` entries always win.

    Returns the variables that were set.
    """
    applied: dict[str, str] = {}
    for key, value in defaults.items():
        if key not in os.environ:
            os.environ[key] = str(value)
            applied[key] = str(value)
    for key, value in (env or {}).items():
        os.environ[str(key)] = str(value)
        applied[str(key)] = str(value)
    return applied


def apply_npu_env(cfg_runtime: Mapping[str, Any] | None = None, device: str | None = None) -> dict[str, str]:
    """Apply :data:`NPU_ENV_DEFAULTS` and ``runtime.npu.env`` to the environment; the variables set. With
    ``device`` (the ``runtime.device`` asked for), only where it may be an NPU (``npu``, ``npu:N``, ``auto``).

    Call it before :func:`resolve_device` imports torch_npu and counts the devices, and every variable takes effect;
    :func:`setup_device` calls it again (a no-op for what is set already).

    Raises:
        DeviceError: a ``runtime.npu.env`` variable of :data:`NPU_ENV_BEFORE_IMPORT` would change after torch_npu
            was imported: the devices are counted and chosen already, so it could not take effect.
    """
    if device is not None and str(device).lower().partition(":")[0] not in ("npu", "auto"):
        return {}
    env = {str(k): str(v) for k, v in (((cfg_runtime or {}).get("npu") or {}).get("env") or {}).items()}
    if (cfg_runtime or {}).get("deterministic") and "HCCL_DETERMINISTIC" not in env:
        # Deterministic kernels do not cover HCCL's reductions (AllReduce, ReduceScatter, Reduce): they are
        # deterministic only with HCCL_DETERMINISTIC=true (CANN environment variable reference,
        # envref_07_0099: default false; read when the communicator is made). An exported value is kept.
        env["HCCL_DETERMINISTIC"] = os.environ.get("HCCL_DETERMINISTIC", "true")
    if "torch_npu" in sys.modules:
        for key in NPU_ENV_BEFORE_IMPORT:
            if key in env and os.environ.get(key) != env[key]:
                raise DeviceError(
                    f"runtime.npu.env.{key}={env[key]} cannot take effect: torch_npu has already counted the visible "
                    f"devices with {key}={os.environ.get(key, '<unset>')} and the run's device was chosen among them; "
                    f"set it in the environment before the run starts ({key}={env[key]} python train.py ...)")
    return apply_env_defaults(NPU_ENV_DEFAULTS, env)


def setup_device(info: DeviceInfo, cfg_runtime: Mapping[str, Any] | None = None) -> None:
    """Make ``info`` the current device and apply device-specific settings from ``cfg.runtime``.

    On NPU: environment defaults (HCCL timeouts, task queue) and ``runtime.npu.env`` (:func:`apply_npu_env`,
    which refuses a device-choosing variable that comes too late), the operator compile mode
    (``runtime.npu.jit_compile``: False avoids recompiling operators for every new shape) and the
    current device. On CUDA: the current device and cudnn.benchmark. On CPU: nothing.
    """
    cfg_runtime = cfg_runtime or {}
    if info.type == "npu":
        npu_cfg = cfg_runtime.get("npu") or {}
        apply_npu_env(cfg_runtime)
        torch_npu = import_torch_npu()
        torch.npu.set_device(info.device)
        set_mode = getattr(getattr(torch_npu, "npu", None), "set_compile_mode", None)
        if set_mode is not None:
            set_mode(jit_compile=bool(npu_cfg.get("jit_compile", False)))
    elif info.type == "cuda":
        torch.cuda.set_device(info.device)
        torch.backends.cudnn.benchmark = bool(cfg_runtime.get("cudnn_benchmark", False))


def pin_memory_kwargs(pin_memory: bool) -> dict[str, Any]:
    """``DataLoader`` keyword arguments that pin batches for this process's accelerator (``pin_memory=False``: none).

    On the NPU (torch_npu imported and reporting a device: :func:`npu_loaded`) a torch whose DataLoader pins for
    CUDA only (:func:`~solo_npu.runtime.compat.dataloader_pins_for_accelerator`, torch 2.1) needs
    ``pin_memory_device="npu"`` (a DataLoader argument since torch 1.12; torch_npu's own DataLoader tests pass
    ``pin_memory=True, pin_memory_device='npu'`` and check ``is_pinned(device='npu')``); newer ones pin for the
    current accelerator by themselves and only warn about the argument.
    """
    from solo_npu.runtime.compat import dataloader_pins_for_accelerator

    if pin_memory and npu_loaded() and not dataloader_pins_for_accelerator():
        return {"pin_memory": True, "pin_memory_device": "npu"}
    return {"pin_memory": bool(pin_memory)}


def accelerator_rng_states() -> dict[str, list[torch.Tensor]]:
    """RNG states of every accelerator this process can see (CUDA and/or NPU), for exact resume. The NPU's only
    where torch_npu is imported (:func:`npu_loaded`): a run on the NPU has imported it, a CPU run has no NPU
    states to keep."""
    states: dict[str, list[torch.Tensor]] = {}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    if npu_loaded():
        states["npu"] = torch.npu.get_rng_state_all()
    return states


def set_accelerator_rng_states(states: Mapping[str, Any]) -> None:
    """Restore states saved by :func:`accelerator_rng_states` (kinds this process lacks are ignored, the NPU's
    where torch_npu is not imported: :func:`npu_loaded`)."""
    if "cuda" in states and torch.cuda.is_available():
        _set_rng_states(torch.cuda, "cuda", states["cuda"])
    if "npu" in states and npu_loaded():
        _set_rng_states(torch.npu, "npu", states["npu"])


def _set_rng_states(module: Any, kind: str, states: Sequence[torch.Tensor]) -> None:
    """One saved state per device this process sees. A run resumed where fewer devices are visible (8 saved, the
    survivors of a card failure behind CUDA_VISIBLE_DEVICES) restores the first ones:
    ``set_rng_state_all`` would index past ``default_generators`` (torch/cuda/random.py)."""
    count = module.device_count()
    if len(states) == count:
        module.set_rng_state_all(states)
        return
    for index, state in enumerate(list(states)[:count]):
        module.set_rng_state(state, index)
    logger.warning("resume: the checkpoint holds %d %s RNG states and %d devices are visible: the first %d restored",
                   len(states), kind, count, min(count, len(states)))


def describe_machine() -> str:
    """One line naming the machine for benchmark reports: CPU model and cores, torch, accelerators (NPUs where
    torch_npu is imported: :func:`npu_loaded`; ``benchmarks/common.py`` imports it first)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    parts = [f"{cpu} ({os.cpu_count()} cores)", f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        parts.append(f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}")
    if npu_loaded():
        parts.append(f"{torch.npu.device_count()}x {torch.npu.get_device_name(0)}")
    return ", ".join(parts)
