"""Inference backends with one call signature: ``runner(images [B,3,H,W] float32) -> {name: array [B, ...]}``.

pytorch (eager export mode), torchscript, onnxruntime (CANN / CUDA / CPU execution providers) and
torch_aie run in process. The om backend runs ais_bench as a subprocess over a folder of ``.bin``
files (see :mod:`solo_npu.deploy.om`); it is not a per-batch runner. :mod:`solo_npu.deploy.backends`
wraps these into backend objects.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import re
import sys
import warnings
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from solo_npu.config.deploy_schema import unknown_provider_option
from solo_npu.deploy.context import DeployError
from solo_npu.runtime import DeviceInfo, synchronize

logger = logging.getLogger(__name__)


def first_line(exc: BaseException) -> str:
    """``<type>: <first line of the message>`` of an exception (torch's and onnxruntime's run to many lines)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0].strip() if lines else ''}".rstrip(": ")


# Execution provider per device kind; CPU is always appended as the fallback.
ORT_PROVIDERS = {"npu": "CANNExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
ORT_PACKAGES = {"npu": "onnxruntime-cann", "cuda": "onnxruntime-gpu"}
# The CANN provider saves the offline model GE builds for a session as an .om file in the process's working
# directory, outside the run dir, unless its dump_om_model option is false (microsoft/onnxruntime PR #20075 added
# the option, "which defaults to True"; core/providers/cann/cann_utils.cc MatchFile looks the file up in
# fs::current_path()). Releases without the option refuse it: 'Unknown provider option: "dump_om_model".'
# (core/framework/provider_options_utils.h, ProviderOptionsParser::Parse), and always save the .om.
CANN_DUMP_OM = "dump_om_model"


# onnxruntime's GraphOptimizationLevel members (onnxruntime/core/session/onnxruntime_c_api.h: ORT_DISABLE_ALL,
# ORT_ENABLE_BASIC, ORT_ENABLE_EXTENDED, ORT_ENABLE_ALL; newer releases add ORT_ENABLE_LAYOUT).
ORT_LEVELS = {"disable_all": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL"}


def ort_optimization_level(value: Any) -> Any:
    """``deploy.onnxruntime.graph_optimization_level`` as onnxruntime's enum; an unknown value, or one this
    onnxruntime does not have, is a one-line error instead of a silent ENABLE_ALL."""
    import onnxruntime as ort

    key = str(value).strip().lower()
    member = getattr(ort.GraphOptimizationLevel, ORT_LEVELS.get(key, ""), None)
    if member is None:
        known = [k for k, v in ORT_LEVELS.items() if hasattr(ort.GraphOptimizationLevel, v)]
        raise DeployError(f"deploy.onnxruntime.graph_optimization_level={value}: choose one of {', '.join(known)}")
    return member


class Runner:
    """Base runner: holds output names and the device; subclasses implement :meth:`run`."""

    backend = "base"

    def __init__(self, output_names: Sequence[str], device: DeviceInfo) -> None:
        self.output_names = tuple(output_names)
        self.device = device

    @property
    def label(self) -> str:
        """What a failure names: the backend and where it runs (subclasses add their file)."""
        return f"{self.backend} on {self.device.device}"

    @property
    def least_warmup(self) -> int:
        """The untimed runs this runner needs before its timings are steady (0: whatever the user asks)."""
        return 0

    #: why it needs them (said where a benchmark runs more warm-up runs than asked)
    warmup_reason = ""

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """``run``; a failure of the model itself (a kernel's error, a device out of memory, a provider failing
        inside ``session.run``) is one :class:`DeployError` line, which infer and benchmark record as this backend's
        failure while the other backends go on."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise DeployError(f"{self.backend}: input must be [B, 3, H, W], got {list(images.shape)}")
        try:
            return self.run(np.ascontiguousarray(images, dtype=np.float32))
        except DeployError:
            raise
        except Exception as exc:  # torch and onnxruntime raise many types (RuntimeError, InvalidArgument, EPFail, ...)
            raise DeployError(f"{self.label}: a batch of {list(images.shape)} failed: {first_line(exc)}") from exc

    def _torch_outputs(self, outputs: Any) -> dict[str, np.ndarray]:
        if isinstance(outputs, Mapping):
            outputs = [outputs[n] for n in self.output_names]
        synchronize(self.device)
        return {n: t.detach().cpu().numpy() for n, t in zip(self.output_names, outputs)}


class PyTorchRunner(Runner):
    """Eager PyTorch on the run's device (the adapter's export module, i.e. the export mode)."""

    backend = "pytorch"

    def __init__(self, module: nn.Module, output_names: Sequence[str], device: DeviceInfo,
                 compiled: bool = False) -> None:
        """``compiled``: ``module`` runs under torch.compile, which compiles at its first call."""
        super().__init__(output_names, device)
        self.module = module.eval()
        self.compiled = compiled

    @property
    def least_warmup(self) -> int:
        return 1 if self.compiled else 0

    @property
    def warmup_reason(self) -> str:
        return "torch.compile compiles at the first run" if self.compiled else ""

    @torch.no_grad()
    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return self._torch_outputs(self.module(torch.from_numpy(images).to(self.device.device)))


class TorchScriptRunner(PyTorchRunner):
    backend = "torchscript"

    def __init__(self, path: str | Path, output_names: Sequence[str], device: DeviceInfo,
                 saved_with: str | None = None) -> None:
        """``saved_with``: the torch version that exported the file (the export manifest's ``exported_with``)."""
        if not Path(path).is_file():
            raise DeployError(f"TorchScript file not found: {path} (run stages=[export])")
        self.path = Path(path)
        module = load_torchscript(path, device.device, saved_with)
        super().__init__(module, output_names, device)

    @property
    def label(self) -> str:
        return f"torchscript {self.path.name} on {self.device.device}"

    @property
    def least_warmup(self) -> int:
        """TorchScript's profiling executor runs the first ``torch._C._jit_get_num_profiled_runs()`` calls (1 by
        default) on the profiling graph and builds and runs the optimised plan on the next one (pytorch
        torch/csrc/jit/runtime/profiling_graph_executor_impl.cpp: ``kDefaultNumProfiledRuns = 1``,
        ``getOptimizedPlanFor``), which on CUDA also compiles its fused kernels: a timing taken on any of them is
        the executor's, not the model's (711 ms against a 17 ms median for SOLOv2 R50 on an H200)."""
        if not torch._C._get_graph_executor_optimize():
            return 0
        return int(torch._C._jit_get_num_profiled_runs()) + 1

    warmup_reason = "the TorchScript executor profiles and optimises the graph on its first runs"


def load_torchscript(path: str | Path, map_location: Any, saved_with: str | None = None,
                     again: str = "export again with this torch: stages=[export]") -> Any:
    """``torch.jit.load``; a file this torch cannot load is one :class:`DeployError` line naming the file, the
    torch that saved it (when the export manifest records it) and this torch.

    torch.jit.load compiles the archive's TorchScript code with this torch's operator set, so a file saved by a newer
    torch that calls a newer operator fails here ("Unknown builtin op: aten::rms_norm", torch 2.13's file on torch
    2.1); a truncated or corrupt file fails in its zip reader ("PytorchStreamReader failed reading zip archive").
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what torch_aie and ATC users ship
            return torch.jit.load(str(path), map_location=map_location)
    except Exception as exc:  # RuntimeError from the zip reader or the TorchScript compiler, ValueError, ...
        saver = (f"saved by torch {saved_with}" if saved_with else
                 "the torch that saved it is not recorded (an export manifest written before versions were)")
        raise DeployError(f"this torch cannot load {path} ({saver}; this is torch {torch.__version__}): "
                          f"{first_line(exc)} ({again})") from exc


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime with the provider for the device, provider options and session options from config."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, output_names: Sequence[str], device: DeviceInfo,
                 options: Mapping[str, Any] | None = None, requested: str = "auto",
                 device_id: int | None = None) -> None:
        super().__init__(output_names, device)
        import onnxruntime as ort

        options = dict(options or {})
        if not Path(path).is_file():
            raise DeployError(f"ONNX file not found: {path} (run stages=[export])")
        self.path = Path(path)
        sess_opts = ort.SessionOptions()
        intra = int(options.get("intra_op_num_threads") or 0)
        inter = int(options.get("inter_op_num_threads") or 0)
        if intra:
            sess_opts.intra_op_num_threads = intra
        if inter:
            sess_opts.inter_op_num_threads = inter
            # onnxruntime uses the inter-op thread count only in parallel execution mode; its default mode is
            # sequential ("If sequential execution is enabled this value is ignored": onnxruntime_c_api.h,
            # OrtApi::SetInterOpNumThreads, microsoft/onnxruntime include/onnxruntime/core/session at 44885662), so a
            # count set here asks for the parallel mode too
            sess_opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        level = str(options.get("graph_optimization_level", "all")).strip().lower()
        sess_opts.graph_optimization_level = ort_optimization_level(level)
        spinning = options.get("allow_spinning")
        if spinning is not None:
            # onnxruntime's thread pools busy-wait after each run unless told not to (onnxruntime
            # include/onnxruntime/core/session/onnxruntime_session_options_config_keys.h,
            # kOrtSessionOptionsConfigAllowIntraOpSpinning / ...InterOpSpinning, default "1"): the spinning
            # threads take the cores from whatever the process does next, the host post-processing here
            for pool in ("intra_op", "inter_op"):
                sess_opts.add_session_config_entry(f"session.{pool}.allow_spinning", "1" if spinning else "0")
        provider_options = options.get("provider_options") or {}
        self.providers = ort_providers(device, provider_options, requested, device_id)
        given = {ORT_PROVIDERS[kind]: set(provider_options.get(kind) or {}) for kind in ("npu", "cuda")}
        try:
            self.session, self.providers = create_session(ort, path, sess_opts, self.providers,
                                                          may_drop=CANN_DUMP_OM not in given[ORT_PROVIDERS["npu"]],
                                                          given=given)
        except DeployError:
            raise
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            advice = " (re-export with stages=[export])" if model_file_error(exc) else ""
            raise DeployError(f"onnxruntime cannot create a session for {path} on "
                              f"{[provider_name(p) for p in self.providers]}: "
                              f"{(str(exc) or type(exc).__name__).splitlines()[0]}{advice}") from exc
        self.provider = provider_in_use(self.session, self.providers)
        self.device_name = ort_device_name(self.provider, self.providers)
        if self.provider != ORT_PROVIDERS["cpu"] and hasattr(self.session, "disable_fallback"):
            # onnxruntime's Python Session.run catches a provider failing inside a run (EPFail), prints "EP Error",
            # rebuilds the session on its fallback providers (the CPU) with set_providers and runs again there,
            # whenever _enable_fallback is set, which it is after a session is created (microsoft/onnxruntime
            # onnxruntime/python/onnxruntime_inference_collection.py at dbbfd9e7, Session.run and
            # InferenceSession.__init__; onnxruntime 1.32: Session.__init__ line 254, Session.run lines 404-415).
            # The rows would then say npu / fp16 for a CPU run: with fallback disabled the failure is raised, and
            # Runner.__call__ makes it this backend's one-line error.
            self.session.disable_fallback()
        parallel = self.session.get_session_options().execution_mode == ort.ExecutionMode.ORT_PARALLEL
        if inter and not parallel:
            # the C++ session makes a CUDA provider's session sequential ("Parallel execution mode does not support
            # the CUDA Execution Provider. So making the execution mode sequential": onnxruntime/core/session/
            # inference_session.cc, InferenceSession::RegisterExecutionProvider)
            logger.warning("deploy.onnxruntime.inter_op_num_threads=%d is ignored: onnxruntime runs this session on "
                           "%s in sequential execution mode", inter, self.provider)
        # the settings that produced this session's timings, as the benchmark rows record them (0: onnxruntime's
        # default count)
        self.settings = {"intra_op_num_threads": intra, "inter_op_num_threads": inter,
                         "execution_mode": "parallel" if parallel else "sequential",
                         "graph_optimization_level": level,
                         "allow_spinning": None if spinning is None else bool(spinning)}
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = list(self.session.get_inputs()[0].shape)

    @property
    def label(self) -> str:
        return f"onnxruntime {self.path.name} on {self.provider}"

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        expected = [d for d in self.input_shape if isinstance(d, int)]
        if len(expected) == 4 and list(images.shape) != expected:
            raise DeployError(f"onnxruntime: the model takes input {expected}, got {list(images.shape)} "
                              "(check deploy.input_shape and deploy.batch_sizes against the export)")
        outputs = self.session.run(list(self.output_names), {self.input_name: images})
        return dict(zip(self.output_names, outputs))


def model_file_error(exc: BaseException) -> bool:
    """Whether a session-creation error is about the model file: onnxruntime reports a missing, unreadable or
    invalid one as "Load model from <path> failed:..." (NoSuchFile, InvalidProtobuf, InvalidArgument, Fail,
    InvalidGraph, as onnxruntime 1.32 raises them); a provider that cannot start says something else."""
    return "Load model from " in str(exc) or type(exc).__name__ in ("NoSuchFile", "NoModel", "InvalidProtobuf",
                                                                   "InvalidGraph")


# onnxruntime refuses a provider option its provider does not parse (core/framework/provider_options_utils.h,
# ProviderOptionsParser::Parse): 'Unknown provider option: "<name>".'
UNKNOWN_OPTION = re.compile(r'Unknown provider option: "([^"]+)"')


def create_session(ort: Any, path: str | Path, sess_opts: Any, providers: list[Any], may_drop: bool = False,
                   given: Mapping[str, Collection[str]] | None = None) -> tuple[Any, list[Any]]:
    """``ort.InferenceSession`` on ``providers``, and the provider list it was made with.

    With ``may_drop`` (:data:`CANN_DUMP_OM` was set here, not by the user), a CANN provider that refuses that
    option as unknown, an older onnxruntime-cann, is asked again without it (its sessions then save their .om in
    the working directory). onnxruntime reports the refusal either as the error itself or, when it falls back to
    the CPU, in the "EP Error ..." lines it prints (``InferenceSession.__init__``); those are printed as they came.
    An option the user set (``given``: provider name -> option names of deploy.onnxruntime.provider_options) that
    the provider refuses is a :class:`DeployError` instead of a session on the CPU: option names differ between
    releases (the CANN provider's ``precision_mode``, and ``precision_mode_v2`` in its place where microsoft/onnxruntime
    PR #27970 is in, see :data:`solo_npu.config.deploy_schema.CANN_PROVIDER_OPTIONS`).
    """
    said = io.StringIO()
    error = None
    with contextlib.redirect_stdout(said):
        try:
            session = ort.InferenceSession(str(path), sess_options=sess_opts, providers=providers)
        except Exception as exc:  # re-raised below unless it is the refused option
            error = exc
    sys.stdout.write(said.getvalue())
    refused = set(UNKNOWN_OPTION.findall(said.getvalue() + str(error or "")))
    if may_drop and CANN_DUMP_OM in refused:
        logger.warning("this onnxruntime-cann does not take the CANN provider option %s (an older release): its "
                       "sessions save their .om file in the working directory %s", CANN_DUMP_OM, Path.cwd())
        kept = [(p[0], {k: v for k, v in p[1].items() if k != CANN_DUMP_OM}) if isinstance(p, tuple) else p
                for p in providers]
        return create_session(ort, path, sess_opts, kept, given=given)
    for provider in (provider_name(p) for p in providers):
        theirs = sorted(refused & set((given or {}).get(provider, ())))
        if theirs:
            kind = next(k for k, name in ORT_PROVIDERS.items() if name == provider)
            raise DeployError(f"{provider} of this onnxruntime {ort.__version__} does not take the option(s) "
                              f"{', '.join(theirs)} that deploy.onnxruntime.provider_options.{kind} sets (it refuses "
                              f"them as unknown; option names differ between releases): remove or rename them")
    if error is not None:
        raise error
    return session, providers


def ort_accelerator(device: DeviceInfo, requested: str = "auto") -> str:
    """The device kind whose execution provider ONNX Runtime should use: ``"npu"``, ``"cuda"`` or ``"cpu"``.

    The CANN provider is used whenever onnxruntime offers it (onnxruntime-cann on a 310P host needs no
    torch_npu), unless the run is on CUDA or the user asked for ``runtime.device=cpu``.
    """
    import onnxruntime as ort

    if device.type == "cuda":
        return "cuda"
    if requested.split(":")[0].lower() == "cpu":
        return "cpu"
    if device.type == "npu" or ORT_PROVIDERS["npu"] in ort.get_available_providers():
        return "npu"
    return "cpu"


def ort_device(device: DeviceInfo, requested: str = "auto", device_id: int | None = None) -> str:
    """Where ONNX Runtime will run: ``"npu:<id>"``, ``"cuda:<id>"`` or ``"cpu"`` (a missing provider is CPU)."""
    import onnxruntime as ort

    kind = ort_accelerator(device, requested)
    if kind == "cpu" or ORT_PROVIDERS[kind] not in ort.get_available_providers():
        return "cpu"
    return f"{kind}:{device.index if device_id is None else int(device_id)}"


def provider_name(entry: Any) -> str:
    """The name of a provider list entry: ``"X"`` or ``("X", {options})``."""
    return entry[0] if isinstance(entry, tuple) else str(entry)


def provider_in_use(session: Any, providers: Sequence[Any]) -> str:
    """The execution provider ``session`` runs on, with one WARNING when it is not the one asked for.

    onnxruntime's Python ``InferenceSession`` catches a provider that fails to start (a CANN or CUDA
    provider without its driver, an option it rejects), prints "Falling back to ['CPUExecutionProvider'] and
    retrying." with ``print`` and builds a CPU session instead (onnxruntime 1.32,
    ``capi/onnxruntime_inference_collection.py``, ``InferenceSession.__init__`` and
    ``_create_inference_session``: ``_fallback_providers = ["CPUExecutionProvider"]``); a provider its wheel
    does not have is dropped with a Python warning. ``session.get_providers()`` lists what it really runs.
    Like a missing provider (:func:`ort_providers`), a fallback is a WARNING and the run goes on on the CPU.
    A session on an accelerator gets no second, silent fallback inside ``session.run``
    (:class:`OnnxRuntimeRunner` disables it).
    """
    wanted = provider_name(providers[0]) if providers else ORT_PROVIDERS["cpu"]
    used = list(session.get_providers()) or [ORT_PROVIDERS["cpu"]]
    if used[0] != wanted:
        logger.warning("onnxruntime was asked for %s but the session runs on %s (the provider did not start; "
                       "onnxruntime's 'EP Error' output above says why): reporting this backend as %s", wanted, used[0],
                       ort_device_name(used[0], providers))
    return used[0]


def ort_device_name(provider: str, providers: Sequence[Any]) -> str:
    """``"npu:<id>"`` / ``"cuda:<id>"`` for the CANN / CUDA provider (its ``device_id`` option), else ``"cpu"``."""
    kind = next((k for k, name in ORT_PROVIDERS.items() if name == provider), "cpu")
    if kind == "cpu":
        return "cpu"
    options = next((p[1] for p in providers if isinstance(p, tuple) and p[0] == provider), {})
    return f"{kind}:{int(options.get('device_id', 0))}"


def ort_providers(device: DeviceInfo, provider_options: Mapping[str, Any], requested: str = "auto",
                  device_id: int | None = None) -> list[Any]:
    """Provider list: [(accelerator provider, {"device_id": id, **options}), CPU], only those ORT has.

    ``device_id`` (``deploy.device_id``) picks the chip or GPU; default the run device's index. The CANN provider
    also gets ``dump_om_model: False`` unless the options set it (:data:`CANN_DUMP_OM`): no .om files in the
    working directory. An option name the provider does not have is a :class:`DeployError` naming the ones it
    has (:func:`~solo_npu.config.deploy_schema.unknown_provider_option`); the options of a provider the session
    will not use (not installed, ``runtime.device=cpu``, the other accelerator) are named in a WARNING.
    """
    import onnxruntime as ort

    for kind, opts in provider_options.items():
        for name in opts or {}:
            why = unknown_provider_option(str(kind), str(name))
            if why is not None:
                raise DeployError(f"deploy.onnxruntime.provider_options.{kind}.{name}: {why}")
    available = set(ort.get_available_providers())
    kind = ort_accelerator(device, requested)
    providers: list[Any] = []
    used = "cpu"
    if kind != "cpu":
        wanted = ORT_PROVIDERS[kind]
        if wanted in available:
            index = device.index if device_id is None else int(device_id)
            quiet = {CANN_DUMP_OM: False} if kind == "npu" else {}
            providers.append((wanted, {"device_id": index, **quiet, **dict(provider_options.get(kind) or {})}))
            used = kind
        else:
            logger.warning("onnxruntime has no %s (install %s); running on CPU", wanted, ORT_PACKAGES[kind])
    providers.append("CPUExecutionProvider")
    ignored = [f"provider_options.{k} ({', '.join(map(str, opts))}: {ORT_PROVIDERS.get(str(k), k)} is not used)"
               for k, opts in provider_options.items() if opts and k != used]
    if ignored:
        logger.warning("deploy.onnxruntime %s ignored: the session runs on %s", "; ".join(ignored),
                       provider_name(providers[0]))
    return providers


class TorchAieRunner(PyTorchRunner):
    """A torch_aie-compiled TorchScript module on an Ascend 310P device."""

    backend = "torch_aie"

    def __init__(self, path: str | Path, output_names: Sequence[str], device: DeviceInfo,
                 device_id: int | None = None) -> None:
        torch_aie = import_optional("torch_aie")
        if torch_aie is None:
            raise DeployError("torch_aie is not installed (install the Ascend torch_aie wheel for this backend)")
        if not Path(path).is_file():
            raise DeployError(f"torch_aie module not found: {path} (run stages=[compile] where torch_aie imports)")
        self.torch_aie = torch_aie
        index = device.index if device_id is None else int(device_id)
        torch_aie.set_device(index)
        # compiled ahead of time: no compilation at the first call (PyTorchRunner's compiled=False)
        super().__init__(load_torchscript(path, None, again="compile again with this torch: stages=[compile]"),
                         output_names, device)
        self.npu = f"npu:{index}"

    @torch.no_grad()
    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        stream = self.torch_aie.npu.Stream(self.npu)
        with self.torch_aie.npu.stream(stream):
            outputs = self.module(torch.from_numpy(images).to(self.npu))
            stream.synchronize()
        if isinstance(outputs, torch.Tensor):  # one output: the module returns it as it is (TimedModule does the same)
            outputs = (outputs,)
        return {n: t.cpu().numpy() for n, t in zip(self.output_names, outputs)}


def import_optional(name: str) -> Any | None:
    """Import a module that may be absent or broken; None instead of an exception."""
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return importlib.import_module(name)
    except Exception as exc:  # vendor packages fail in many ways without their drivers
        logger.warning("%s is installed but does not import: %s", name, exc)
        return None
