"""Compile a TorchScript model with torch_aie and run it over preprocessed ``.bin`` files.

Self-contained on purpose: standard library, torch, numpy and torch_aie only, Python 3.9 syntax, so it
runs in the interpreter torch_aie is installed for (torch_aie 6.3 ships for Python 3.9 and torch 2.0.1)
while the project needs a newer Python. The deploy pipeline copies this file into the run directory
(``compile/torch_aie_runner.py``) and calls it with ``deploy.torch_aie.python``; when torch_aie imports in
the pipeline's own Python the same functions run in process.

What it does follows the Ascend ModelZoo SOLOV2 torch_aie inference guide (Ascend/ModelZoo-PyTorch,
``AscendIE/TorchAIE/built-in/cv/segmentation/SOLOV2``):

- compile (``solov2_export_torch_aie_ts.py``, ``export_torch_aie``): ``torch.jit.load``, ``torch_aie.set_device``,
  ``torch_aie.compile(ts, inputs=[torch_aie.Input((B, 3, H, W))], allow_tensor_replace_int=True,
  torch_executed_ops=[], precision_policy=torch_aie.PrecisionPolicy.<FP16|FP32>, soc_version=...)``, ``.save``;
- run (``solov2_inference.py``, ``main``): the input batch is moved to ``npu:<id>`` first, then only
  ``module(batch)`` and ``stream.synchronize()`` under ``torch_aie.npu.stream(stream)`` are timed; outputs
  are written as ``<name>_<i>.bin`` per image (ais_bench's naming), ``<name>`` being the input file's stem.

Usage::

    python torch_aie_runner.py compile --ts export/model_b1.ts --out compile/model_b1_torch_aie.ts \\
        --batch-size 1 --height 800 --width 1216 --soc-version Ascend310P3 --precision-policy FP16 --device-id 0
    python torch_aie_runner.py run --module compile/model_b1_torch_aie.ts --list inputs.txt --batch-size 1 \\
        --height 800 --width 1216 --output-dir infer/torch_aie_b1 --timings timings.json --device-id 0
    python torch_aie_runner.py run ... --loop 50 --warmup 5      # latency of one batch, no outputs written

``--list`` names one input file per line. ``--timings`` receives ``{"latencies_ms": [...], "warmup": W,
"batches": N, "images": M}``; the first ``--warmup`` latencies of a file run are excluded from
``latencies_ms`` but every batch's outputs are written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch


def _torch_aie():
    import torch_aie

    return torch_aie


def compile_module(ts_path, out_path, batch_size, height, width, soc_version, precision_policy="FP16",
                   device_id=0):
    """Compile one TorchScript file for a static [batch_size, 3, height, width] input and save it."""
    torch_aie = _torch_aie()
    policy = getattr(torch_aie.PrecisionPolicy, precision_policy, None)
    if policy is None:
        raise ValueError(f"precision_policy {precision_policy!r}: use FP16 or FP32")
    torch_aie.set_device(int(device_id))
    module = torch.jit.load(ts_path, map_location="cpu").eval()  # the guide's trace is a CPU one
    compiled = torch_aie.compile(
        module,
        inputs=[torch_aie.Input((int(batch_size), 3, int(height), int(width)))],
        allow_tensor_replace_int=True,
        torch_executed_ops=[],
        precision_policy=policy,
        soc_version=soc_version,
    )
    tmp = f"{out_path}.{os.getpid()}.tmp{os.path.splitext(out_path)[1]}"
    try:  # saved beside, then renamed: a save cut short keeps the previous file
        compiled.save(tmp)
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out_path


class TimedModule:
    """A compiled module on ``npu:<device_id>``; ``__call__`` times the call plus stream synchronisation.
    ``module``: the compiled module already loaded from ``module_path`` (not loaded a second time)."""

    def __init__(self, module_path, device_id=0, module=None):
        self.torch_aie = _torch_aie()
        self.torch_aie.set_device(int(device_id))
        self.device = f"npu:{int(device_id)}"
        self.module = (torch.jit.load(module_path) if module is None else module).eval()
        self.stream = self.torch_aie.npu.Stream(self.device)

    def to_device(self, batch):
        return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)

    def __call__(self, device_batch):
        """(outputs on the device, seconds of module call + stream synchronisation)."""
        with torch.no_grad(), self.torch_aie.npu.stream(self.stream):
            start = time.perf_counter()
            outputs = self.module(device_batch)
            self.stream.synchronize()
            seconds = time.perf_counter() - start
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        return outputs, seconds


def read_batch(paths, batch_size, height, width):
    """[batch_size, 3, H, W] float32 from one file per image; a short batch repeats its last image."""
    images = []
    for path in paths:
        data = np.fromfile(path, dtype=np.float32)
        if data.size != 3 * height * width:
            raise ValueError(f"{path} holds {data.size} floats, expected 3x{height}x{width}")
        images.append(data.reshape(3, height, width))
    images += [images[-1]] * (batch_size - len(images))
    return np.stack(images)


def run_files(timed, paths, batch_size, height, width, output_dir, warmup=0):
    """Run every file, write ``<stem>_<i>.bin`` per image and output; latencies (ms) after ``warmup`` batches."""
    os.makedirs(output_dir, exist_ok=True)
    latencies = []
    for index, start in enumerate(range(0, len(paths), batch_size)):
        group = paths[start:start + batch_size]
        outputs, seconds = timed(timed.to_device(read_batch(group, batch_size, height, width)))
        if index >= warmup:
            latencies.append(1000.0 * seconds)
        host = [t.to("cpu").numpy() for t in outputs]
        for j, path in enumerate(group):
            stem = os.path.splitext(os.path.basename(path))[0]
            for i, array in enumerate(host):
                np.ascontiguousarray(array[j]).tofile(os.path.join(output_dir, f"{stem}_{i}.bin"))
    return latencies


def run_loop(timed, path, batch_size, height, width, loop, warmup):
    """Latencies (ms) of ``loop`` runs of one batch made of ``path`` after ``warmup`` untimed runs."""
    batch = timed.to_device(read_batch([path] * batch_size, batch_size, height, width))
    for _ in range(warmup):
        timed(batch)
    return [1000.0 * timed(batch)[1] for _ in range(loop)]


def main(argv=None):
    parser = argparse.ArgumentParser(description="torch_aie compile and run for the deploy pipeline")
    parser.add_argument("command", choices=["compile", "run"])
    parser.add_argument("--ts", help="compile: TorchScript file")
    parser.add_argument("--out", help="compile: where to save the compiled module")
    parser.add_argument("--module", help="run: compiled module")
    parser.add_argument("--list", help="run: text file with one input .bin per line")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--soc-version", default="Ascend310P3")
    parser.add_argument("--precision-policy", default="FP16")
    parser.add_argument("--device-id", type=int, default=0)
    parser.add_argument("--output-dir", help="run: folder for <stem>_<i>.bin")
    parser.add_argument("--timings", help="run: json file for the latencies")
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--loop", type=int, default=0, help="run: time one batch this many times instead")
    args = parser.parse_args(argv)
    if args.command == "compile":
        if not args.ts or not args.out:
            parser.error("compile needs --ts and --out")
        compile_module(args.ts, args.out, args.batch_size, args.height, args.width, args.soc_version,
                       args.precision_policy, args.device_id)
        print(f"torch_aie module saved to {args.out}")
        return 0
    if not args.module or not args.list or not (args.output_dir or args.loop):
        parser.error("run needs --module, --list and --output-dir (or --loop)")
    with open(args.list) as f:
        paths = [line.strip() for line in f if line.strip()]
    if not paths:
        parser.error(f"{args.list} lists no input files")
    timed = TimedModule(args.module, args.device_id)
    if args.loop:
        latencies = run_loop(timed, paths[0], args.batch_size, args.height, args.width, args.loop, args.warmup)
    else:
        latencies = run_files(timed, paths, args.batch_size, args.height, args.width, args.output_dir, args.warmup)
    if args.timings:
        with open(args.timings, "w") as f:
            json.dump({"latencies_ms": latencies, "warmup": args.warmup, "images": len(paths),
                       "batches": (len(paths) + args.batch_size - 1) // args.batch_size}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
