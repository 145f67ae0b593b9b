"""Benchmark stage: per backend x batch size, model-only latency and end-to-end throughput.

Model-only: the same preprocessed batch run ``iters`` times after ``warmup`` runs (excluded); mean,
p50 and p99 latency per batch and images/s. End-to-end: read the image files, resize/normalise/pad
(data transforms), run, paste masks (adapter postprocess), over ``e2e_images`` images. Each row carries
its backend's timing scope: "model only", "with host-device copies" (in-process runners on an
accelerator) or "device compute from ais_bench" (om: ais_bench's ``--loop`` NPU compute time); torch_aie
times the module call plus stream synchronisation, in another Python when ``deploy.torch_aie.python`` is set.

Peak memory, and where it comes from (the row's ``memory``): torch's device allocator for in-process
runners on an accelerator, the process RSS for backends on the CPU (model and everything loaded before
included; read from the process also when the run's device is an accelerator, as for ONNX Runtime without
its CUDA or CANN provider), and
``npu-smi info``'s Memory-Usage of the chip for om, torch_aie and onnxruntime's CANN provider, sampled while
they run (ais_bench's summary reports timings only; npu-smi counts every process on the chip).
AP: every iou type evaluate scored, for the batch sizes infer ran (``deploy.infer.batch_sizes``).
Threads: the settings the timings were taken with (the row's ``threads``, :meth:`Backend.threads`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from solo_npu.deploy.backends import (
    ALLOCATOR_PEAK,
    NPU_SMI,
    PROCESS_RSS,
    Backend,
    OmBackend,
    batches,
    build_backends,
    padded,
)
from solo_npu.deploy.context import DeployContext, DeployError, read_json, run_key, write_json
from solo_npu.deploy.evaluate import score_types
from solo_npu.deploy.export import load_manifest
from solo_npu.deploy.infer import infer_batch_sizes
from solo_npu.deploy.preprocess import build_deploy_dataset, collate_canvas, load_index, load_inputs
from solo_npu.deploy.runners import Runner
from solo_npu.runtime import DeviceInfo, memory_stats, reset_peak_memory

logger = logging.getLogger(__name__)


class PollingSampler:
    """A background thread that calls ``sample()`` every ``interval_s`` while the sampler is active, once
    on entry and once on exit; subclasses keep the highest reading in ``peak_mb``."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> PollingSampler:
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


class MemorySampler(PollingSampler):
    """Highest ``memory_stats(device)["allocated_mb"]`` seen while active.

    On CPU that is the process RSS, so each benchmark row gets its own peak even though the process's
    max RSS never resets; on accelerators the allocator's own peak (reset per row) is used as well.
    """

    def __init__(self, device: DeviceInfo, interval_s: float = 0.02) -> None:
        super().__init__(interval_s)
        self.device, self.peak_mb = device, 0.0

    def sample(self) -> None:
        self.peak_mb = max(self.peak_mb, memory_stats(self.device)["allocated_mb"])

    def __enter__(self) -> MemorySampler:
        reset_peak_memory(self.device)
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if self.device.is_accelerator:
            self.peak_mb = max(self.peak_mb, memory_stats(self.device)["peak_mb"])


# A chip row of ``npu-smi info``: "| <chip> <device> | <bus id> | <AICore%> <used> / <total> [<HBM used> / <total>] |"
# (the table the Ascend ModelZoo SOLOV2 torch_aie inference guide shows for a 310P3; on chips with HBM the
# last pair is the HBM).
_BUS_ID = r"[0-9A-Fa-f]+:[0-9A-Fa-f]+:[0-9A-Fa-f]+\.[0-9A-Fa-f]+"
_NPU_SMI_CHIP_ROW = re.compile(rf"^\|\s*\d+\s+(\d+)\s*\|\s*{_BUS_ID}\s*\|(.*)\|")


def npu_smi_memory_mb(text: str, device_id: int) -> tuple[float, float] | None:
    """(used, total) MB of logical device ``device_id`` in ``npu-smi info`` output, or None if absent."""
    for line in text.splitlines():
        m = _NPU_SMI_CHIP_ROW.match(line.strip())
        if m and int(m.group(1)) == device_id:
            pairs = re.findall(r"(\d+)\s*/\s*(\d+)", m.group(2))
            if pairs:
                return float(pairs[-1][0]), float(pairs[-1][1])
    return None


