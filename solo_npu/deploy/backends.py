"""Deploy backends as objects: what each one needs, how it is prepared and run, and what its timing covers.

``BACKENDS`` maps the names of ``deploy.backends`` to classes; the verify, compile, infer and benchmark
stages build them with :func:`build_backends` and iterate, never branching on names. A backend:

- ``unavailable(batch_size)``: why it cannot run now (a missing tool, file or module), or None;
- ``prepare(manifest, result)``: its compile step (ATC, torch_aie), recording files and messages in ``result``;
- ``run_records(records, batch_size, out_dir, manifest)``: run the ``.bin`` files of ``records`` and write
  ``<stem>_<i>.bin`` per image into ``out_dir``; returns the seconds its timing scope covers;
- ``latency(batch_size, manifest, images, warmup, iters)``: per-batch latencies (ms) of repeated runs;
- ``runner(batch_size, manifest)``: an in-process :class:`~solo_npu.deploy.runners.Runner` (images in,
  outputs out) for the end-to-end timing, or None where the backend is a separate tool;
- ``timing_scope``: what a benchmark latency covers: ``"model only"``, ``"with host-device copies"`` or
  ``"device compute from ais_bench"``;
- ``infer_timing``: what the infer stage's seconds (``run_records``) cover: the timing scope for in-process runners,
  :data:`AIS_BENCH_RUN` for om;
- ``device``: where it runs, e.g. ``"cpu"``, ``"cuda:0"``, ``"npu:1"``;
- ``precision``: ``"fp32"`` or ``"fp16"``, which picks the verify tolerances.

Adding a backend is one subclass added to ``BACKENDS`` plus its tests (docs/deploy.md shows one).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from solo_npu.config.deploy_schema import OmConfig, TorchAieConfig
from solo_npu.deploy import om
from solo_npu.deploy.compile_310p import ATC_KEEPS_FP32
from solo_npu.deploy.context import DeployContext, DeployError, read_json, run_key, write_json
from solo_npu.deploy.export import exported_file
from solo_npu.deploy.preprocess import load_inputs
from solo_npu.deploy.runners import (
    OnnxRuntimeRunner,
    PyTorchRunner,
    Runner,
    TorchAieRunner,
    TorchScriptRunner,
    import_optional,
    ort_device,
)

logger = logging.getLogger(__name__)

MODEL_ONLY = "model only"
WITH_COPIES = "with host-device copies"
AIS_BENCH_COMPUTE = "device compute from ais_bench"  # the benchmark's om rows: ais_bench's NPU_compute_time
# The om infer seconds: the wall time of the ais_bench subprocess, its start, model load and reading and writing
# the .bin files included (OmBackend.run_records times om.run_ais_bench as a whole).
AIS_BENCH_RUN = "ais_bench run, wall time including its start, model load and file I/O"
# Where a benchmark row's peak memory comes from (the report's "memory" column).
ALLOCATOR_PEAK = "allocator peak"        # torch's device allocator (torch_npu / CUDA)
PROCESS_RSS = "process RSS"              # CPU runs: the whole process, model and data included
NPU_SMI = "npu-smi chip used"            # npu-smi's Memory-Usage of the chip: every process on it
RUNNER_FILE = Path(__file__).with_name("torch_aie_runner.py")


def batches(num: int, batch_size: int) -> list[list[int]]:
    return [list(range(s, min(s + batch_size, num))) for s in range(0, num, batch_size)]


def padded(members: Sequence[int], batch_size: int) -> list[int]:
    """Fill a short last batch by repeating its last image (static-shape models need full batches)."""
    return list(members) + [members[-1]] * (batch_size - len(members))


def write_image_outputs(out_dir: Path, stem: str, outputs: Mapping[str, np.ndarray], names: Sequence[str]) -> None:
    for i, name in enumerate(names):
        np.ascontiguousarray(outputs[name]).tofile(out_dir / f"{stem}_{i}.bin")


def compiled_file(ctx: DeployContext, kind: str, batch_size: int | str) -> str | None:
    """The compiled model of ``kind`` (``om``, ``torch_aie``) for a batch size, as a path under this run directory:
    what the compile stage recorded (relative to the run directory), else for ``om`` the ``.om`` that
    ``compile_310p.sh`` run by hand wrote after it (``compile/model_b<B>.om``, or ATC's ``_<os>_<arch>`` variant;
    one older than compile.json is a leftover the compile stage did not take)."""
    path = ctx.path("compile", "compile.json")
    recorded = (read_json(path).get(kind) or {}).get(str(batch_size)) if path.is_file() else None
    if recorded is not None:
        return str(ctx.run_dir / recorded)
    if kind == "om":
        from solo_npu.deploy.om import find_om

        stem = f"model_b{batch_size}" if str(batch_size) != "dynamic" else "model_dynamic"
        found = find_om(ctx.path("compile", stem))
        if found is not None and (not path.is_file() or found.stat().st_mtime > path.stat().st_mtime):
            logger.info("om batch %s: %s, written outside the compile stage (compile_310p.sh)", batch_size, found)
            return str(found)
    return None


def compiled_gears(ctx: DeployContext) -> list[int] | None:
    """The batch gears of the dynamic-batch ``.om`` as compile recorded them (else ``deploy.compile.dynamic_batch``;
    None when neither says)."""
    path = ctx.path("compile", "compile.json")
    recorded = read_json(path).get("om_gears") if path.is_file() else None
    gears = recorded or ctx.deploy_cfg.compile.dynamic_batch
    return [int(g) for g in gears] if gears else None


def device_id(ctx: DeployContext) -> int:
    """``deploy.device_id``, else the index of the run's accelerator, else 0."""
    chosen = ctx.deploy_cfg.device_id
    return int(chosen) if chosen is not None else ctx.device.index


