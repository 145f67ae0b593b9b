"""A stand-in for torch_npu on a machine without Ascend hardware.

It reproduces the parts of torch_npu that solo_npu calls (listed in docs/npu.md), with their signatures,
their results and the errors they raise, so that a test fails where the real package would fail.
"The real one" below is the Ascend/pytorch repository (torch_npu); each behaviour cites the file it follows.

The fused optimisers are emulated on host memory the way torch_npu builds them: at their first use they
move every parameter and every gradient into one flat buffer per dtype (``npu_combine_tensors`` re-points
each tensor's storage into the buffer) and from then on zero, clip and update the buffer. One deliberate
difference: where the real optimiser's documentation promises "unpredictable results" (a parameter or a
gradient re-allocated after the buffer was built, e.g. by DDP's ``gradient_as_bucket_view``), the real one
silently steps on a stale buffer; the stand-in raises instead, so a test sees the fault.

torch_npu's GradScaler (``npu.amp.GradScaler``) is reproduced on host memory too; its class docstring says where
it must differ from the real one and why.

Use :func:`install` (with pytest's ``monkeypatch`` in a test, without it in a spawned worker).
"""

from __future__ import annotations

import math
import os
import sys
import types
import warnings
from collections import Counter, defaultdict
from typing import Any

import torch
import torch.distributed as dist
from torch.optim.optimizer import required

try:  # OptState: torch.amp's on torch >= 2.3; torch 2.1's torch.cuda.amp, where grad_scaler.py @ 4ee8ead9 imports it
    from torch.amp.grad_scaler import OptState
except ImportError:
    from torch.cuda.amp.grad_scaler import OptState

# Message of NpuFusedOptimizerBase.zero_grad (torch_npu/optim/npu_fused_optim_base.py).
SET_TO_NONE_MESSAGE = "set_to_none is not supported in fused optimizers"
# Every fused optimiser this process built, newest last (tests read their ``calls``).
FUSED_OPTIMIZERS: list[NpuFusedOptimizerBase] = []
# The device type of the tensors the stand-in takes for NPU tensors. The real npu_combine_tensors refuses a tensor whose
# device type is not "npu"; the installed stand-in keeps NPU tensors in host memory and takes "cpu" ones as well
# (``install(npu_memory=...)``); the bare module (its classes used without ``install``) takes "npu" ones only.
NPU_MEMORY = "npu"
# What torch_npu raises for a device index the runtime does not have: torch_npu/csrc/npu/Module.cpp @ b1190f22
# (THNPModule_setDevice_wrap) calls NpuSysCtrl::ExchangeDevice, whose NPU_CHECK_ERROR_WITHOUT_UCE(c10_npu::SetDevice(
# device)) turns ACL_ERROR_RT_INVALID_DEVICEID (107001) into a RuntimeError (csrc/core/npu/sys_ctrl/npu_sys_ctrl.cpp
# @ 0037c399).
INVALID_DEVICE_MESSAGE = ("ExchangeDevice:torch_npu/csrc/core/npu/sys_ctrl/npu_sys_ctrl.cpp NPU function error: "
                          "c10_npu::SetDevice(device), error code is 107001\n[ERROR] ERR00100 PTA call acl api failed")
REALLOCATED_MESSAGE = (
    "a parameter or gradient was re-allocated after the fused optimizer combined them into one buffer: the real "
    "torch_npu fused optimizer would now step on stale values (NpuFusedSGD: parameters must never be re-allocated)"
)


# --- torch_npu.utils.combine_tensors, emulated on host memory ---------------------------------------------------

def npu_combine_tensors(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """One flat buffer holding ``tensors``, each re-pointed into it with its value kept.

    Follows torch_npu/utils/combine_tensors.py @ 0d390eec ``npu_combine_tensors``: None for an empty list or
    zero elements, RuntimeError for a None entry, then per tensor for a dtype other than the first one's or a
    tensor not on the NPU (``tensor.device.type != "npu"``; see NPU_MEMORY). ``torch_npu.npu_change_data_ptr``
    (which moves a tensor's data pointer and leaves the tensor object alone) becomes ``Tensor.set_`` on the
    buffer's storage, or a ``.data`` assignment for tensors that require grad.
    """
    if not tensors:
        return None
    if any(t is None for t in tensors):
        raise RuntimeError("Tensors to combine must not have `None`.")
    dtype = tensors[0].dtype
    for t in tensors:
        if t.dtype != dtype:
            raise RuntimeError("Tensors to combine must have the same dtype.")
        if t.device.type not in ("npu", NPU_MEMORY):
            raise RuntimeError(f"Tensors to combine must be on NPU, got {t.device.type}.")
    total = sum(t.numel() for t in tensors)
    if total == 0:
        return None
    flat = torch.zeros(total, dtype=dtype, device=tensors[0].device)
    offset = 0
    with torch.no_grad():
        for t in tensors:
            if not (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)):
                raise RuntimeError("the stand-in combines dense tensors only")
            view = torch.as_strided(flat, t.size(), t.stride(), offset)
            view.copy_(t)
            if t.requires_grad:
                # A parameter keeps its autograd identity (DDP's hooks sit on its gradient accumulator), as
                # with npu_change_data_ptr; Tensor.set_ on a leaf would drop them, assigning .data does not.
                t.data = view
            else:
                t.set_(flat.untyped_storage(), offset, t.size(), t.stride())
            offset += t.numel()
    return flat


