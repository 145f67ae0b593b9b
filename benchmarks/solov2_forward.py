"""SOLOv2 size, FLOPs and CPU/accelerator latency; writes the "## SOLOv2 forward" section of docs/benchmarks.md.

    python benchmarks/solov2_forward.py [--iters 3] [--pairs-post 100 500 1500] [--device cpu] [--models r50 light_r50]
                                        [--no-write]
    python benchmarks/solov2_forward.py --orders light_r50 [--threads 1]   # only "## SOLOv2 candidate orders" (CPU)

FLOPs are multiply-accumulates of every Conv2d / Linear counted with forward hooks (the dynamic 1x1
convolution of post-processing is not included), reported as GMACs. Latency is per image at batch 1:
"forward" is backbone + neck + head (training layout and inference mode), "post" is eager ``predict``'s work
after the head (``select_exact``, pasting the kept masks to the original size, boxes) for a given number of
(cell, class) pairs above score_thr.
"""

from __future__ import annotations

import argparse
import copy
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
from omegaconf import OmegaConf  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import command_line, cuda_settings, describe_machine, device_name, fp32_label, publish  # noqa: E402

from solo_npu.models import build_model  # noqa: E402
from solo_npu.models.inference import prepare_for_inference  # noqa: E402
from solo_npu.models.solov2.paste import masks_to_boxes, paste_masks  # noqa: E402
from solo_npu.models.solov2.postprocess import (  # noqa: E402
    flatten_predictions,
    select_exact,
    select_reference,
    select_static,
)
from solo_npu.runtime import prefers_few_shapes, resolve_device, synchronize  # noqa: E402

HEADING = "## SOLOv2 forward"
ORDERS_HEADING = "## SOLOv2 candidate orders"
SPECS = {  # name -> model config, label, FLOPs input and its label, latency canvas, resized image on it, original
    "r50": ("solov2_r50", "R50-FPN", (800, 1344), "800x1333 (padded 800x1344)", (800, 1216), (800, 1067), (480, 640)),
    "light_r50": ("solov2_light_r50", "light R50-FPN", (448, 768), "448x768", (448, 608), (448, 597), (480, 640)),
}
ORDER_SPECS = {  # name -> (model config, label, canvas)
    "r50": ("solov2_r50", "R50-FPN", (800, 1216)),
    "light_r50": ("solov2_light_r50", "light R50-FPN", (448, 608)),
    "light_r18": ("solov2_light_r18", "light R18-FPN", (448, 608)),
}


def build(name: str, num_classes: int = 80) -> nn.Module:
    cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml")
    cfg.num_classes = num_classes
    return build_model(cfg).eval()


def count_macs(model: nn.Module, shape: tuple[int, int], device: torch.device | str = "cpu") -> int:
    """Conv2d / Linear multiply-accumulates of ``model.forward_head`` on one image of ``shape``."""
    total = 0

    def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            total += output.numel() * (mod.in_channels // mod.groups) * kh * kw
        elif isinstance(mod, nn.Linear):
            total += output.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.forward_head(torch.zeros(1, 3, *shape, device=device))
    finally:
        for h in handles:
            h.remove()
    return total


def make_lively(model: nn.Module) -> None:
    """Classifier scores around 0.5 and non-trivial masks, so post-processing does its full work."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.mask_head.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0, 0.05, generator=g)
        model.mask_head.conv_cls.bias.zero_()


def _paste_and_boxes(masks: torch.Tensor, meta: dict, mask_thr: float) -> torch.Tensor:
    return masks_to_boxes(paste_masks(masks, meta, mask_thr))


def time_model(model: nn.Module, shape: tuple[int, int], img_shape: tuple[int, int], ori: tuple[int, int],
               pair_counts: list[int], iters: int, info) -> list[dict]:
    """Median milliseconds per image: forward in the training layout and in inference mode, then per number
    of pairs above score_thr the eager post-processing (``select_exact`` + paste + boxes) and the export
    graph's selection."""
    model = model.to(info.device)
    fast = prepare_for_inference(copy.deepcopy(model), channels_last=info.inference_channels_last)
    images = torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(0)).to(info.device)
    meta = {"ori_shape": ori, "img_shape": img_shape, "pad": (0, 0), "canvas": shape}
    cfg = model.test_cfg

    def timed(fn):  # milliseconds
        seconds, out = _median(fn, iters, info)
        return 1e3 * seconds, out

    rows = []
    with torch.no_grad():
        t_train, _ = timed(lambda: model.forward_head(images))
        t_fast, (cls_preds, kernel_preds, mask_feats) = timed(lambda: fast.forward_head(images))
        for count in pair_counts:
            scores, kernels = flatten_predictions(crowd(cls_preds, count, cfg.score_thr), kernel_preds)
            t_exact, (masks, _, kept, _) = timed(partial(select_exact, scores[0], kernels[0], mask_feats[0],
                                                         fast.cell_strides, cfg))
            t_paste, _ = timed(partial(_paste_and_boxes, masks, meta, cfg.mask_thr))
            t_static, _ = timed(partial(select_static, scores, kernels, mask_feats, fast.cell_strides, cfg))
            rows.append(dict(forward_train=t_train, forward=t_fast, pairs=count, exact=t_exact, kept=len(kept),
                             paste=t_paste, static=t_static))
    return rows