class Backend:
    """Base class: an in-process runner over the preprocessed batches; subclasses give ``runner``."""

    name = "base"
    precision = "fp32"
    compiled = False  # True: prepare() builds its model (compile stage), verified after compiling
    # The deploy.export_formats entry whose files it runs, or compiles (a compiled backend's source: the verify stage
    # runs the in-process backend of the same format, so that an export fault is told apart from a compile fault).
    exported_format: str | None = None

    def __init__(self, ctx: DeployContext) -> None:
        self.ctx = ctx

    @property
    def device(self) -> str:
        return str(self.ctx.device.device)

    @property
    def timing_scope(self) -> str:
        return WITH_COPIES if self.ctx.device.is_accelerator else MODEL_ONLY

    @property
    def infer_timing(self) -> str:
        """What the infer stage's seconds (:meth:`run_records`) cover; the timing scope unless a subclass says."""
        return self.timing_scope

    @property
    def memory_source(self) -> str | None:
        """What the benchmark's peak memory measures for this backend (None: not measured)."""
        return ALLOCATOR_PEAK if self.ctx.device.is_accelerator else PROCESS_RSS

    def unavailable(self, batch_size: int) -> str | None:
        return None

    def prepare(self, manifest: Mapping[str, Any], result: dict[str, Any]) -> None:
        """Compile step; nothing for backends that run the exported files as they are."""

    def runner(self, batch_size: int, manifest: Mapping[str, Any]) -> Runner | None:
        raise NotImplementedError

    def run_records(self, records: Sequence[Mapping[str, Any]], batch_size: int, out_dir: Path,
                    manifest: Mapping[str, Any]) -> float:
        runner = self.runner(batch_size, manifest)
        out_dir.mkdir(parents=True, exist_ok=True)
        seconds = 0.0
        for members in batches(len(records), batch_size):
            images = load_inputs(self.ctx, [records[i] for i in padded(members, batch_size)])
            start = time.perf_counter()
            outputs = runner(images)
            seconds += time.perf_counter() - start
            for j, i in enumerate(members):
                write_image_outputs(out_dir, records[i]["stem"], {n: a[j] for n, a in outputs.items()},
                                    runner.output_names)
        return seconds

    def latency(self, batch_size: int, manifest: Mapping[str, Any], images: np.ndarray, warmup: int,
                iters: int, runner: Runner | None = None) -> list[float] | None:
        """Latencies (ms) of ``iters`` runs of ``images`` after ``warmup`` untimed runs."""
        from solo_npu.deploy.benchmark import time_model

        return time_model(runner or self.runner(batch_size, manifest), images, warmup, iters)

    def threads(self, runner: Runner | None) -> dict[str, Any] | None:
        """The thread settings that produced a benchmark row's timings: torch's intra-op thread count for the
        in-process torch runners (eager, TorchScript), onnxruntime's session settings for its runner
        (:attr:`~solo_npu.deploy.runners.OnnxRuntimeRunner.settings`); None where the host's threads are not what
        runs the model (om, torch_aie)."""
        import torch

        return {"torch_num_threads": torch.get_num_threads()}

    def describe(self) -> dict[str, str | None]:
        """What infer/<backend>_b<B>/outputs.json says of the run: ``timing`` is :attr:`infer_timing`."""
        return {"backend": self.name, "device": self.device, "timing": self.infer_timing, "precision": self.precision,
                "memory": self.memory_source}