def is_combined_tensor_valid(combined: torch.Tensor | None, tensors: list[torch.Tensor | None]) -> bool:
    """True when every tensor still lives inside ``combined`` (torch_npu/utils/combine_tensors.py)."""
    if not tensors:
        return True
    if combined is None:
        return False
    start = combined.untyped_storage().data_ptr()
    end = start + combined.untyped_storage().nbytes()
    return all(t is not None and start <= t.data_ptr() < end for t in tensors)


# --- torch_npu.optim ----------------------------------------------------------------------------------------------

class NpuFusedOptimizerBase(torch.optim.Optimizer):
    """Follows torch_npu/optim/npu_fused_optim_base.py (NpuFusedOptimizerBase), without the NPU's private tensor
    formats: the real one casts a gradient to its parameter's format before combining (``npu_format_cast``), sizes
    the buffers by storage (``p.storage().size()``, padding included) and masks that padding out of the clip norm;
    here every tensor is plain, so sizes are ``numel()`` and nothing is padded. Tests of the combining, the clip
    and DDP's bucket views hold; a fault of padded formats (NC1HWC0 / FRACTAL_Z convolution weights) cannot show."""

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        self.is_fused_optimizer = True  # the marker torch_npu's GradScaler looks for (npu/amp/grad_scaler.py)
        self.is_params_grads_combined = False
        self.is_states_combined = False
        # Per dtype (fp32, fp16): the parameters combined, the two flat buffers and each group's element range.
        self.params_all_group: list[list[torch.Tensor]] = [[], []]
        self.params_all_group_combined: list[torch.Tensor | None] = [None, None]
        self.grads_all_group_combined: list[torch.Tensor | None] = [None, None]
        self._group_ranges: list[list[tuple[int, int]]] = [[], []]
        self._group_members: list[list[list[torch.Tensor]]] = [[], []]
        self.calls: Counter[str] = Counter()
        FUSED_OPTIMIZERS.append(self)

    def _maybe_init_combined_params_and_grads(self) -> None:
        if self.is_params_grads_combined:
            return
        members: list[list[torch.Tensor]] = [[], []]
        ranges: list[list[tuple[int, int]]] = [[], []]
        group_members: list[list[list[torch.Tensor]]] = [[], []]
        for group in self.param_groups:
            starts = [sum(p.numel() for p in m) for m in members]
            counts = [len(m) for m in members]
            for p in group["params"]:
                if p.grad is None:  # the real one skips it, and the combined buffer never includes it
                    continue
                if p.dtype == torch.float32:
                    members[0].append(p)
                elif p.dtype == torch.float16:
                    members[1].append(p)
                else:
                    raise TypeError("Fused optimizer's parameters must be either float32 or float16, but received "
                                    f"{p.dtype}")
            for i in range(2):
                ranges[i].append((starts[i], sum(p.numel() for p in members[i])))
                group_members[i].append(members[i][counts[i]:])
        self.params_all_group = members
        self._group_ranges = ranges
        self._group_members = group_members
        for i in range(2):
            self.params_all_group_combined[i] = npu_combine_tensors(members[i])
            self.grads_all_group_combined[i] = npu_combine_tensors([p.grad for p in members[i]])
        self.is_params_grads_combined = any(t is not None for t in self.params_all_group_combined)

    def _check_combined(self) -> None:
        """Stand-in only: raise where the real optimiser would silently use a stale buffer."""
        for i in range(2):
            params = self.params_all_group[i]
            if not (is_combined_tensor_valid(self.params_all_group_combined[i], params)
                    and is_combined_tensor_valid(self.grads_all_group_combined[i], [p.grad for p in params])):
                raise RuntimeError(REALLOCATED_MESSAGE)

    @torch.no_grad()
    def zero_grad(self, set_to_none: bool = False) -> None:
        self.calls["zero_grad"] += 1
        if set_to_none:
            raise ValueError(SET_TO_NONE_MESSAGE)
        if not self.is_params_grads_combined:
            self._maybe_init_combined_params_and_grads()
            if not self.is_params_grads_combined:
                super().zero_grad(set_to_none)
                return
        self._check_combined()
        for grads in self.grads_all_group_combined:
            if grads is not None:
                grads.zero_()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        self.calls["step"] += 1
        loss = closure() if closure is not None else None
        self._maybe_init_combined_params_and_grads()
        self._check_combined()
        if not self.is_states_combined:
            self._maybe_init_combined_states()
        for index in range(len(self.param_groups)):
            self._group_step(index)
        return loss

    def _maybe_init_combined_states(self) -> None:
        raise NotImplementedError

    def _group_step(self, group_index: int) -> None:
        raise NotImplementedError

    def get_combined_grads(self) -> list[torch.Tensor | None]:
        return self.grads_all_group_combined

    def clip_grad_norm_fused_(self, max_norm: float, norm_type: float = 2) -> torch.Tensor:
        """Total norm of the combined gradients, which are scaled by max_norm / (norm + 1e-6) when that is < 1.

        Follows ``clip_grad_norm_fused_`` / ``_clip_grad_norm_fused_`` of npu_fused_optim_base.py. The real one
        multiplies by a mask that zeroes the padding of NPU-private formats; host tensors have no padding.
        """
        self.calls["clip_grad_norm_fused_"] += 1
        if not self.is_params_grads_combined:
            with torch.no_grad():
                self._maybe_init_combined_params_and_grads()
        self._check_combined()
        grads = [g for g in self.grads_all_group_combined if g is not None]
        if not grads:
            return torch.tensor(0.0)
        max_norm, norm_type = float(max_norm), float(norm_type)
        if norm_type == math.inf:
            total = max(g.float().abs().max() for g in grads)
        else:
            total = torch.stack([g.float().abs().pow(norm_type).sum() for g in grads]).sum().pow(1 / norm_type)
        coef = max_norm / (total + 1e-6)
        if coef < 1:
            for g in grads:
                g.mul_(coef)
        return total