def crowd(cls_preds: list[torch.Tensor], num_above: int, thr: float) -> list[torch.Tensor]:
    """Shift the category logits so that exactly ``num_above`` pairs pass ``thr`` after points NMS (a
    monotone shift: the same local maxima and the same order, as a head earlier or later in training)."""
    keep = flatten_predictions(cls_preds, cls_preds)[0] > 0  # points NMS keeps these for any shift
    logits = torch.cat([p.float().flatten(2) for p in cls_preds], dim=2).transpose(1, 2)[keep]
    top = logits.topk(num_above + 1).values
    shift = torch.logit(torch.tensor(thr)) - 0.5 * (top[-2] + top[-1])
    return [p + shift for p in cls_preds]


def _median(fn, iters: int, info=None) -> tuple[float, object]:
    """Median seconds of ``iters`` calls after one warm-up (synchronising ``info``'s device around each), and
    the last result."""
    out, times = None, []
    for i in range(iters + 1):
        if info is not None:
            synchronize(info)
        t0 = time.perf_counter()
        out = fn()
        if info is not None:
            synchronize(info)
        if i:  # the first run warms up
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], out


def _bounded(scores, kernels, mask_feats, cell_strides, cfg, n_pre: int) -> tuple[torch.Tensor, ...]:
    """The former eager default: the top ``n_pre`` pairs by category score alone."""
    m, lab, sc = select_static(scores, kernels, mask_feats, cell_strides, cfg, nms_pre=n_pre, pre_budget=n_pre,
                               by_class=True)
    keep = sc[0] > 0
    return m[0][keep], lab[0][keep], sc[0][keep]


def _found(out: tuple, ref: tuple) -> int:
    """How many of ``ref``'s instances (label, score within 1e-5) ``out`` holds."""
    pairs = list(zip(out[1].tolist(), out[2].tolist()))
    return sum(any(lab == rl and abs(sc - rs) < 1e-5 for lab, sc in pairs) for rl, rs in zip(ref[1].tolist(),
                                                                                              ref[2].tolist()))