class PyTorchBackend(Backend):
    """PyTorch, the adapter's export module on the run's device: eager, or under torch.compile
    (``deploy.pytorch.compile``, :meth:`~solo_npu.deploy.context.DeployContext.pytorch_module`)."""

    name = "pytorch"

    def runner(self, batch_size: int, manifest: Mapping[str, Any]) -> Runner:
        return PyTorchRunner(self.ctx.pytorch_module(), self.ctx.adapter.output_names, self.ctx.device,
                             compiled=self.ctx.compile_pytorch)


class TorchScriptBackend(Backend):
    name = "torchscript"
    exported_format = "torchscript"

    def unavailable(self, batch_size: int) -> str | None:
        return None if self._file(batch_size) else "not exported"

    def _file(self, batch_size: int) -> str | None:
        from solo_npu.deploy.export import load_manifest

        return exported_file(load_manifest(self.ctx), "torchscript", batch_size)

    def runner(self, batch_size: int, manifest: Mapping[str, Any]) -> Runner:
        path = exported_file(manifest, "torchscript", batch_size)
        if not path:
            raise DeployError(f"torchscript: no exported model for batch {batch_size} (run stages=[export])")
        return TorchScriptRunner(path, self.ctx.adapter.output_names, self.ctx.device,
                                 saved_with=(manifest.get("exported_with") or {}).get("torch"))


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime; the execution provider follows :func:`solo_npu.deploy.runners.ort_providers`."""

    name = "onnxruntime"
    exported_format = "onnx"

    def __init__(self, ctx: DeployContext) -> None:
        super().__init__(ctx)
        self.in_use: str | None = None  # where the last session really runs (see runner())

    @property
    def device(self) -> str:
        """Where the last session runs; before one exists, where the offered providers should run it."""
        return self.in_use or ort_device(self.ctx.device, self._requested(), device_id(self.ctx))

    @property
    def timing_scope(self) -> str:
        return MODEL_ONLY if self.device == "cpu" else WITH_COPIES

    @property
    def precision(self) -> str:
        """fp16 on the CANN provider unless its options keep float32 operators in float32.

        onnxruntime's cann_graph.cc (``BuildONNXModel``) hands GE a precision mode only when one is given:
        ``if (!info.precision_mode.empty()) options.emplace(ge::ir_option::PRECISION_MODE, ...)``; otherwise
        GE's default applies, force_fp16 outside training (GraphEngine's ge/init/gelib.cc: "This is not train
        mode, precision_mode need to be set force_fp16"; ``precision_mode_v2``'s default is fp16), as ATC's is.
        """
        if not self.device.startswith("npu"):
            return "fp32"
        options = self.ctx.deploy_cfg.onnxruntime.provider_options.npu or {}
        # GE reads the provider's options as ATC reads its flags: only the values that keep the original graph's
        # float32 are fp32 (compile_310p.ATC_KEEPS_FP32, see om_precision)
        keeps = any(str(options.get(option, "")) == value for option, value in ATC_KEEPS_FP32.items())
        return "fp32" if keeps else "fp16"

    @property
    def memory_source(self) -> str | None:
        # onnxruntime's device arena is not torch's allocator: npu-smi sees it on a chip, nothing here on CUDA
        return PROCESS_RSS if self.device == "cpu" else NPU_SMI if self.device.startswith("npu") else None

    def _requested(self) -> str:
        from omegaconf import OmegaConf

        return str(OmegaConf.select(self.ctx.cfg, "runtime.device", default="auto") or "auto")

    def unavailable(self, batch_size: int) -> str | None:
        from solo_npu.deploy.export import load_manifest

        return None if exported_file(load_manifest(self.ctx), "onnx", batch_size) else "not exported"

    def threads(self, runner: Runner | None) -> dict[str, Any] | None:
        return dict(runner.settings) if isinstance(runner, OnnxRuntimeRunner) else None

    def runner(self, batch_size: int, manifest: Mapping[str, Any]) -> Runner:
        path = exported_file(manifest, "onnx", batch_size)
        if not path:
            raise DeployError(f"onnxruntime: no exported model for batch {batch_size} (run stages=[export])")
        runner = OnnxRuntimeRunner(path, self.ctx.adapter.output_names, self.ctx.device,
                                   self.ctx.deploy_cfg.onnxruntime, requested=self._requested(),
                                   device_id=device_id(self.ctx))
        self.in_use = runner.device_name  # a provider that fell back to the CPU reports the CPU from here on
        return runner


class OmBackend(Backend):
    """ATC's ``.om`` run by ais_bench as a subprocess; benchmark timings are its NPU compute time, the infer stage's
    seconds the wall time of the whole ais_bench run."""

    name = "om"
    exported_format = "onnx"
    timing_scope = AIS_BENCH_COMPUTE
    infer_timing = AIS_BENCH_RUN
    memory_source = NPU_SMI  # ais_bench's summary has timings only (summary.py, Summary.report)
    compiled = True

    @property
    def precision(self) -> str:
        """What ATC built: ``"fp32"`` only when ``--precision_mode=must_keep_origin_dtype`` or
        ``--precision_mode_v2=origin`` is set (by ``deploy.compile.precision_mode``, ``precision_mode_v2`` or
        ``atc_args``), else ``"fp16"``: ATC's default (force_fp16) and the mixed modes run some float32 operators
        narrower (:func:`~solo_npu.deploy.compile_310p.om_precision`). Both options set is a DeployError, as ATC
        refuses them together (:func:`~solo_npu.deploy.compile_310p.atc_precision`)."""
        from solo_npu.deploy.compile_310p import atc_precision, om_precision

        ccfg = self.ctx.deploy_cfg.compile
        return om_precision(atc_precision(ccfg.precision_mode, ccfg.precision_mode_v2, ccfg.atc_args))

    @property
    def device(self) -> str:
        return f"npu:{device_id(self.ctx)}"

    @property
    def _cfg(self) -> OmConfig:
        return self.ctx.deploy_cfg.om

    def _launcher(self) -> list[str]:
        return om.ais_bench_launcher(self._cfg.launcher)

    def _model(self, batch_size: int) -> tuple[str | None, list[str]]:
        """The .om for ``batch_size`` and the ais_bench arguments it needs: its own static-batch one, else the
        dynamic-batch one with ``--dymBatch`` when ``batch_size`` is one of its gears. ais_bench runs a dynamic .om
        at its gears only (Ascend/tools ais_bench, backend/base/module/ModelInfer/ModelInferenceProcessor.cpp,
        ``SetDynamicBatchsize``: ``ModelProcess::CheckDynamicBatchSize`` fails for a size that is not one)."""
        extra = [str(a) for a in self._cfg.extra_args]
        path = compiled_file(self.ctx, "om", batch_size)
        if path:
            return path, extra
        dynamic, gears = compiled_file(self.ctx, "om", "dynamic"), compiled_gears(self.ctx)
        if dynamic and (gears is None or batch_size in gears):
            return dynamic, [*extra, "--dymBatch", str(batch_size)]
        return None, extra

    def unavailable(self, batch_size: int) -> str | None:
        if not self._model(batch_size)[0]:
            gears = compiled_gears(self.ctx)
            if compiled_file(self.ctx, "om", "dynamic") and gears is not None:
                return f"batch {batch_size} is not one of the .om's gears {gears} and has no .om of its own"
            return "no .om model (see compile_310p.sh in the run dir)"
        return om.ais_bench_missing(self._launcher())

    def prepare(self, manifest: Mapping[str, Any], result: dict[str, Any]) -> None:
        from solo_npu.deploy.compile_310p import compile_om

        compile_om(self.ctx, result)

    def runner(self, batch_size: int, manifest: Mapping[str, Any]) -> Runner | None:
        return None

    def threads(self, runner: Runner | None) -> dict[str, Any] | None:
        return None  # ais_bench runs the model on the chip

    def run_records(self, records: Sequence[Mapping[str, Any]], batch_size: int, out_dir: Path,
                    manifest: Mapping[str, Any]) -> float:
        """ais_bench over the records' ``.bin`` files (batched files for B > 1); wall seconds of the tool."""
        om_path, extra = self._model(batch_size)
        bins = [om.owner_only(self.ctx.run_dir / r["bin"]) for r in records]  # newer ais_bench checks each
        om.check_input_paths(bins)
        names = self.ctx.adapter.output_names
        single = batch_size == 1 and len({b.parent for b in bins}) == 1
        if single:
            # ais_bench's own layout is ours: <output>/<dirname>/<name>_<i>.bin, no copy needed
            output, dirname = out_dir.parent, out_dir.name
            basenames = [om.output_name(b) for b in bins]
            if len(set(basenames)) != len(basenames):
                raise DeployError("ais_bench names outputs by the input file name up to its first dot, and two "
                                  "preprocessed files share that prefix; rename the images so their stems differ")
            input_dir, links = om.single_file_inputs(bins, out_dir.parent / f"{out_dir.name}_inputs")
        else:
            out_dir.mkdir(parents=True, exist_ok=True)  # the per-image files split from ais_bench's batched ones
            input_dir = out_dir.parent / f"{out_dir.name}_inputs"
            groups = om.write_batched_inputs(bins, batch_size, input_dir)
            output, dirname = out_dir.parent, f"{out_dir.name}_raw"
        self._hand_over(om_path, output, dirname)
        cmd = om.ais_bench_command(self._launcher(), om_path, output, dirname, input_dir, batch_size=batch_size,
                                   device_id=device_id(self.ctx), extra_args=extra)
        start = time.perf_counter()
        om.run_ais_bench(cmd, self._cfg.timeout_s)
        seconds = time.perf_counter() - start
        if single:
            if links is not None:
                shutil.rmtree(links, ignore_errors=True)
            for record, basename in zip(records, basenames):
                if basename != record["stem"]:
                    for i in range(len(names)):
                        (out_dir / f"{basename}_{i}.bin").replace(out_dir / f"{record['stem']}_{i}.bin")
            return seconds
        if not self.ctx.deploy_cfg.infer.keep_raw:
            shutil.rmtree(input_dir, ignore_errors=True)  # the batched copy of the inputs has served its purpose
        raw = output / dirname
        for j, members in enumerate(groups):
            outputs = om.read_output_files(raw, f"batch_{j:05d}", names, manifest["outputs"], batch_size)
            for k, i in enumerate(members):
                write_image_outputs(out_dir, records[i]["stem"], {n: a[k] for n, a in outputs.items()}, names)
            for i in range(len(names)):  # each batched file goes as soon as it is split: never two full copies
                (raw / f"batch_{j:05d}_{i}.bin").unlink(missing_ok=True)
        shutil.rmtree(raw, ignore_errors=True)
        return seconds

    @staticmethod
    def _hand_over(om_path: str | Path, output: Path, dirname: str) -> None:
        """The .om and ``--output`` as newer ais_bench accepts them whatever the umask (see :mod:`om`); the output
        folder ``<output>/<dirname>`` is its own to make, and checked by it when it exists."""
        om.owner_only(om_path)
        om.owner_only_dir(output)
        if (output / dirname).exists():
            om.owner_only(output / dirname)

    def latency(self, batch_size: int, manifest: Mapping[str, Any], images: np.ndarray, warmup: int,
                iters: int, runner: Runner | None = None) -> list[float] | None:
        return None  # ais_bench reports statistics, not latencies: see stats()

    def stats(self, batch_size: int, iters: int, warmup: int = 1) -> dict[str, float]:
        """ais_bench ``--loop iters --warmup_count warmup`` on zero input: NPU compute time (ms) and throughput from
        its summary (ais_bench runs ``warmup`` untimed inferences first and then resets its summary)."""
        om_path, extra = self._model(batch_size)
        out = self.ctx.path("benchmark", run_key(self.name, batch_size))
        self._hand_over(om_path, out, "perf")
        cmd = om.ais_bench_command(self._launcher(), om_path, out, "perf", batch_size=batch_size, loop=iters,
                                   warmup=warmup, device_id=device_id(self.ctx), extra_args=extra)
        stats = om.parse_summary(out, "perf", om.run_ais_bench(cmd, self._cfg.timeout_s))
        shutil.rmtree(out / "perf", ignore_errors=True)  # outputs of the zero input: only the summary is wanted
        if "mean_ms" in stats and "throughput" not in stats:
            stats["throughput"] = 1000.0 * batch_size / stats["mean_ms"]
        return stats


