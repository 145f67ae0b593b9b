"""SOLOv2 forward (backbone + neck + head) in its training layout against its inference mode, in one run.

Inference mode (``solo_npu.models.inference.prepare_for_inference``) folds the frozen BatchNorms into the
convolutions and can switch to channels-last, where the 1x1 convolutions also run on oneDNN; the outputs of
all rows are compared too.

Usage: ``python benchmarks/inference_mode.py [--model solov2_r50] [--shape 800 1216] [--iters 3]
[--threads 1] [--compile] [--no-write]``

``--compile`` adds the inference mode of this device (channels-last on the CPU, NCHW elsewhere) under
``torch.compile`` (default inductor backend), with its compile time (the first call) in the row's name.
"""

from __future__ import annotations

import argparse
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

from common import describe_machine, publish  # noqa: E402

from solo_npu.models import build_model  # noqa: E402
from solo_npu.models.inference import prepare_for_inference  # noqa: E402
from solo_npu.runtime import resolve_device, synchronize  # noqa: E402

HEADING = "## SOLOv2 inference mode"


def _flat(out) -> list[torch.Tensor]:
    return [t.float() for group in out for t in (group if isinstance(group, (list, tuple)) else [group])]


def timed(models: dict[str, torch.nn.Module], x: torch.Tensor, iters: int, info) -> dict[str, tuple]:
    """Best time per model; iterations interleave the models so a loaded machine slows each alike."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        outs = {name: _flat(model.forward_head(x)) for name, model in models.items()}  # warm-up + outputs
        for _ in range(iters):
            for name, model in models.items():
                synchronize(info)
                start = time.perf_counter()
                model.forward_head(x)
                synchronize(info)
                times[name].append(time.perf_counter() - start)
    return {name: (min(times[name]) * 1000, outs[name]) for name in models}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="solov2_r50")
    parser.add_argument("--shape", type=int, nargs=2, default=[800, 1216])
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile of this device's inference mode")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = resolve_device(args.device)
    device = info.device
    cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{args.model}.yaml")
    cfg.num_classes = 80
    cfg.pretrained = None
    torch.manual_seed(0)
    base = build_model(cfg).eval().to(device)
    x = torch.randn(1, 3, *args.shape, device=device)
    variants = {
        "training layout (today's eager)": base,
        "BN folded": prepare_for_inference(copy.deepcopy(base)),
        "BN folded + channels-last (1x1 on oneDNN)": prepare_for_inference(copy.deepcopy(base), channels_last=True),
    }
    if args.compile:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")  # cold, as a first use
        layout = "channels-last" if info.inference_channels_last else "NCHW"
        compiled = prepare_for_inference(copy.deepcopy(base), channels_last=info.inference_channels_last)
        compiled.forward_head = torch.compile(compiled.forward_head)
        with torch.no_grad():
            synchronize(info)
            start = time.perf_counter()
            compiled.forward_head(x)
            synchronize(info)
        variants[f"BN folded + {layout} + torch.compile (compiling took "
                 f"{time.perf_counter() - start:.0f} s)"] = compiled
    results = timed(variants, x, args.iters, info)
    ref_ms, ref_out = results["training layout (today's eager)"]
    rows = []
    for name, (ms, out) in results.items():
        diff = max(float((o - r).abs().max()) for o, r in zip(out, ref_out))
        rows.append(f"| {name} | {ms:.0f} | {ref_ms / ms:.2f}x | {diff:.1e} |")
    heading = HEADING if device.type == "cpu" else f"{HEADING} ({device.type})"
    publish(heading, [
        heading, "",
        f"{datetime.date.today()}, {describe_machine()}, {device.type}, {args.threads} thread(s).",
        f"Command: `python benchmarks/inference_mode.py --model {args.model} --shape {args.shape[0]} "
        f"{args.shape[1]} --iters {args.iters} --threads {args.threads} --device {args.device}"
        f"{' --compile' if args.compile else ''}`. "
        "Backbone + neck + head at batch 1, best of the timed iterations (interleaved across the rows); "
        "max |difference| over every head "
        "output against the training layout."
        + (" torch.compile's compile time is its first call's; inductor caches compiled kernels on disk "
           "(TORCHINDUCTOR_CACHE_DIR), and this run started with an empty cache." if args.compile else ""), "",
        f"| {args.model} {args.shape[0]}x{args.shape[1]} | forward ms | speed-up | max abs diff |",
        "| --- | ---: | ---: | ---: |",
        *rows,
    ], write=not args.no_write)


if __name__ == "__main__":
    main()