class NpuFusedSGD(NpuFusedOptimizerBase):
    """Follows torch_npu/optim/npu_fused_sgd.py: SGD with momentum on the combined buffers."""

    def __init__(self, params: Any, lr: float = required, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        if lr is not required and lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0.0 or not math.isclose(dampening, 0.0, abs_tol=1e-15)):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        self._momentum_buffer_already_in_state = False
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov))
        self._momentum_buffers: list[list[torch.Tensor | None]] = []

    def _maybe_init_combined_states(self) -> None:
        # Per group and dtype: the momentum buffers of its parameters, combined; the first step starts them
        # from the (weight-decayed) gradient unless a loaded state already holds them.
        self._momentum_buffers = []
        for gi, group in enumerate(self.param_groups):
            row: list[torch.Tensor | None] = []
            for i in range(2):
                params = self._group_members[i][gi] if self._group_members[i] else []
                if group["momentum"] == 0 or not params:
                    row.append(None)
                    continue
                buffers = []
                for p in params:
                    state = self.state[p]
                    if "momentum_buffer" in state:
                        self._momentum_buffer_already_in_state = True
                        buf = state["momentum_buffer"].detach().clone()
                    else:
                        self._momentum_buffer_already_in_state = False
                        d_p = p.grad if group["weight_decay"] == 0 else p.grad.add(p, alpha=group["weight_decay"])
                        buf = d_p.detach().clone()
                    state["momentum_buffer"] = buf
                    buffers.append(buf)
                row.append(npu_combine_tensors(buffers))
            self._momentum_buffers.append(row)
        self.is_states_combined = True

    def _group_step(self, group_index: int) -> None:
        group = self.param_groups[group_index]
        for i in range(2):
            if not self._group_ranges[i]:
                continue
            start, end = self._group_ranges[i][group_index]
            if start == end:
                continue
            param = self.params_all_group_combined[i][start:end]
            grad = self.grads_all_group_combined[i][start:end]
            if group["weight_decay"] != 0:
                grad = grad.add(param, alpha=group["weight_decay"])
            if group["momentum"] != 0:
                buf = self._momentum_buffers[group_index][i]
                if self._momentum_buffer_already_in_state:
                    buf.mul_(group["momentum"]).add_(grad, alpha=1 - group["dampening"])
                grad = grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
            param.add_(grad, alpha=-group["lr"])

    def step(self, closure: Any = None) -> Any:
        loss = super().step(closure)
        self._momentum_buffer_already_in_state = True
        return loss


# --- torch_npu.npu (torch.npu once torch_npu is imported) -------------------------------------------------------

def _parse_visible_devices() -> list[int]:
    """ASCEND_RT_VISIBLE_DEVICES as torch_npu/npu/__init__.py @ a145e511 (``_parse_visible_devices``) reads it:
    unset is every device; digits and commas only, and the ids before the first other character count."""
    var = os.getenv("ASCEND_RT_VISIBLE_DEVICES")
    if var is None:
        return list(range(64))
    end = next((i for i, c in enumerate(var) if not (c.isdigit() or c == ",")), len(var))
    ids: list[int] = []
    for elem in var[:end].split(","):
        if not elem:
            return ids
        ids.append(int(elem))
    return ids