def time_orders(name: str, counts: list[int], iters: int, reference_max: int) -> list[dict]:
    """Per number of pairs above score_thr: seconds of the bounded order (top nms_pre by category score,
    the former eager default), the exact order and mmdet's order, and how their instances compare. On the CPU,
    whatever --device says (the model stays there)."""
    cfg_name, label, shape = ORDER_SPECS[name]
    model = build(cfg_name)
    make_lively(model)
    cfg = model.test_cfg
    images = torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cls_preds, kernel_preds, mask_feats = model.forward_head(images)
    rows = []
    for count in counts:
        scores, kernels = flatten_predictions(crowd(cls_preds, count, cfg.score_thr), kernel_preds)
        assert int((scores > cfg.score_thr).sum()) == count
        # The pairs the exact order's first chunk convolves on this device (padded to 64 where the device
        # prefers a few shapes), so both orders start from the same work.
        unit = 64 if prefers_few_shapes(mask_feats.device) else 1
        n_pre = min(cfg.nms_pre, unit * ((count + unit - 1) // unit))
        args = (scores[0], kernels[0], mask_feats[0], model.cell_strides, cfg)
        with torch.no_grad():
            t_bounded, b_out = _median(partial(_bounded, scores, kernels, mask_feats, model.cell_strides, cfg, n_pre),
                                       iters)
            t_exact, e_out = _median(partial(select_exact, *args), iters)
            t_ref, r_out = float("nan"), None
            if count <= reference_max:
                t_ref, r_out = _median(partial(select_reference, *args), iters)
        row = dict(label=label, shape=shape, count=count, bounded=t_bounded, exact=t_exact, reference=t_ref,
                   same="not run", found="not run")
        if r_out is not None:
            same = (len(e_out[2]) == len(r_out[2]) and torch.equal(e_out[1], r_out[1])
                    and bool((e_out[2] - r_out[2]).abs().max() <= 1e-5) and torch.equal(e_out[0] > 0.5, r_out[0] > 0.5))
            row.update(same="yes" if same else "NO", found=f"{_found(b_out, r_out)}/{len(r_out[2])}")
        rows.append(row)
        print({k: v for k, v in row.items()}, flush=True)
    return rows


def orders_section(rows: list[dict], command: str) -> list[str]:
    date = datetime.date.today().isoformat()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [ORDERS_HEADING, "",
             f"Measured {date} by `{command}` on {describe_machine()}, {torch.get_num_threads()} torch threads, "
             f"device cpu (time_orders keeps the model there), load average {load:.1f} at the end.",
             "One image, fp32, median of the timed runs after one warm-up; the time after the head (selection, "
             "dynamic conv, Matrix NMS by class, top 100), without pasting. The head's category logits are "
             "shifted so that exactly the given number of (cell, class) pairs pass score_thr 0.1. Bounded: the "
             "top min(nms_pre, pairs) by category score alone (the eager default before the exact order; on an "
             "accelerator min(nms_pre, pairs rounded up to 64)), run as `select_static` runs it (the batched "
             "product of torch's `@`, as an exported graph multiplies; on the CPU exact and reference multiply "
             "on oneDNN, see \"oneDNN matrix product after the head\"). "
             "Exact: `select_exact` (candidates in descending category score, chunks of 256 after the first 500 "
             "(unpadded on the CPU; multiples of 64 on an accelerator), "
             "stopping when the next category score is below the 500th final score). Reference: mmdet's order "
             "(`select_reference`, every pair through the dynamic conv). `exact = reference` compares count, "
             "labels, scores (1e-5) and binary masks; `bounded found` is how many of the reference's instances "
             "(label and score) the bounded order returns.", "",
             "| model | input | pairs above score_thr | bounded (ms) | exact (ms) | reference (ms) | exact / bounded "
             "| exact = reference | bounded found |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['shape'][0]}x{r['shape'][1]} | {r['count']} | {1e3 * r['bounded']:.0f} | "
                     f"{1e3 * r['exact']:.0f} | {1e3 * r['reference']:.0f} | {r['exact'] / r['bounded']:.2f} | "
                     f"{r['same']} | {r['found']} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per model (after one warm-up)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 gives stable numbers on a busy machine")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--models", nargs="+", default=list(SPECS), choices=list(SPECS),
                        help="models of the main section")
    parser.add_argument("--orders", nargs="+", choices=sorted(ORDER_SPECS),
                        help="only the candidate-order section, for these models (timed on the CPU)")
    parser.add_argument("--pairs", type=int, nargs="+", default=[100, 500, 1500, 5000],
                        help="pairs above score_thr for --orders")
    parser.add_argument("--pairs-post", type=int, nargs="+", default=[100, 500, 1500],
                        help="pairs above score_thr for the post-processing rows of the main section")
    parser.add_argument("--reference-max", type=int, default=5000,
                        help="--orders: run mmdet's order only up to this many pairs")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    info = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.orders:
        rows = [r for name in args.orders for r in time_orders(name, args.pairs, args.iters, args.reference_max)]
        return publish(ORDERS_HEADING, orders_section(rows, command_line("solov2_forward.py", argv)),
                       write=not args.no_write)

    rows = []
    for name, label, flops_shape, flops_label, lat_shape, img_shape, ori in (SPECS[m] for m in args.models):
        model = build(name)
        params = sum(p.numel() for p in model.parameters())
        macs = count_macs(model, flops_shape)
        make_lively(model)
        for r in time_model(model, lat_shape, img_shape, ori, args.pairs_post, args.iters, info):
            rows.append(dict(label=label, params=params / 1e6, flops_label=flops_label, gmacs=macs / 1e9,
                             lat=f"{lat_shape[0]}x{lat_shape[1]}", **r))
            print(rows[-1], flush=True)

    date = datetime.date.today().isoformat()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    dev_name = device_name(info)
    settings = f" ({cuda_settings(info)})" if cuda_settings(info) else ""
    machine = (f"{describe_machine()}, {torch.get_num_threads()} torch threads, device {info.device}"
               f"{f' ({dev_name})' if dev_name != info.type else ''}{settings}, load average {load:.1f} at the end")
    command = command_line("solov2_forward.py", argv)
    layout = "channels-last" if info.inference_channels_last else "NCHW"
    heading = HEADING if info.type == "cpu" else f"{HEADING} ({info.type})"
    lines = [heading, "", f"Measured {date} by `{command}` on {machine}.",
             f"Batch 1, {fp32_label(info)}, median of the timed iterations after one warm-up. GMACs: Conv2d/Linear "
             "multiply-accumulates of backbone + neck + head. Forward: backbone + neck + head in the training layout, "
             f"and in the inference mode that checkpoint evaluation runs on this device (BN folded, {layout}). "
             "Post-processing is eager `predict`'s, after the head: `select_exact` (the reference order's "
             "instances: candidates by category score, dynamic conv, maskness, Matrix NMS by class, top 100) plus "
             "pasting the kept masks to a 480x640 original (`paste_masks`) and their boxes. The head's category "
             "logits are shifted so that exactly the given number of (cell, class) pairs pass score_thr 0.1 "
             "(head weights drawn so that masks are not empty). Export: `select_static` as the exported graph runs "
             "it (pre_budget 1000 pairs through the dynamic conv, Matrix NMS over the whole candidate matrix), "
             "whatever the number of pairs. Share: post-processing / inference-mode forward.", "",
             "| model | params (M) | FLOPs input | GMACs | latency input | forward, training layout (ms) | "
             "forward, inference mode (ms) | pairs above score_thr | select_exact (ms) | kept | paste + boxes (ms) "
             "| post-processing share | export selection (ms) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        post = r["exact"] + r["paste"]
        lines.append(f"| {r['label']} | {r['params']:.1f} | {r['flops_label']} | {r['gmacs']:.1f} | {r['lat']} | "
                     f"{r['forward_train']:.0f} | {r['forward']:.0f} | {r['pairs']} | {r['exact']:.0f} | "
                     f"{r['kept']} | {r['paste']:.0f} | {100 * post / r['forward']:.1f}% | {r['static']:.0f} |")
    lines += ["", "The dynamic conv is E x HW/16 multiply-accumulates per convolved pair (256 x 200 x 304 = 15.6 M "
              "for R50 at 800x1216, so 8 G for 512 pairs, about 3% of the forward's MACs), and the exact order "
              "must convolve at least min(pairs, nms_pre) pairs, as mmdet's does: the post-processing share "
              "grows with the pairs above score_thr, not with the image.", ""]
    return publish(heading, lines, write=not args.no_write)


if __name__ == "__main__":
    main()
