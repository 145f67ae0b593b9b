"""Benchmark stage: per backend x batch size, model-only latency and end-to-end throughput.

Model-only: the same preprocessed batch run ``iters`` times after ``warmup`` runs (excluded); mean,
p50 and p99 latency per batch and images/s. End-to-end: read the image files, resize/normalise/pad
(data transforms), run, paste masks (adapter postprocess), over ``e2e_images`` images. Peak memory
is the highest :func:`solo_npu.runtime.memory_stats` reading during the model-only runs (device
allocator; process RSS on CPU, where it includes the model and everything loaded before). Each row
carries its backend's timing scope: "model only", "with host-device copies" (in-process runners on an
accelerator) or "device compute from ais_bench" (om: ais_bench's ``--loop`` NPU compute time); torch_aie
times the module call plus stream synchronisation, in another Python when ``deploy.torch_aie.python`` is set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from solo_npu.deploy.backends import OmBackend, batches, build_backends, padded
from solo_npu.deploy.context import DeployContext, DeployError, read_json, write_json
from solo_npu.deploy.export import load_manifest
from solo_npu.deploy.preprocess import build_deploy_dataset, collate_canvas, load_index, load_inputs
from solo_npu.deploy.runners import Runner
from solo_npu.runtime import DeviceInfo, memory_stats, reset_peak_memory

logger = logging.getLogger(__name__)


class MemorySampler:
    """Highest ``memory_stats(device)["allocated_mb"]`` seen by a background thread while active.

    On CPU that is the process RSS, so each benchmark row gets its own peak even though the process's
    max RSS never resets; on accelerators the allocator's own peak (reset per row) is used as well.
    """

    def __init__(self, device: DeviceInfo, interval_s: float = 0.02) -> None:
        self.device, self.interval_s, self.peak_mb = device, interval_s, 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, memory_stats(self.device)["allocated_mb"])
            self._stop.wait(self.interval_s)

    def __enter__(self) -> MemorySampler:
        reset_peak_memory(self.device)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.device.is_accelerator:
            self.peak_mb = max(self.peak_mb, memory_stats(self.device)["peak_mb"])


def latency_stats(latencies_ms: Sequence[float], batch_size: int) -> dict[str, float]:
    lat = np.asarray(latencies_ms, dtype=np.float64)
    mean = float(lat.mean())
    return {"mean_ms": mean, "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "throughput": 1000.0 * batch_size / mean, "iters": int(lat.size)}


def time_model(runner: Runner, images: np.ndarray, warmup: int, iters: int) -> list[float]:
    """Latencies in ms of ``iters`` runs after ``warmup`` untimed runs (runners return host arrays)."""
    for _ in range(warmup):
        runner(images)
    latencies = []
    for _ in range(iters):
        start = time.perf_counter()
        runner(images)
        latencies.append(1000 * (time.perf_counter() - start))
    return latencies


def time_end_to_end(ctx: DeployContext, runner: Runner, dataset: Any, num_images: int, batch_size: int) -> float:
    """Images/s from image file to pasted masks for ``num_images`` images."""
    start = time.perf_counter()
    for members in batches(num_images, batch_size):
        samples = [dataset[i] for i in padded(members, batch_size)]
        images, metas = collate_canvas(samples, ctx.settings.input_shape, ctx.adapter.pad_position)
        outputs = runner(images.numpy())
        for j in range(len(members)):
            ctx.adapter.postprocess({n: a[j] for n, a in outputs.items()}, metas[j])
    return num_images / (time.perf_counter() - start)


def _ap(metrics: Mapping[str, Any], key: str) -> float | None:
    entry = metrics.get(key)
    if not entry:
        return None
    per_type = entry["metrics"]
    first = next(iter(per_type.values()), None)
    return None if first is None else float(first["AP"])


def run_benchmark(ctx: DeployContext) -> dict[str, Any]:
    manifest = load_manifest(ctx)
    records = load_index(ctx)["images"]
    bcfg = ctx.deploy_cfg.get("benchmark") or {}
    warmup, iters = int(bcfg.get("warmup", 2)), int(bcfg.get("iters", 10))
    if iters < 1:
        raise DeployError(f"deploy.benchmark.iters={iters}: give at least 1 timed iteration")
    e2e_images = bcfg.get("e2e_images")
    metrics_path = ctx.path("evaluate", "metrics.json")
    metrics = read_json(metrics_path) if metrics_path.is_file() else {}
    dataset = None
    rows = []
    for backend in build_backends(ctx):
        for bs in ctx.settings.batch_sizes:
            key = f"{backend.name}_b{bs}"
            why = backend.unavailable(bs)
            if why is not None:
                logger.warning("benchmark %s: %s, skipped", key, why)
                continue
            row: dict[str, Any] = {"backend": backend.name, "batch_size": bs, "AP": _ap(metrics, key),
                                   "timing": backend.timing_scope, "device": backend.device}
            if isinstance(backend, OmBackend):
                row.update(backend.stats(bs, iters), e2e_throughput=None)
            else:
                images = load_inputs(ctx, [records[i] for i in padded(list(range(min(bs, len(records)))), bs)])
                runner = backend.runner(bs, manifest)
                with MemorySampler(ctx.device) as memory:
                    row.update(latency_stats(backend.latency(bs, manifest, images, warmup, iters, runner), bs))
                row["peak_mb"] = memory.peak_mb
                num = len(records) if e2e_images is None else min(int(e2e_images), len(records))
                if runner is not None and num > 0:
                    dataset = dataset or build_deploy_dataset(ctx)[0]
                    row["e2e_throughput"] = time_end_to_end(ctx, runner, dataset, num, bs)
            rows.append(row)
            logger.info("benchmark %s: %.1f ms/batch, %.2f img/s (%s)", key, row.get("mean_ms", float("nan")),
                        row.get("throughput", float("nan")), backend.timing_scope)
    eager_ap = _ap(metrics, "eager")
    result = {"device": ctx.device.type, "warmup": warmup, "iters": iters, "rows": rows, "eager_AP": eager_ap}
    write_json(ctx.path("benchmark", "benchmark.json"), result)
    return result