class _NpuModule(types.ModuleType):
    """The device functions solo_npu calls; signatures of torch_npu/npu/utils.py, memory.py, random.py and
    npu_config.py. Host memory stands in for device memory, so the allocator counters stay at zero.

    ``count`` is the number of devices of the machine; ``device_count()`` is the number visible through
    ASCEND_RT_VISIBLE_DEVICES, counted as torch_npu/npu/__init__.py @ a145e511 does (``_device_count_ascend_hal``:
    the listed ids up to the first one the machine lacks, 0 for ids out of ascending order) and cached as
    ``count_cache`` says: "after_init" (that file: cached once the NPU is initialised, re-read before) or "lru"
    (torch_npu/npu/utils.py @ fe31f4d8, an older version: ``@lru_cache`` from the first call on). The NPU is
    initialised by the functions that call ``_lazy_init`` in the real one (synchronize, current_device,
    get_device_name, is_support_inf_nan, is_bf16_supported).
    """

    def __init__(self, count: int, bf16: bool = True, support_inf_nan: bool = True,
                 count_cache: str = "after_init") -> None:
        super().__init__("torch_npu.npu")
        if count_cache not in ("after_init", "lru"):
            raise ValueError(f"count_cache must be 'after_init' or 'lru', got {count_cache!r}")
        self._count = count
        self._bf16 = bf16
        self._support_inf_nan = support_inf_nan
        self._count_cache = count_cache
        self._cached_count: int | None = None
        self._initialized = False
        self._current = 0
        self.calls: dict[str, Any] = {}
        self._rng = [torch.Generator().manual_seed(i) for i in range(count)]
        # torch.autocast("npu") state (torch_npu/npu/autocast_utils.py keeps it in torch_npu._C); fp16 by default,
        # PyTorch's default autocast dtype for the PrivateUse1 backend.
        self._autocast_enabled = False
        self._autocast_dtype = torch.float16
        # torch_npu.npu.utils: the module torch_npu's GradScaler asks is_support_inf_nan() of.
        self.utils = types.SimpleNamespace(is_support_inf_nan=self.is_support_inf_nan,
                                           is_bf16_supported=self.is_bf16_supported)
        self.amp = types.SimpleNamespace(GradScaler=GradScaler)

    def _lazy_init(self) -> None:
        self._initialized = True

    def is_initialized(self) -> bool:
        return self._initialized

    def _index(self, device: Any, optional: bool = True) -> int:
        # torch_npu/npu/utils.py _get_device_index: ints pass, a torch.device must be of type npu.
        if isinstance(device, int):
            return device
        if isinstance(device, str):
            device = torch.device(device)
        if isinstance(device, torch.device):
            if device.type != "npu":
                raise ValueError(f"Expected a npu device, but got: {device}")
            return self._current if device.index is None else device.index
        if device is None and optional:
            return self._current
        raise ValueError(f"Expected a npu device with a specified index or an integer, but got: {device}")

    def is_available(self) -> bool:
        return self.device_count() > 0

    def device_count(self) -> int:
        if self._cached_count is not None:
            return self._cached_count
        visible = _parse_visible_devices()
        count = len(visible)
        for i, dev in enumerate(visible):
            if i > 0 and dev <= visible[i - 1]:
                count = 0
                break
            if dev >= self._count:
                count = i
                break
        if self._count_cache == "lru" or self._initialized:
            self._cached_count = count
        return count

    def set_device(self, device: Any) -> None:
        # npu/utils.py set_device: a negative index is ignored; another one goes to torch_npu._C._npu_setDevice,
        # which initialises torch_npu first (csrc/npu/Module.cpp THNPModule_setDevice_wrap: npu_lazy_init(), then
        # ExchangeDevice), and an index beyond the devices raises in ACL.
        index = self._index(device)
        if index < 0:
            return
        self._lazy_init()
        if index >= self.device_count():
            raise RuntimeError(INVALID_DEVICE_MESSAGE)
        self._current = index
        self.calls["set_device"] = device

    def current_device(self) -> int:
        self._lazy_init()
        return self._current

    def synchronize(self, device: Any = None) -> None:
        self._lazy_init()
        self._index(device)

    def get_device_name(self, device_name: Any = None) -> str:
        index = self._index(device_name)
        if index < 0 or index >= self.device_count():
            raise AssertionError("Invalid device id")
        self._lazy_init()
        return "Ascend910B (stand-in)"

    def memory_allocated(self, device: Any = None) -> int:
        self._index(device)
        return 0

    def max_memory_allocated(self, device: Any = None) -> int:
        self._index(device)
        return 0

    def reset_peak_memory_stats(self, device: Any = None) -> None:
        self._index(device)

    def get_rng_state_all(self) -> list[torch.Tensor]:
        return [g.get_state() for g in self._rng[:self.device_count()]]

    def set_rng_state(self, new_state: torch.Tensor, device: Any = "npu") -> None:
        # torch_npu/npu/random.py (documented in Ascend/op-plugin docs/context/Random-Number-Generator.md as
        # torch.cuda's): the generator of that device, ``default_generators[idx]``: an index beyond the visible
        # devices is an IndexError.
        index = self.current_device() if device in ("npu", None) else self._index(device)
        if not 0 <= index < self.device_count():
            raise IndexError("tuple index out of range")
        self._rng[index].set_state(new_state.clone())

    def set_rng_state_all(self, new_states: Any) -> None:
        # torch_npu/npu/random.py: set_rng_state(state, i) for each state, so more states than devices fail.
        for i, state in enumerate(new_states):
            self.set_rng_state(state, i)

    def manual_seed_all(self, seed: int) -> None:
        for g in self._rng:
            g.manual_seed(int(seed))

    def _is_in_bad_fork(self) -> bool:
        return False

    def set_compile_mode(self, jit_compile: bool = False) -> None:
        # npu_config.py: sets the ACL option jitCompile to "enable" or "disable".
        self.calls["jit_compile"] = jit_compile
        self.calls["jitCompile"] = "enable" if jit_compile else "disable"

    # torch_npu/npu/autocast_utils.py @ 287c65d6: what torch.autocast asks of the PrivateUse1 backend module
    # (torch/amp/autocast_mode.py: torch 2.1 calls all five, torch >= 2.4 get_amp_supported_dtype only).
    def get_amp_supported_dtype(self) -> list[torch.dtype]:
        if self.is_bf16_supported():
            return [torch.float16, torch.bfloat16, torch.float32]
        return [torch.float16, torch.float32]

    def is_autocast_enabled(self) -> bool:
        return self._autocast_enabled

    def set_autocast_enabled(self, enable: bool) -> None:
        self._autocast_enabled = bool(enable)

    def get_autocast_dtype(self) -> torch.dtype:
        return self._autocast_dtype

    def set_autocast_dtype(self, dtype: torch.dtype) -> None:
        self._autocast_dtype = dtype

    # torch_npu/npu/utils.py @ fe31f4d8 (both initialise the NPU first).
    def is_bf16_supported(self) -> bool:
        self._lazy_init()
        return self._bf16

    def is_support_inf_nan(self) -> bool:
        self._lazy_init()
        return self._support_inf_nan

    def clear_npu_overflow_flag(self) -> None:
        # Saturation-mode chips keep a global float status that the real one clears (npu_clear_float_status);
        # host arithmetic has no such flag: the call is counted.
        self.calls["clear_npu_overflow_flag"] = self.calls.get("clear_npu_overflow_flag", 0) + 1


