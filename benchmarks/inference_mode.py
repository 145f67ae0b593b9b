"""SOLOv2 forward (backbone + neck + head) in its training layout against its inference mode, in one run.

Inference mode (``solo_npu.models.inference.prepare_for_inference``) folds the frozen BatchNorms into the
convolutions and can switch to channels-last, where on the CPU the 1x1 convolutions also run on oneDNN; the
outputs of all rows are compared too.

Usage: ``python benchmarks/inference_mode.py [--model solov2_r50] [--shape 800 1216] [--iters 3]
[--threads 1] [--device cpu] [--precision fp32 fp16 bf16] [--compile] [--no-write]``

``--precision`` runs every layout in fp32 and/or under autocast to fp16 or bf16 (``torch.autocast`` of the
device; fp16 is skipped on the CPU, whose autocast type is bf16); on CUDA the fp32 rows say whether TF32 was
allowed. Every row also gives its rate (Conv2d/Linear multiply-accumulates x 2 per second), against the rate
of one 3x3 convolution of 256 channels at the stride-4 level of the same input (SOLOv2's largest convolutions),
timed alone in this device's inference layout in fp32: the forward's multiply-accumulates at that rate are how
far convolutions as the device runs them could take this forward. On the CPU, one profiled forward of the
channels-last row gives the share of its operator time spent in convolution kernels. ``--compile`` adds the
inference mode of this device (channels-last on the CPU, NCHW elsewhere) under
``torch.compile`` (inductor, as ``deploy.pytorch.compile`` runs it: ``compile_for_inference``, with inductor's
freezing on the CPU), in fp32, with its compile time (the first call) in the row's name.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

# Before anything imports torch (as in train.py): torch >= 2.5 imports installed device backends at `import torch`,
# and a torch_npu that cannot load CANN's libraries would end the benchmark there, on the CPU too. A set value wins.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import command_line, cuda_settings, describe_machine, device_name, fp32_label, publish  # noqa: E402
from solov2_forward import count_macs  # noqa: E402

from solo_npu.models import build_model  # noqa: E402
from solo_npu.models.inference import compile_for_inference, prepare_for_inference  # noqa: E402
from solo_npu.runtime import resolve_device, synchronize  # noqa: E402

HEADING = "## SOLOv2 inference mode"
AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def _flat(out) -> list[torch.Tensor]:
    return [t.float() for group in out for t in (group if isinstance(group, (list, tuple)) else [group])]


def timed(rows: dict[str, tuple[torch.nn.Module, torch.dtype | None]], x: torch.Tensor, iters: int,
          info) -> dict[str, tuple]:
    """Best time per row (a model, in fp32 or under autocast to a dtype); iterations interleave the rows so a
    loaded machine slows each alike."""
    def run(model: torch.nn.Module, dtype: torch.dtype | None):
        amp = torch.autocast(info.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with amp:
            return model.forward_head(x)

    times: dict[str, list[float]] = {name: [] for name in rows}
    with torch.no_grad():
        outs = {name: _flat(run(*row)) for name, row in rows.items()}  # warm-up + outputs
        for _ in range(iters):
            for name, row in rows.items():
                synchronize(info)
                start = time.perf_counter()
                run(*row)
                synchronize(info)
                times[name].append(time.perf_counter() - start)
    return {name: (min(times[name]) * 1000, outs[name]) for name in rows}


def conv_rate(info, shape: tuple[int, int], channels_last: bool, iters: int) -> float:
    """GFLOP/s of one 3x3, 256 -> 256 convolution over the stride-4 map of ``shape``, fp32, best of ``iters``."""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).eval().to(info.device)
    x = torch.randn(1, 256, (shape[0] + 3) // 4, (shape[1] + 3) // 4, device=info.device)
    if channels_last:
        conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    flops = 2 * 256 * 256 * 9 * x.shape[2] * x.shape[3]
    best = float("inf")
    with torch.no_grad():
        conv(x)
        for _ in range(max(iters, 3)):
            synchronize(info)
            start = time.perf_counter()
            conv(x)
            synchronize(info)
            best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def conv_share(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Share of one CPU forward's operator time spent in convolution kernels (torch.profiler, self times)."""
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model.forward_head(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    return conv / total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="solov2_r50")
    parser.add_argument("--shape", type=int, nargs=2, default=[800, 1216])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=sorted(AUTOCAST),
                        help="fp32 and/or autocast to fp16 / bf16, every layout in each (fp16: not on the CPU)")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile of this device's inference mode (fp32)")
    parser.add_argument("--no-write", action="store_true")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = resolve_device(args.device)
    device = info.device
    precisions = list(dict.fromkeys(args.precision))
    if info.type == "cpu" and "fp16" in precisions:
        print("fp16 autocast is not timed on the CPU (its autocast type is bf16): skipped")
        precisions.remove("fp16")
    if not precisions:
        parser.error("no precision left to time on this device")
    cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{args.model}.yaml")
    cfg.num_classes = 80
    cfg.pretrained = None
    torch.manual_seed(0)
    base = build_model(cfg).eval().to(device)
    x = torch.randn(1, 3, *args.shape, device=device)
    layouts = {
        "training layout (today's eager)": base,
        "BN folded": prepare_for_inference(copy.deepcopy(base)),
        "BN folded + channels-last" + (" (1x1 on oneDNN)" if info.type == "cpu" else ""):
            prepare_for_inference(copy.deepcopy(base), channels_last=True),
    }
    labels = {"fp32": fp32_label(info), "fp16": "fp16 autocast", "bf16": "bf16 autocast"}
    variants = {(name, labels[p]): (model, AUTOCAST[p]) for p in precisions for name, model in layouts.items()}
    reference = ("training layout (today's eager)", labels[precisions[0]])
    if args.compile:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")  # cold, as a first use
        layout = "channels-last" if info.inference_channels_last else "NCHW"
        compiled = prepare_for_inference(copy.deepcopy(base), channels_last=info.inference_channels_last)
        compiled.forward_head = compile_for_inference(compiled.forward_head, info.type)
        with torch.no_grad():
            synchronize(info)
            start = time.perf_counter()
            compiled.forward_head(x)
            synchronize(info)
        how = "torch.compile with freezing" if info.type == "cpu" else "torch.compile"
        variants[(f"BN folded + {layout} + {how} (compiling took {time.perf_counter() - start:.0f} s)",
                  labels["fp32"])] = (compiled, None)
    results = timed(variants, x, args.iters, info)
    macs = count_macs(base, tuple(args.shape), device)
    rate = conv_rate(info, tuple(args.shape), info.inference_channels_last, args.iters)
    ref_ms, ref_out = results[reference]
    rows = []
    for (name, precision), (ms, out) in results.items():
        diff = max(float((o - r).abs().max()) for o, r in zip(out, ref_out))
        rows.append(f"| {name} | {precision} | {ms:.1f} | {ref_ms / ms:.2f}x | {2 * macs / ms / 1e6:.3g} | "
                    f"{diff:.1e} |")
    floor_ms = 2 * macs / rate / 1e6
    share = ""
    if info.type == "cpu":
        name = next(n for n in layouts if "channels-last" in n)
        share = (f" In the fp32 {name[:name.index(' (') if ' (' in name else None]} row, convolution kernels took "
                 f"{100 * conv_share(layouts[name], x):.0f}% of one profiled forward's operator time.")
    conv_layout = "channels-last" if info.inference_channels_last else "NCHW"
    heading = HEADING if device.type == "cpu" else f"{HEADING} ({device.type})"
    settings = f" ({cuda_settings(info)})" if cuda_settings(info) else ""
    dev_name = device_name(info)
    publish(heading, [
        heading, "",
        f"{datetime.date.today()}, {describe_machine()}, {device.type}"
        f"{f' ({dev_name})' if dev_name != device.type else ''}{settings}, {args.threads} thread(s).",
        f"Command: `{command_line('inference_mode.py', argv)}`. "
        "Backbone + neck + head at batch 1, best of the timed iterations (interleaved across the rows); "
        "autocast rows run the same modules under `torch.autocast` to that type; "
        f"max |difference| over every head output against the training layout in {reference[1]}."
        + (" torch.compile's compile time is its first call's; inductor caches compiled kernels on disk "
           "(TORCHINDUCTOR_CACHE_DIR), and this run started with an empty cache." if args.compile else ""),
        f"Rate: the forward's {macs / 1e9:.4g} GMACs x 2 per second. One 3x3 convolution of 256 channels at "
        f"{(args.shape[0] + 3) // 4}x{(args.shape[1] + 3) // 4}, {conv_layout}, fp32, timed alone: {rate:.3g} GFLOP/s; "
        f"the whole forward at that rate would take {floor_ms:.4g} ms, {ref_ms / floor_ms:.2f}x the training layout."
        + share,
        "",
        f"| {args.model} {args.shape[0]}x{args.shape[1]} | precision | forward ms | speed-up | GFLOP/s | "
        "max abs diff |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        *rows,
    ], write=not args.no_write)


if __name__ == "__main__":
    main()
