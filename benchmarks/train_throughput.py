"""Training-step throughput (images/s) and peak memory of SOLOv2, fp32 and AMP, on this machine.

Each (model, precision) case runs in its own process so that the peak memory (process max RSS on a
CPU, the allocator's peak on NPU/CUDA) belongs to that case alone. A case builds the model from its
Hydra config, makes a random batch of the contract's shape (images plus a few box-shaped instances)
and times ``steps`` SGD steps (forward, backward, clip, step) after ``warmup`` untimed ones.
The results replace the "## Training throughput" section of docs/benchmarks.md ("## Training throughput (cuda)"
and the like for an accelerator, whose rows name it).

    python benchmarks/train_throughput.py                     # R50 800x1333 and light R50 448x768
    python benchmarks/train_throughput.py --steps 3 --threads 2 --no-write
    python benchmarks/train_throughput.py --positives --cases light_r18_672 r50 --batch 2 --instances 8 --threads 1

``--positives`` times the same step with positive slots sized to the batch (the default) and with 512
fixed slots, interleaved in one process (learning rate 0, so both see the same weights), and checks that
the losses are identical; it writes the "## Training throughput: positive slots" section.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Before anything imports torch (as in train.py): torch >= 2.5 imports installed device backends at `import torch`,
# and a torch_npu that cannot load CANN's libraries would end the benchmark there, on the CPU too. A set value wins.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

from common import command_line, cuda_settings, describe_machine, device_name, fp32_label, write_section  # noqa: E402

CASES = {  # name -> (model config, canvas H, W, label)
    "r50": ("solov2_r50", 800, 1344, "R50-FPN", "800x1333 (padded 800x1344)"),
    "light_r50": ("solov2_light_r50", 448, 768, "light R50-FPN", "448x768"),
    "light_r18": ("solov2_light_r18", 448, 768, "light R18-FPN", "448x768"),
    "light_r18_672": ("solov2_light_r18", 448, 672, "light R18-FPN", "448x672"),
}
SECTION = "## Training throughput"
POSITIVES_SECTION = "## Training throughput: positive slots"


def make_batch(batch: int, height: int, width: int, num_classes: int, instances: int = 4) -> dict:
    import torch

    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(batch, instances, height, width, dtype=torch.uint8)
    boxes = torch.zeros(batch, instances, 4)
    for b in range(batch):
        for i in range(instances):
            h = int(torch.randint(height // 8, height // 2, (1,), generator=g))
            w = int(torch.randint(width // 8, width // 2, (1,), generator=g))
            y = int(torch.randint(0, height - h, (1,), generator=g))
            x = int(torch.randint(0, width - w, (1,), generator=g))
            masks[b, i, y:y + h, x:x + w] = 1
            boxes[b, i] = torch.tensor([x, y, x + w, y + h], dtype=torch.float32)
    metas = [{"image_id": b, "file_name": f"{b}.jpg", "ori_shape": (height, width), "img_shape": (height, width),
              "pad": (0, 0), "canvas": (height, width), "scale_factor": (1.0, 1.0), "flip": False}
             for b in range(batch)]
    return {"images": torch.randn(batch, 3, height, width, generator=g), "gt_masks": masks,
            "gt_labels": torch.randint(0, num_classes, (batch, instances), generator=g), "gt_boxes": boxes,
            "gt_valid": torch.ones(batch, instances, dtype=torch.bool), "metas": metas}


def run_case(case: str, amp: bool, batch: int, warmup: int, steps: int, device: str) -> dict:
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from solo_npu.config import register_configs
    from solo_npu.engine.trainer import Trainer
    from solo_npu.models import build_model
    from solo_npu.runtime import make_grad_scaler, memory_stats, reset_peak_memory, resolve_device, synchronize

    model_name, height, width, _, _ = CASES[case]
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model_name}"])
    info = resolve_device(device)
    model = build_model(OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))).to(info.device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    scaler = make_grad_scaler(info, amp, "dynamic", "fp16")
    trainer = Trainer(model, optimizer, [], info, max_epochs=1, iters_per_epoch=1, scaler=scaler, amp=amp,
                      amp_dtype="fp16", grad_clip=35.0, batch_size=batch)
    # on the device before timing, as run_positives does: run_step's move_batch is then a no-op, and the timed steps
    # do not copy the batch from host memory each time
    data = {k: (v.to(info.device) if isinstance(v, torch.Tensor) else v)
            for k, v in make_batch(batch, height, width, int(cfg.data.num_classes)).items()}
    model.train()
    reset_peak_memory(info)
    for _ in range(warmup):
        trainer.run_step(data)
    synchronize(info)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.run_step(data)
        synchronize(info)
        times.append(time.perf_counter() - t0)
    mem = memory_stats(info)
    return {"case": case, "amp": amp, "device": info.type, "device_name": device_name(info), "batch": batch,
            "step_s": sorted(times)[len(times) // 2], "images_per_s": batch / sorted(times)[len(times) // 2],
            "peak_mb": mem["peak_mb"], "loss": trainer.last.get("loss"), "fp32": fp32_label(info),
            "settings": cuda_settings(info)}


def run_positives(case: str, batch: int, instances: int, warmup: int, steps: int, device: str = "cpu") -> dict:
    """Median step time with slots sized to the batch and with 512 fixed slots (alternating steps), fp32."""
    import torch
    from omegaconf import OmegaConf

    from solo_npu.engine.trainer import Trainer
    from solo_npu.models import build_model
    from solo_npu.runtime import resolve_device, synchronize

    model_name, height, width, _, _ = CASES[case]
    cfg = OmegaConf.load(ROOT / "conf" / "model" / f"{model_name}.yaml")
    cfg.num_classes = 80
    info = resolve_device(device)
    model = build_model(cfg).to(info.device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    trainer = Trainer(model, optimizer, [], info, max_epochs=1, iters_per_epoch=1, grad_clip=35.0, batch_size=batch)
    data = {k: (v.to(info.device) if isinstance(v, torch.Tensor) else v)
            for k, v in make_batch(batch, height, width, 80, instances).items()}
    model.train()
    times: dict[str, list[float]] = {"sized": [], "fixed": []}
    losses: dict[str, list[tuple]] = {"sized": [], "fixed": []}
    for i in range(warmup + steps):
        for key, slots in (("fixed", 512), ("sized", None)):
            model.pos_slots = slots
            synchronize(info)
            t0 = time.perf_counter()
            trainer.run_step(data)
            synchronize(info)
            if i >= warmup:
                times[key].append(time.perf_counter() - t0)
            losses[key].append((trainer.last["loss_cls"], trainer.last["loss_mask"]))
    with torch.no_grad():
        from solo_npu.models.solov2.targets import build_solov2_targets, positive_slots

        t = build_solov2_targets(data["gt_masks"], data["gt_labels"], data["gt_boxes"], data["gt_valid"],
                                 model.mask_head.num_grids, model.scale_ranges, model.pos_scale, 4, model.max_pos)
        most = int(t.pos_weights.sum(1).max())
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {"case": case, "device": info.type, "device_name": device_name(info), "fp32": fp32_label(info),
            "settings": cuda_settings(info), "batch": batch, "instances": instances, "positives": most,
            "slots": positive_slots(most, model.max_pos), "fixed_s": med["fixed"], "sized_s": med["sized"],
            "speedup": med["fixed"] / med["sized"], "identical": losses["sized"] == losses["fixed"],
            "loss": losses["sized"][-1]}


def _device(row: dict) -> str:
    """``cuda (NVIDIA H200)``, ``cpu``."""
    return row["device"] if row["device_name"] == row["device"] else f"{row['device']} ({row['device_name']})"


def run_child(cmd: list[str], what: str) -> dict:
    """Run one case in its own process (its own peak memory) and return the json it prints."""
    out = subprocess.run(cmd, capture_output=True, text=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not line:
        print(out.stdout[-2000:], out.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"{what} failed")
    row = json.loads(line[0][7:])
    print(row, flush=True)
    return row


def positives_main(args, argv: list[str]) -> None:
    import torch

    rows = []
    for case in args.cases:
        cmd = [sys.executable, __file__, "--one-positives", case, "--batch", str(args.batch[0]), "--instances",
               str(args.instances), "--warmup", str(args.warmup), "--steps", str(args.steps), "--threads",
               str(args.threads), "--device", args.device]
        rows.append(run_child(cmd, f"case {case}"))
    threads = args.threads or torch.get_num_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    device = rows[0]["device"]
    section = POSITIVES_SECTION if device == "cpu" else f"{POSITIVES_SECTION} ({device})"
    settings = f" ({rows[0]['settings']})" if rows[0]["settings"] else ""
    lines = [section, "",
             f"Measured {datetime.date.today().isoformat()} by `{command_line('train_throughput.py', argv)}` on "
             f"{describe_machine()}, device {_device(rows[0])}{settings}, {threads} torch threads, "
             f"load average {load:.1f} at the end.",
             f"One training step (forward, losses, backward, clip, SGD with learning rate 0 so that every step sees "
             f"the same weights) on a random batch of {args.batch[0]} images with {args.instances} box-shaped "
             f"instances each, {rows[0]['fp32']}. `fixed 512`: 512 positive slots per image (the former `max_pos`); "
             "`sized`: the smallest of 64, 128, 256, 512, 1024 that holds the batch's positives. Steps alternate "
             f"between the two in one process; median of {args.steps} each after {args.warmup} warm-up rounds. "
             "`identical`: loss_cls and loss_mask equal bit for bit at every step. `per 64 slots`: the step time "
             "that 64 positive slots cost, (fixed - sized) / (512 - slots) x 64; `limit`: the speed-up if the "
             "slots cost nothing at all, fixed / (sized - slots x per-slot cost): what any slot count can reach "
             "with the rest of the step (backbone, FPN, head convolutions, focal loss, backward, SGD) as it is.", "",
             "| model | input | device | positives (most per image) | slots | fixed 512 (s) | sized (s) | speed-up | "
             "identical losses | per 64 slots (ms) | limit |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        _, _, _, label, size = CASES[r["case"]]
        per_slot = (r["fixed_s"] - r["sized_s"]) / (512 - r["slots"])
        limit = r["fixed_s"] / (r["sized_s"] - r["slots"] * per_slot)
        lines.append(f"| {label} | {size} | {r['device_name']} | {r['positives']} | {r['slots']} | "
                     f"{r['fixed_s']:.2f} | {r['sized_s']:.2f} | {r['speedup']:.2f}x | "
                     f"{'yes' if r['identical'] else 'NO'} | {64e3 * per_slot:.0f} | {limit:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(section, text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["r50", "light_r50"], choices=sorted(CASES))
    parser.add_argument("--batch", type=int, nargs="+", default=[1], help="images per step (several: one row each)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-write", action="store_true", help="print only, leave docs/benchmarks.md alone")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case, print json
    parser.add_argument("--positives", action="store_true", help="sized against 512 fixed positive slots")
    parser.add_argument("--instances", type=int, default=8, help="--positives: instances per image")
    parser.add_argument("--one-positives", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.one_positives:
        device = "cpu" if args.device == "auto" else args.device
        print("RESULT " + json.dumps(run_positives(args.one_positives, args.batch[0], args.instances, args.warmup,
                                                   args.steps, device)))
        return
    if args.positives:
        positives_main(args, argv)
        return
    if args.one:
        case, amp = args.one.split(":")
        print("RESULT " + json.dumps(run_case(case, amp == "amp", args.batch[0], args.warmup, args.steps, args.device)))
        return
    cases = list(itertools.product(args.cases, args.batch, ("fp32", "amp")))
    rows: list[dict] = []
    for case, batch, amp in cases:
        cmd = [sys.executable, __file__, "--one", f"{case}:{amp}", "--batch", str(batch), "--warmup",
               str(args.warmup), "--steps", str(args.steps), "--device", args.device, "--threads",
               str(args.threads)]
        rows.append(run_child(cmd, f"case {case}:{amp} batch {batch}"))
        section, text = throughput_section(rows, len(cases), args, argv)
        if not args.no_write:  # after every case: a run stopped later keeps the cases it measured
            write_section(section, text)
    print(text)


def throughput_section(rows: list[dict], total: int, args, argv: list[str]) -> tuple[str, str]:
    """The heading and text of the throughput section for the ``rows`` measured so far of ``total`` cases."""
    import torch

    device = rows[0]["device"]
    amp_name = "bf16 autocast" if device == "cpu" else "fp16 autocast + dynamic loss scale"
    threads = args.threads or torch.get_num_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    section = SECTION if device == "cpu" else f"{SECTION} ({device})"
    settings = f" ({rows[0]['settings']})" if rows[0]["settings"] else ""
    partial = (f" Only {len(rows)} of the {total} cases were measured: the run ended before the others."
               if len(rows) < total else "")
    lines = [section, "",
             f"Measured {datetime.date.today().isoformat()} by `{command_line('train_throughput.py', argv)}` on "
             f"{describe_machine()}, device {_device(rows[0])}{settings}, {threads} torch threads, "
             f"load average {load:.1f} at the end.",
             "Random batches with 4 box-shaped instances per image, on the device before the timed steps; SGD step "
             f"with grad clip (the trainer's `run_step`); median of {args.steps} steps after {args.warmup} warm-up. "
             f"AMP = {amp_name}. Peak memory: {'process max RSS' if device == 'cpu' else 'allocator peak'}.{partial}",
             "",
             "| model | input | device | batch | precision | step (s) | images/s | peak memory (MB) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        _, _, _, label, size = CASES[r["case"]]
        lines.append(f"| {label} | {size} | {r['device_name']} | {r['batch']} | {'AMP' if r['amp'] else r['fp32']} | "
                     f"{r['step_s']:.2f} | {r['images_per_s']:.3f} | {r['peak_mb']:.0f} |")
    lines += ["", "Anchors (not measured here): SOLOv2 R50 1x training, Ascend ModelZoo SOLOV2 for PyTorch "
              "training guide: 1p GPU 8.1 images/s, 8p GPU 38.3, 8p NPU 6.2 (15.34 in a newer README), "
              "1p NPU 1.1; 8xV100 1x about 10 h (~39 images/s).", ""]
    return section, "\n".join(lines) + "\n"

if __name__ == "__main__":
    main()