# --- torch_npu.npu.amp.GradScaler ----------------------------------------------------------------------------------

def _is_npu_tensor(t: torch.Tensor) -> bool:
    # The real one asserts ``tensor.is_npu``; the installed stand-in's NPU tensors live in host memory (NPU_MEMORY).
    return t.device.type in ("npu", NPU_MEMORY)


class _NpuMultiDeviceReplicator:
    """Lazily serves copies of a tensor per device (grad_scaler.py ``_NpuMultiDeviceReplicator``, which subclasses
    torch's ``_MultiDeviceReplicator``: its ``get`` is copied here, torch 2.1's refuses a tensor not on CUDA)."""

    def __init__(self, master_tensor: torch.Tensor) -> None:
        if not _is_npu_tensor(master_tensor):
            raise ValueError("Device type of master_tensor should be npu.")
        self.master = master_tensor
        self._per_device_tensors: dict[torch.device, torch.Tensor] = {}

    def get(self, device: torch.device) -> torch.Tensor:
        tensor = self._per_device_tensors.get(device)
        if tensor is None:
            tensor = self.master.to(device=device, non_blocking=True, copy=True)
            self._per_device_tensors[device] = tensor
        return tensor


def _refresh_per_optimizer_state() -> dict[str, Any]:
    return {"stage": OptState.READY, "found_inf_per_device": {}}


def _non_finite_check_and_unscale_(grads: list[torch.Tensor], found_inf: torch.Tensor, inv_scale: torch.Tensor) -> None:
    """The NPU kernel of ``torch._amp_foreach_non_finite_check_and_unscale_`` (Ascend/op-plugin
    op_plugin/ops/aclops/AmpForeachNonFiniteCheckAndUnscaleKernelNpu.cpp @ 0a873ceb), in plain ops (torch 2.1 has
    no CPU kernel). With inf/NaN support (``c10_npu::IsSupportInfNan()``) each gradient's float sum is checked for
    a non-finite value; without (saturation mode, Ascend 910) the chip's float status is read and cleared
    (``npu_get_float_status``, ``npu_clear_float_status``). An overflow adds 1 to ``found_inf`` and leaves every
    gradient scaled; otherwise all of them are unscaled.

    Host arithmetic gives inf/NaN where a chip in saturation mode gives finite values and raises its float status,
    so in that mode the status here is raised by a non-finite gradient, and the gradient is saturated as the chip's
    float16 arithmetic leaves it (inf to +-65504, float16's largest; NaN to 0): the caller sees finite, scaled
    gradients, as on the chip.
    """
    overflow = any(not math.isfinite(float(g.float().sum())) for g in grads)
    if overflow and not _torch_npu().npu.utils.is_support_inf_nan():
        for g in grads:
            torch.nan_to_num_(g, nan=0.0, posinf=65504.0, neginf=-65504.0)
    if overflow:
        found_inf.add_(1)
        return
    for g in grads:
        g.mul_(inv_scale.to(g.dtype))