class NpuSmiSampler(PollingSampler):
    """Highest chip memory in use (``npu-smi info``) while active; ``peak_mb`` None when never read."""

    def __init__(self, device_id: int, command: str = "npu-smi", interval_s: float = 0.2) -> None:
        super().__init__(interval_s)
        self.device_id, self.command = device_id, command
        self.peak_mb: float | None = None

    def sample(self) -> None:
        try:
            proc = subprocess.run([self.command, "info"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return
        found = npu_smi_memory_mb(proc.stdout, self.device_id) if proc.returncode == 0 else None
        if found is not None:
            self.peak_mb = max(self.peak_mb or 0.0, found[0])


def memory_sampler(ctx: DeployContext, backend: Backend) -> tuple[Any, str | None]:
    """The sampler for ``backend``'s memory source and the source as the row states it."""
    source = backend.memory_source
    if source == ALLOCATOR_PEAK:  # an in-process runner on the run's accelerator: torch's allocator there
        return MemorySampler(ctx.device), source
    if source == PROCESS_RSS:  # a backend on the CPU, whatever the run's device (onnxruntime without its provider)
        return MemorySampler(DeviceInfo("cpu", torch.device("cpu"), 0)), source
    if source == NPU_SMI:
        command = str(ctx.deploy_cfg.benchmark.npu_smi)
        if shutil.which(command) is None:
            return contextlib.nullcontext(None), f"not measured ({command} not found)"
        return NpuSmiSampler(int(backend.device.rpartition(":")[2] or 0), command), source
    return contextlib.nullcontext(None), None


def latency_stats(latencies_ms: Sequence[float], batch_size: int) -> dict[str, float]:
    lat = np.asarray(latencies_ms, dtype=np.float64)
    mean = float(lat.mean())
    return {"mean_ms": mean, "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "throughput": 1000.0 * batch_size / mean, "iters": int(lat.size)}


def warmup_runs(runner: Runner, warmup: int) -> int:
    """The untimed runs before the timed ones: ``warmup``, or more where the runner needs more to be steady
    (:attr:`~solo_npu.deploy.runners.Runner.least_warmup`: TorchScript's profiling and optimising runs)."""
    return max(int(warmup), runner.least_warmup)


def time_model(runner: Runner, images: np.ndarray, warmup: int, iters: int) -> list[float]:
    """Latencies in ms of ``iters`` runs after :func:`warmup_runs` untimed runs (runners return host arrays)."""
    runs = warmup_runs(runner, warmup)
    if runs > warmup:
        logger.info("%s: %d warm-up runs, not %d: %s", runner.label, runs, warmup, runner.warmup_reason)
    for _ in range(runs):
        runner(images)
    latencies = []
    for _ in range(iters):
        start = time.perf_counter()
        runner(images)
        latencies.append(1000 * (time.perf_counter() - start))
    return latencies


def e2e_count(num_images: int, batch_size: int) -> int:
    """The images the end-to-end timing runs at ``batch_size``: ``num_images`` rounded up to whole batches, so that
    every image of every batch is a real one, read, run and post-processed (a padded batch would do the model's work
    for its filler images and count none of them)."""
    return -(-num_images // batch_size) * batch_size


def time_end_to_end(ctx: DeployContext, runner: Runner, dataset: Any, num_images: int, batch_size: int) -> float:
    """Images/s from image file to pasted masks (boxes for box-only models) over :func:`e2e_count` images in
    batches of ``batch_size``: the first ``num_images`` images of ``dataset``, taken again from the first where
    the last batch needs more."""
    count = e2e_count(num_images, batch_size)
    start = time.perf_counter()
    for members in batches(count, batch_size):
        samples = [dataset[i % num_images] for i in members]
        images, metas = collate_canvas(samples, ctx.settings.input_shape, ctx.adapter.pad_position)
        outputs = runner(images.numpy())
        for j in range(len(members)):
            ctx.adapter.postprocess({n: a[j] for n, a in outputs.items()}, metas[j])
    return count / (time.perf_counter() - start)


def ap_by_type(metrics: Mapping[str, Any], key: str) -> dict[str, float | None]:
    """``{iou type: AP}`` of one evaluated key (empty when it was not scored)."""
    entry = metrics.get(key) or {}  # a backend evaluate could not score has {"failed": reason} only
    return {t: None if m["AP"] is None else float(m["AP"]) for t, m in (entry.get("metrics") or {}).items()}


def _ap(metrics: Mapping[str, Any], key: str) -> float | None:
    """AP of the model's first iou type (segm for mask models)."""
    return next(iter(ap_by_type(metrics, key).values()), None)


def run_benchmark(ctx: DeployContext) -> dict[str, Any]:
    manifest = load_manifest(ctx)
    records = load_index(ctx)["images"]
    settings = ctx.deploy_cfg.benchmark
    warmup, iters = int(settings.warmup), int(settings.iters)
    if iters < 1:
        raise DeployError(f"deploy.benchmark.iters={iters}: give at least 1 timed iteration")
    e2e_images = settings.e2e_images
    metrics_path = ctx.path("evaluate", "metrics.json")
    metrics = read_json(metrics_path) if metrics_path.is_file() else {}
    datasets: list[Any] = []  # the end-to-end dataset, built once
    rows = []
    for backend in build_backends(ctx):
        for bs in ctx.settings.batch_sizes:
            key = run_key(backend.name, bs)
            why = backend.unavailable(bs)
            if why is not None:
                logger.warning("benchmark %s: %s, skipped", key, why)
                continue
            try:
                row = _bench_row(ctx, backend, bs, manifest, records, metrics, warmup, iters, e2e_images, datasets)
            except DeployError as exc:  # this backend's tool failed: the other rows go on (pipeline ends with it)
                rows.append({"backend": backend.name, "batch_size": bs, "failed": str(exc)})
                logger.error("benchmark %s failed: %s; the other backends go on", key, exc)
                continue
            rows.append(row)
            logger.info("benchmark %s: %.1f ms/batch, %.2f img/s (%s)", key, row.get("mean_ms", float("nan")),
                        row.get("throughput", float("nan")), backend.timing_scope)
    eager_ap = _ap(metrics, "eager")
    result = {"device": ctx.device.type, "warmup": warmup, "iters": iters, "rows": rows, "eager_AP": eager_ap,
              "eager_AP_by_type": ap_by_type(metrics, "eager"), "ap_types": list(score_types(ctx.adapter.iou_types)),
              "ap_batch_sizes": infer_batch_sizes(ctx)}
    write_json(ctx.path("benchmark", "benchmark.json"), result)
    return result


def _bench_row(ctx: DeployContext, backend: Any, bs: int, manifest: Mapping[str, Any],
               records: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any], warmup: int, iters: int,
               e2e_images: Any, datasets: list[Any]) -> dict[str, Any]:
    """The benchmark row of one backend at one batch size."""
    key = run_key(backend.name, bs)
    # the runner first: its device (an onnxruntime session that fell back to the CPU) sets the row's
    runner = None if isinstance(backend, OmBackend) else backend.runner(bs, manifest)
    sampler, source = memory_sampler(ctx, backend)
    row: dict[str, Any] = {"backend": backend.name, "batch_size": bs, "AP": _ap(metrics, key),
                           "AP_by_type": ap_by_type(metrics, key), "timing": backend.timing_scope,
                           "device": backend.device, "memory": source, "threads": backend.threads(runner)}
    if isinstance(backend, OmBackend):
        with sampler as memory:
            row.update(backend.stats(bs, iters, warmup), e2e_throughput=None)
        row["peak_mb"] = None if memory is None else memory.peak_mb
    else:
        images = load_inputs(ctx, [records[i] for i in padded(list(range(min(bs, len(records)))), bs)])
        with sampler as memory:
            row.update(latency_stats(backend.latency(bs, manifest, images, warmup, iters, runner), bs))
        if runner is not None:
            row["warmup"] = warmup_runs(runner, warmup)
            if row["warmup"] != warmup:
                row["warmup_reason"] = runner.warmup_reason
        row["peak_mb"] = None if memory is None else memory.peak_mb
        num = len(records) if e2e_images is None else min(int(e2e_images), len(records))
        if runner is not None and num > 0:
            if not datasets:
                datasets.append(build_deploy_dataset(ctx)[0])
            row["e2e_throughput"] = time_end_to_end(ctx, runner, datasets[0], num, bs)
    return row