class TorchAieBackend(Backend):
    """torch_aie: in process when torch_aie imports here, else in ``deploy.torch_aie.python`` through the
    shipped :mod:`solo_npu.deploy.torch_aie_runner`; timing is the module call plus stream synchronisation."""

    name = "torch_aie"
    exported_format = "torchscript"
    timing_scope = MODEL_ONLY
    memory_source = NPU_SMI
    compiled = True

    @property
    def _cfg(self) -> TorchAieConfig:
        return self.ctx.deploy_cfg.torch_aie

    @property
    def python(self) -> str | None:
        return str(self._cfg.python) if self._cfg.python else None

    @property
    def policy(self) -> str:
        return str(self._cfg.precision_policy or self.ctx.deploy_cfg.compile.torch_aie.precision_policy)

    @property
    def precision(self) -> str:
        return "fp32" if self.policy.upper() == "FP32" else "fp16"

    @property
    def device(self) -> str:
        return f"npu:{device_id(self.ctx)}"

    def in_process(self) -> Any | None:
        return None if self.python else import_optional("torch_aie")

    def threads(self, runner: Runner | None) -> dict[str, Any] | None:
        return None  # the compiled module runs on the chip

    def why_no_tool(self) -> str | None:
        if self.python:
            if shutil.which(self.python) is None and not Path(self.python).is_file():
                return f"deploy.torch_aie.python={self.python} does not exist"
            return None
        if self.in_process() is None:
            return ("torch_aie is not installed (install the Ascend torch_aie wheel, or point "
                    "deploy.torch_aie.python at the Python that has it)")
        return None

    def unavailable(self, batch_size: int) -> str | None:
        if not compiled_file(self.ctx, "torch_aie", batch_size):
            return "not compiled"
        return self.why_no_tool()

    def prepare(self, manifest: Mapping[str, Any], result: dict[str, Any]) -> None:
        from solo_npu.deploy.compile_310p import compile_torch_aie

        compile_torch_aie(self, manifest, result)

    def runner_command(self, *args: str) -> list[str]:
        """``python compile/torch_aie_runner.py ARGS`` as run from the run directory."""
        return [self.python or sys.executable, str(Path("compile") / RUNNER_FILE.name), *args]

    def run_tool(self, args: Sequence[str], what: str) -> None:
        cmd = self.runner_command(*args)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=self.ctx.run_dir,
                                  timeout=self._cfg.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DeployError(f"{what} could not run ({exc}); command: {' '.join(cmd)}") from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise DeployError(f"{what} failed (exit {proc.returncode}): {tail[0]}")

    def _shape_args(self, batch_size: int) -> list[str]:
        h, w = self.ctx.settings.input_shape
        return ["--batch-size", str(batch_size), "--height", str(h), "--width", str(w),
                "--device-id", str(device_id(self.ctx))]

    def _timed(self, batch_size: int, runner: Runner | None = None) -> Any:
        """The runner's timed module; ``runner``'s loaded module when given (one copy on the device, and the
        end-to-end timing then runs the module the latency loop warmed)."""
        from solo_npu.deploy import torch_aie_runner

        module = runner.module if isinstance(runner, TorchAieRunner) else None
        return torch_aie_runner.TimedModule(compiled_file(self.ctx, "torch_aie", batch_size), device_id(self.ctx),
                                            module=module)

    def run_records(self, records: Sequence[Mapping[str, Any]], batch_size: int, out_dir: Path,
                    manifest: Mapping[str, Any]) -> float:
        paths = [str((self.ctx.run_dir / r["bin"]).resolve()) for r in records]
        if [Path(p).stem for p in paths] != [r["stem"] for r in records]:
            raise DeployError("torch_aie runner: input file names must be <stem>.bin")
        h, w = self.ctx.settings.input_shape
        if self.python is None:
            from solo_npu.deploy import torch_aie_runner

            latencies = torch_aie_runner.run_files(self._timed(batch_size), paths, batch_size, h, w, str(out_dir))
            return sum(latencies) / 1000.0
        out_dir.mkdir(parents=True, exist_ok=True)
        listing = out_dir.parent / f"{out_dir.name}.inputs.txt"
        timings = out_dir.parent / f"{out_dir.name}.timings.json"
        listing.write_text("\n".join(paths) + "\n")
        self.run_tool(["run", "--module", str(Path(compiled_file(self.ctx, "torch_aie", batch_size)).resolve()),
                       "--list", str(listing.resolve()), "--output-dir", str(out_dir.resolve()),
                       "--timings", str(timings.resolve()), *self._shape_args(batch_size)],
                      f"torch_aie runner (batch {batch_size})")
        latencies = read_json(timings)["latencies_ms"]
        listing.unlink()
        timings.unlink()
        return sum(latencies) / 1000.0

    def latency(self, batch_size: int, manifest: Mapping[str, Any], images: np.ndarray, warmup: int,
                iters: int, runner: Runner | None = None) -> list[float] | None:
        """Module call + stream synchronisation of one batch, as the runner times it (never the in-process
        runner's host-device copies)."""
        from solo_npu.deploy import torch_aie_runner

        h, w = self.ctx.settings.input_shape
        out = self.ctx.path("benchmark", run_key(self.name, batch_size))
        out.mkdir(parents=True, exist_ok=True)
        first = out / "input.bin"
        np.ascontiguousarray(images[0], dtype=np.float32).tofile(first)
        if self.python is None:
            return torch_aie_runner.run_loop(self._timed(batch_size, runner), str(first), batch_size, h, w, iters,
                                             warmup)
        listing, timings = out / "inputs.txt", out / "timings.json"
        listing.write_text(f"{first.resolve()}\n")
        self.run_tool(["run", "--module", str(Path(compiled_file(self.ctx, "torch_aie", batch_size)).resolve()),
                       "--list", str(listing.resolve()), "--timings", str(timings.resolve()), "--loop", str(iters),
                       "--warmup", str(warmup), *self._shape_args(batch_size)],
                      f"torch_aie runner (batch {batch_size})")
        return read_json(timings)["latencies_ms"]

    def runner(self, batch_size: int, manifest: Mapping[str, Any]) -> Runner | None:
        if self.python is not None:
            return None  # another interpreter: no in-process runner for the end-to-end timing
        return TorchAieRunner(compiled_file(self.ctx, "torch_aie", batch_size), self.ctx.adapter.output_names,
                              self.ctx.device, device_id(self.ctx))


BACKENDS: dict[str, type[Backend]] = {
    cls.name: cls for cls in (PyTorchBackend, OnnxRuntimeBackend, TorchScriptBackend, TorchAieBackend, OmBackend)
}


def build_backends(ctx: DeployContext, names: Sequence[str] | None = None) -> list[Backend]:
    """The backends named in ``deploy.backends`` (or ``names``), in that order."""
    names = list(ctx.settings.backends if names is None else names)
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise DeployError(f"unknown backend(s) {unknown} in deploy.backends: choose from {list(BACKENDS)}")
    return [BACKENDS[n](ctx) for n in names]


def write_outputs_info(ctx: DeployContext, backend: Backend, batch_size: int, out_dir: Path,
                       records: Sequence[Mapping[str, Any]], manifest: Mapping[str, Any], seconds: float) -> None:
    write_json(out_dir / "outputs.json", {
        **backend.describe(), "batch_size": batch_size, "output_names": list(ctx.adapter.output_names),
        "outputs": manifest["outputs"], "stems": [r["stem"] for r in records], "seconds": seconds})