class GradScaler(torch.cuda.amp.GradScaler):
    """Follows torch_npu/npu/amp/grad_scaler.py @ 4ee8ead91253a641b91023d366a86fc75b71a604 (``GradScaler``).

    Its contract: a subclass of ``torch.cuda.amp.GradScaler`` (itself a ``torch.amp.GradScaler`` on torch >= 2.3)
    whose constructor is ``GradScaler(init_scale, growth_factor, backoff_factor, growth_interval, dynamic, enabled)``
    with no device argument, and which disables itself (with a warning) where no NPU is available. With
    ``dynamic`` it checks the gradients for inf/NaN and skips the step; without, it only unscales them. Where
    ``torch_npu.npu.utils.is_support_inf_nan()`` is False (saturation mode, Ascend 910) it clears the NPU overflow
    flag at the first ``scale()`` of a step and, in a process group, all-reduces an overflow count after
    unscaling (``_sync_dist_overflow_count``), so that every rank skips the step one of them overflowed on.
    ``state_dict`` adds ``"dynamic"`` (enabled scalers) and ``load_state_dict`` reads ``state_dict["dynamic"]``:
    a state saved by PyTorch's scalers raises KeyError. A fused optimiser's combined gradient buffers are
    unscaled directly.

    Where it must differ, because NPU tensors are host tensors here: the scale, the growth tracker and the
    found-inf flag are made on the device of the outputs without ``pin_memory()`` (pinning needs an accelerator
    runtime); the inf/NaN check runs in plain ops (torch 2.1 has no CPU kernel of
    ``_amp_foreach_non_finite_check_and_unscale_``; in saturation mode it saturates the gradients it finds an
    overflow in, see :func:`_non_finite_check_and_unscale_`); the overflow flag is a counter
    (``calls["clear_npu_overflow_flag"]``);
    ``update(new_scale)`` takes a tensor on the NPU device instead of a ``torch.npu.FloatTensor``.
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, dynamic: bool = True, enabled: bool = True) -> None:
        # torch_npu/npu/amp/common.py: amp_definitely_not_available() is ``not torch_npu.npu.is_available()``.
        if enabled and not _torch_npu().npu.is_available():
            warnings.warn("torch_npu.amp.GradScaler is enabled, but NPU is not available.  Disabling.", stacklevel=2)
            self._enabled = False
        else:
            self._enabled = enabled
        if self._enabled:
            if growth_factor <= 1.0:
                raise ValueError("The growth factor must be > 1.0.")
            if backoff_factor >= 1.0:
                raise ValueError("The backoff factor must be < 1.0.")
            self._init_scale = init_scale
            self._scale: torch.Tensor | None = None
            self._growth_factor = growth_factor
            self._backoff_factor = backoff_factor
            self._growth_interval = growth_interval
            self._dynamic = dynamic
            self._init_growth_tracker = 0
            self._growth_tracker: torch.Tensor | None = None
            self._per_optimizer_states = defaultdict(_refresh_per_optimizer_state)
            self._has_overflow = False
            self._clear_overflow_flag = False
            self._dist_initialized = False
            self._dist_overflow_count: torch.Tensor | None = None

    def _lazy_init_scale_growth_tracker(self, dev: torch.device) -> None:
        if self._growth_tracker is not None:
            raise RuntimeError("_growth_tracker initialized before _scale")
        self._scale = torch.full((), self._init_scale, dtype=torch.float32, device=dev)
        self._growth_tracker = torch.full((), self._init_growth_tracker, dtype=torch.int32, device=dev)

    def _lazy_init_dist_flag_and_dist_overflow_count(self) -> None:
        if self._dist_overflow_count is not None:
            raise RuntimeError("_dist_overflow_count initialized before _scale")
        self._dist_initialized = dist.is_available() and dist.is_initialized()
        self._dist_overflow_count = torch.zeros(1, device=NPU_MEMORY)  # the real one: torch.Tensor([0.]).to('npu')

    def scale(self, outputs: Any) -> Any:
        if not self._enabled:
            return outputs
        if self._dist_overflow_count is None:
            self._lazy_init_dist_flag_and_dist_overflow_count()
        if self._dynamic and not self._clear_overflow_flag:
            if not _torch_npu().npu.utils.is_support_inf_nan():
                _torch_npu().npu.clear_npu_overflow_flag()
            self._clear_overflow_flag = True
        if isinstance(outputs, torch.Tensor):
            if not _is_npu_tensor(outputs):
                raise ValueError("Device type of outputs should be npu.")
            if self._scale is None:
                self._lazy_init_scale_growth_tracker(outputs.device)
            return outputs * self._scale.to(device=outputs.device, non_blocking=True)
        stash: list[_NpuMultiDeviceReplicator] = []

        def apply_scale(val: Any) -> Any:
            if isinstance(val, torch.Tensor):
                if not _is_npu_tensor(val):
                    raise ValueError("Device type of val should be npu.")
                if not stash:
                    if self._scale is None:
                        self._lazy_init_scale_growth_tracker(val.device)
                    stash.append(_NpuMultiDeviceReplicator(self._scale))
                return val * stash[0].get(val.device)
            if isinstance(val, (list, tuple)):
                return type(val)(map(apply_scale, val))
            raise TypeError("outputs must be a Tensor or an iterable of Tensors")

        return apply_scale(outputs)

    def _unscale_grads_(self, optimizer: Any, inv_scale: torch.Tensor, found_inf: torch.Tensor,
                        allow_fp16: bool) -> dict[torch.device, torch.Tensor]:
        per_device_found_inf = _NpuMultiDeviceReplicator(found_inf)
        per_device_inv_scale = _NpuMultiDeviceReplicator(inv_scale)
        with torch.no_grad():
            if hasattr(optimizer, "is_fused_optimizer"):
                if not optimizer.is_params_grads_combined:
                    optimizer._maybe_init_combined_params_and_grads()
                device = found_inf.device
                for grads in optimizer.grads_all_group_combined:
                    if grads is None:
                        continue
                    if self._dynamic:
                        _non_finite_check_and_unscale_([grads], per_device_found_inf.get(device),
                                                       per_device_inv_scale.get(device))
                        if per_device_found_inf.get(device).item() > 0:
                            self._has_overflow = True
                    else:
                        grads.mul_(per_device_inv_scale.get(device))
            else:
                by_device: dict[torch.device, dict[torch.dtype, list[torch.Tensor]]] = defaultdict(
                    lambda: defaultdict(list))
                for group in optimizer.param_groups:
                    for param in group["params"]:
                        if param.grad is None:
                            continue
                        if not allow_fp16 and param.grad.dtype == torch.float16:
                            raise TypeError("Attempting to unscale FP16 gradients.")
                        by_device[param.grad.device][param.grad.dtype].append(param.grad)
                for device, per_dtype in by_device.items():
                    for grads in per_dtype.values():
                        if self._dynamic:
                            _non_finite_check_and_unscale_(grads, per_device_found_inf.get(device),
                                                           per_device_inv_scale.get(device))
                            if per_device_found_inf.get(device).item() > 0:
                                self._has_overflow = True
                        else:
                            for grad in grads:
                                grad.mul_(per_device_inv_scale.get(device))
            self._sync_dist_overflow_count()
            if self._has_overflow:
                per_device_found_inf.get(found_inf.device).add_(1)
        return per_device_found_inf._per_device_tensors

    def unscale_(self, optimizer: Any) -> None:
        if not self._enabled:
            return
        self._check_scale_growth_tracker("unscale_")
        optimizer_state = self._per_optimizer_states[id(optimizer)]
        if optimizer_state["stage"] is OptState.UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
        if optimizer_state["stage"] is OptState.STEPPED:
            raise RuntimeError("unscale_() is being called after step().")
        inv_scale = self._scale.float().reciprocal()
        found_inf = torch.full((), 0.0, dtype=torch.float32, device=self._scale.device)
        optimizer_state["found_inf_per_device"] = self._unscale_grads_(optimizer, inv_scale, found_inf, False)
        optimizer_state["stage"] = OptState.UNSCALED

    def _maybe_opt_step(self, optimizer: Any, optimizer_state: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        if not sum(v.item() for v in optimizer_state["found_inf_per_device"].values()) and not self._has_overflow:
            return optimizer.step(*args, **kwargs)
        print("Gradient overflow. Skipping step")
        return None

    def step(self, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError("Closure use is not currently supported if GradScaler is enabled.")
        self._check_scale_growth_tracker("step")
        optimizer_state = self._per_optimizer_states[id(optimizer)]
        if optimizer_state["stage"] is OptState.STEPPED:
            raise RuntimeError("step() has already been called since the last update().")
        if getattr(optimizer, "_step_supports_amp_scaling", False):
            retval = optimizer.step(*args, **dict(kwargs, grad_scaler=self))
            optimizer_state["stage"] = OptState.STEPPED
            return retval
        if optimizer_state["stage"] is OptState.READY:
            self.unscale_(optimizer)
        if len(optimizer_state["found_inf_per_device"]) <= 0:
            raise RuntimeError("No inf checks were recorded for this optimizer.")
        if self._dynamic:
            retval = self._maybe_opt_step(optimizer, optimizer_state, *args, **kwargs)
        else:
            retval = optimizer.step(*args, **kwargs)
        optimizer_state["stage"] = OptState.STEPPED
        return retval

    def update(self, new_scale: float | torch.Tensor | None = None) -> None:
        if not self._enabled:
            return
        _scale, _ = self._check_scale_growth_tracker("update")
        if new_scale is not None:
            if isinstance(new_scale, float):
                self._scale = torch.full((), new_scale, dtype=torch.float32, device=_scale.device)
            else:
                reason = "new_scale should be a float or a 1-element torch.npu.FloatTensor with requires_grad=False."
                if not isinstance(new_scale, torch.Tensor) or not _is_npu_tensor(new_scale):
                    raise TypeError(reason)
                if new_scale.numel() != 1 or new_scale.requires_grad:
                    raise ValueError(reason)
                self._scale = new_scale
        elif self._dynamic:
            self._npu_update_scale()
        self._per_optimizer_states = defaultdict(_refresh_per_optimizer_state)
        self._has_overflow = False
        self._clear_overflow_flag = False

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self._enabled:
            state["dynamic"] = self._dynamic
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._enabled:
            return
        if len(state_dict) == 0:
            raise RuntimeError("The source state dict is empty, possibly because it was saved "
                               "from a disabled instance of GradScaler.")
        super().load_state_dict(state_dict)
        self._dynamic = state_dict["dynamic"]

    def _sync_dist_overflow_count(self) -> None:
        if _torch_npu().npu.utils.is_support_inf_nan():
            return
        if self._dynamic and self._dist_initialized:
            if self._has_overflow:
                self._dist_overflow_count.add_(1)
                dist.all_reduce(self._dist_overflow_count)
                self._dist_overflow_count.zero_()
            else:
                dist.all_reduce(self._dist_overflow_count)
                if self._dist_overflow_count.item() != 0:
                    self._has_overflow = True
                self._dist_overflow_count.zero_()

    def _npu_update_scale(self) -> None:
        if self._has_overflow:
            self._scale.mul_(self._backoff_factor)
            self._growth_tracker.zero_()
            print(f"Loss scaler reducing loss scale to {self._scale.item()}")
        else:
            self._growth_tracker.add_(1)
            if self._growth_tracker.item() == self._growth_interval:
                new_scale = self._scale * self._growth_factor
                if not torch.isinf(new_scale):
                    self._scale = new_scale
                self._growth_tracker.zero_()
                print(f"Loss scaler increasing loss scale to {self._scale.item()}")


def _torch_npu() -> Any:
    """The torch_npu module the scaler runs under (the real one imports torch_npu; here the installed stand-in)."""
    return sys.modules["torch_npu"]


def build(device_count: int = 2, bf16: bool = True, support_inf_nan: bool = True,
          count_cache: str = "after_init") -> types.ModuleType:
    """A fresh ``torch_npu`` module object with ``npu`` (``npu.amp.GradScaler``, ``npu.utils``), ``optim`` and
    ``utils``. ``device_count``: the machine's devices (:class:`_NpuModule`); ``bf16``: what
    ``npu.is_bf16_supported()`` answers; ``support_inf_nan``: what ``npu.utils.is_support_inf_nan()`` answers
    (False: a chip in saturation mode, Ascend 910); ``count_cache``: how ``device_count`` caches."""
    module = types.ModuleType("torch_npu")
    module.__file__ = __file__
    module.npu = _NpuModule(device_count, bf16, support_inf_nan, count_cache)
    module.optim = types.SimpleNamespace(NpuFusedOptimizerBase=NpuFusedOptimizerBase, NpuFusedSGD=NpuFusedSGD)
    module.utils = types.SimpleNamespace(npu_combine_tensors=npu_combine_tensors,
                                         is_combined_tensor_valid=is_combined_tensor_valid)
    return module


def install(monkeypatch: Any = None, device_count: int = 2, npu_memory: str = "cpu", **options: Any
            ) -> types.ModuleType:
    """Make ``import torch_npu`` and ``torch.npu`` answer with the stand-in, as importing the real one does.

    The real torch_npu (torch_npu/__init__.py @ 0036adaa) names PyTorch's PrivateUse1 backend "npu" and registers
    its ``npu`` module as ``torch.npu``. ``npu_memory``: the device type of the tensors taken for NPU tensors
    (NPU_MEMORY; the host's by default, where the tests keep them); ``options``: those of :func:`build`. With
    ``monkeypatch`` everything is undone after the test; without it (a spawned worker) it stays for the life of
    the process.
    """
    if torch._C._get_privateuse1_backend_name() != "npu":
        torch.utils.rename_privateuse1_backend("npu")
    module = build(device_count, **options)
    if monkeypatch is not None:
        monkeypatch.setitem(sys.modules, "torch_npu", module)
        monkeypatch.setattr(torch, "npu", module.npu, raising=False)
        monkeypatch.setattr(sys.modules[__name__], "NPU_MEMORY", npu_memory)
    else:
        global NPU_MEMORY
        NPU_MEMORY = npu_memory
        sys.modules["torch_npu"] = module
        torch.npu = module.npu
        _register_accelerator_hooks()
    return module


_HOOKS: list[Any] = []


def _register_accelerator_hooks() -> None:
    """Make "npu" the process's accelerator, as torch_npu's C++ PrivateUse1 hooks do (collectives such as
    ``dist.barrier`` ask for it). Process-wide and irreversible, hence only for a worker of its own.

    The real one registers its hooks when it is imported (torch_npu/csrc/core/npu/impl/NPUGuardImpl.cpp @ 093e9ad9,
    ``REGISTER_PRIVATEUSE1_BACKEND(npu)``: ``at::RegisterPrivateUse1HooksInterface(c10_npu::get_npu_hooks())``).
    Without registered hooks a renamed PrivateUse1 backend makes ``torch._C._get_accelerator()`` raise "Please
    register PrivateUse1HooksInterface"; ``dist.barrier`` calls it (torch 2.7.1: distributed_c10d.py). A torch with
    Python-side registration (``torch._C._acc``, 2.13) gets Python hooks; one without it (2.7.1) gets the answer
    registered hooks give, ``torch._C._get_accelerator() -> device(type='npu')``; torch 2.1 has neither.
    """
    if not _HOOKS and not hasattr(torch._C, "_acc") and hasattr(torch._C, "_get_accelerator"):
        npu = torch.device("npu")
        _HOOKS.append(torch._C._get_accelerator)
        torch._C._get_accelerator = lambda check=None: npu
    if not _HOOKS and hasattr(torch._C, "_acc"):
        class _HostNpuHooks(torch._C._acc.PrivateUse1Hooks):
            def is_available(self) -> bool:
                return True

            def has_primary_context(self, dev_id: int) -> bool:
                return True

            def is_built(self) -> bool:
                return True

        _HOOKS.append(_HostNpuHooks())
        torch._C._acc.register_python_privateuseone_hook(_HOOKS[0])
