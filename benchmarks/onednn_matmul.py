"""SOLOv2's dynamic convolution after the head: torch's ``@`` (MKL sgemm on the CPU) against oneDNN's matrix
product (``solo_npu.runtime.onednn.matmul_nt``), in one run on the same inputs.

Two tables: the product alone (kernels ``[K, 256]`` over R50's 200x304 mask features), with its distance
from a float64 product; and ``select_exact`` (one image, the exact candidate order of ``predict``) with
each product, on the crowded heads of ``benchmarks/solov2_forward.py`` (category logits shifted so that
exactly the given number of (cell, class) pairs pass score_thr), with whether both give the same instances.

Usage: ``python benchmarks/onednn_matmul.py [--models r50 light_r18] [--pairs 100 500 1500] [--iters 5]
[--threads 1] [--no-write]``
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from functools import partial
from pathlib import Path

# Before anything imports torch (as in train.py): torch >= 2.5 imports installed device backends at `import torch`,
# and a torch_npu that cannot load CANN's libraries would end the benchmark there, on the CPU too. A set value wins.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import describe_machine, publish  # noqa: E402
from solov2_forward import ORDER_SPECS, build, crowd, make_lively  # noqa: E402

import solo_npu.runtime.onednn as onednn  # noqa: E402
from solo_npu.models.inference import prepare_for_inference  # noqa: E402
from solo_npu.models.solov2.postprocess import flatten_predictions, select_exact  # noqa: E402
from solo_npu.runtime import resolve_device  # noqa: E402
from solo_npu.runtime.compat import has_onednn_matmul  # noqa: E402

HEADING = "## oneDNN matrix product after the head"


def interleaved(fns: dict[str, callable], iters: int) -> dict[str, tuple[float, object]]:
    """Median milliseconds and the last output of each function; iterations alternate between them."""
    out = {name: fn() for name, fn in fns.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out[name] = fn()
            times[name].append(1e3 * (time.perf_counter() - t0))
    return {name: (sorted(t)[len(t) // 2], out[name]) for name, t in times.items()}


def with_mkl(fn):
    """Run ``fn`` with ``matmul_nt`` on torch's ``@`` (as if torch had no oneDNN matrix product)."""
    def run():
        saved = onednn.has_onednn_matmul
        onednn.has_onednn_matmul = lambda: False
        try:
            return fn()
        finally:
            onednn.has_onednn_matmul = saved
    return run


def product_rows(ks: list[int], iters: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(200 * 304, 256, generator=g)  # [h * w, E], as select_exact hands them over
    rows = []
    for k in ks:
        kernels = 0.05 * torch.randn(k, 256, generator=g)
        exact = (kernels.double() @ feats.double().t())
        res = interleaved({"mkl": with_mkl(partial(onednn.matmul_nt, kernels, feats)),
                           "onednn": partial(onednn.matmul_nt, kernels, feats)}, iters)
        gflop = 2 * k * feats.numel() / 1e9
        rows.append(dict(k=k, mkl=res["mkl"][0], onednn=res["onednn"][0],
                         gflops_mkl=gflop / res["mkl"][0] * 1e3, gflops_onednn=gflop / res["onednn"][0] * 1e3,
                         err_mkl=float((res["mkl"][1].double() - exact).abs().max()),
                         err_onednn=float((res["onednn"][1].double() - exact).abs().max())))
        print(rows[-1], flush=True)
    return rows


def same_instances(a: tuple, b: tuple) -> bool:
    return (len(a[2]) == len(b[2]) and torch.equal(a[1], b[1]) and bool((a[2] - b[2]).abs().max() <= 1e-5)
            and torch.equal(a[0] > 0.5, b[0] > 0.5))


def select_rows(models: list[str], counts: list[int], iters: int) -> list[dict]:
    rows = []
    for name in models:
        cfg_name, label, shape = ORDER_SPECS[name]
        model = build(cfg_name)
        make_lively(model)
        fast = prepare_for_inference(model, channels_last=resolve_device("cpu").inference_channels_last)
        images = torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            cls_preds, kernel_preds, mask_feats = fast.forward_head(images)
            for count in counts:
                scores, kernels = flatten_predictions(crowd(cls_preds, count, fast.test_cfg.score_thr), kernel_preds)
                run = partial(select_exact, scores[0], kernels[0], mask_feats[0], fast.cell_strides, fast.test_cfg)
                res = interleaved({"mkl": with_mkl(run), "onednn": run}, iters)
                rows.append(dict(label=label, shape=shape, pairs=count, mkl=res["mkl"][0], onednn=res["onednn"][0],
                                 kept=len(res["onednn"][1][2]),
                                 same=same_instances(res["mkl"][1], res["onednn"][1])))
                print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["r50", "light_r18"], choices=sorted(ORDER_SPECS))
    parser.add_argument("--pairs", type=int, nargs="+", default=[100, 500, 1500])
    parser.add_argument("--ks", type=int, nargs="+", default=[64, 256, 500, 1000])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if not has_onednn_matmul():
        raise SystemExit("this torch has no oneDNN matrix product (torch.ops.mkldnn._linear_pointwise)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the models' random initialisation, so every run sees the same heads
    products = product_rows(args.ks, args.iters)
    selects = select_rows(args.models, args.pairs, args.iters)
    command = (f"python benchmarks/onednn_matmul.py --models {' '.join(args.models)} --pairs "
               f"{' '.join(map(str, args.pairs))} --ks {' '.join(map(str, args.ks))} --iters {args.iters} "
               f"--threads {args.threads}")
    load = os.getloadavg()[0]
    lines = [HEADING, "",
             f"Measured {datetime.date.today()} by `{command}` on {describe_machine()}, "
             f"{args.threads} torch thread(s), cpu, load average {load:.1f} at the end. Median of {args.iters} "
             "runs after one warm-up, the two products alternating. MKL: torch's `@`; oneDNN: "
             "`torch.ops.mkldnn._linear_pointwise`, which eager CPU inference now uses (`matmul_nt`).", "",
             "The product alone: kernels [K, 256] over 200x304 mask features (R50 at 800x1216); error: largest "
             "|difference| from a float64 product.", "",
             "| K | MKL (ms) | oneDNN (ms) | speed-up | MKL GFLOP/s | oneDNN GFLOP/s | MKL error | oneDNN error |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['k']} | {r['mkl']:.0f} | {r['onednn']:.0f} | {r['mkl'] / r['onednn']:.2f}x | "
              f"{r['gflops_mkl']:.0f} | {r['gflops_onednn']:.0f} | {r['err_mkl']:.1e} | {r['err_onednn']:.1e} |"
              for r in products]
    lines += ["", "`select_exact` of one image (inference-mode head, channels-last mask features), the crowded "
              "heads of `benchmarks/solov2_forward.py`; same instances: count, labels, scores within 1e-5 and "
              "binary masks equal.", "",
              "| model | input | pairs above score_thr | MKL (ms) | oneDNN (ms) | speed-up | kept | same instances |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    lines += [f"| {r['label']} | {r['shape'][0]}x{r['shape'][1]} | {r['pairs']} | {r['mkl']:.0f} | {r['onednn']:.0f} | "
              f"{r['mkl'] / r['onednn']:.2f}x | {r['kept']} | {'yes' if r['same'] else 'NO'} |" for r in selects]
    return publish(HEADING, lines, write=not args.no_write)


if __name__ == "__main__":
    main()
