"""The demo recipe over several seeds: segm AP and training time of each, into docs/benchmarks.md.

Each seed trains ``python train.py +experiment=demo runtime.seed=S`` in its own run directory (the
synthetic data are shared and generated once) and is scored by the run's own final evaluation.

Usage: ``python benchmarks/demo_seeds.py [--seeds 0 1 2] [--out outputs/demo_seeds] [--no-write] [-- OVERRIDES]``
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Before anything imports torch (as in train.py): torch >= 2.5 imports installed device backends at `import torch`,
# and a torch_npu that cannot load CANN's libraries would end the benchmark there, on the CPU too. A set value wins.
os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

from common import describe_machine, publish  # noqa: E402

HEADING = "## Demo over seeds"


def run_seed(seed: int, out: Path, overrides: list[str]) -> dict:
    run_dir = out / f"seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "train.py", "+experiment=demo", f"runtime.seed={seed}", f"run_dir={run_dir}",
           "train.vis_images=0", *overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"seed {seed} failed (exit {proc.returncode})")
    summary = json.loads((ROOT / run_dir / "summary.json").read_text())
    last: dict[str, float] = {}  # the final evaluation's values, from the run's metrics.csv
    with open(ROOT / run_dir / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row["name"].startswith("val/segm_"):
                last[row["name"][len("val/segm_"):]] = float(row["value"])
    load = os.getloadavg()[0]
    print(f"seed {seed}: segm AP {summary['segm_ap']:.3f}, {summary['duration_sec']:.0f} s, load {load:.1f}",
          flush=True)
    return {"seed": seed, "summary": summary, "segm": last, "wall": wall, "load": load}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="outputs/demo_seeds")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides (after --)")
    args = parser.parse_args(argv)
    rows = [run_seed(seed, Path(args.out), args.overrides) for seed in args.seeds]
    aps = [r["summary"]["segm_ap"] for r in rows]
    lines = [
        HEADING, "",
        f"{datetime.date.today()}, {describe_machine()}.",
        f"Command: `python benchmarks/demo_seeds.py --seeds {' '.join(map(str, args.seeds))}"
        + (f" -- {' '.join(args.overrides)}" if args.overrides else "") + "` (train.py +experiment=demo "
        "runtime.seed=S per seed; training time is the run's own duration, evaluation included; load "
        "average of the machine when the run ended).", "",
        "| seed | segm AP | AP50 | AP75 | iterations | training + eval (s) | images/s | load |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        s = r["summary"]
        segm = r["segm"]
        lines.append(f"| {r['seed']} | {s['segm_ap']:.3f} | {segm.get('AP50', float('nan')):.3f} | "
                     f"{segm.get('AP75', float('nan')):.3f} | {s['iterations']} | {s['duration_sec']:.0f} | "
                     f"{s['fps']:.1f} | {r['load']:.1f} |")
    lines += ["", f"Lowest segm AP {min(aps):.3f}, highest {max(aps):.3f}."]
    publish(HEADING, lines, write=not args.no_write)


if __name__ == "__main__":
    main()
