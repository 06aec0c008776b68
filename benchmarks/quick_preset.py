"""The quick preset end to end against one epoch of the conventional pipeline, measured in the same run.

First one epoch of the conventional pipeline (torchvision ``Dataset`` + per-sample
``RandomAffine`` + ``DataLoader(num_workers=2)``) trains the preset's model on the 60,000
Fashion-MNIST training images at the given precision; then ``refinery run --preset quick``
runs in a subprocess (the user's command, start-up included) and its wall time is divided
by that epoch's. Reported: both times, the ratio (target: at most 3), test top-1 per
generation and each generation's phase times (fit, recalibration, relabelling, evaluation)
from its ``summary.json``.

    .venv/bin/python benchmarks/quick_preset.py --out benchmarks/results/quick-preset-native.json
    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/quick_preset.py --precision fp32 --out FILE

Extra arguments after ``--`` go to ``refinery run`` (e.g. ``-- --batch-size 128``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from benchmeta import run_metadata  # noqa: E402
from quick_frontier import conventional_epoch_time  # noqa: E402

from labelrefinery.batch import Pipeline  # noqa: E402
from labelrefinery.data import load_dataset  # noqa: E402
from labelrefinery.device import cpu_features, precision_name, resolve_precision, set_threads  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the conventional pipeline")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("run_args", nargs="*", help="extra arguments for `refinery run` (after --)")
    args = parser.parse_args()
    set_threads(0)
    cpu = torch.device("cpu")
    amp = resolve_precision(args.precision, cpu)
    ds = load_dataset("fashion-mnist")
    pipe = Pipeline.create(cpu, ds.mean, ds.std, amp)
    facts = {"cpu_features": cpu_features(), "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
             "precision": precision_name(amp), "threads": torch.get_num_threads(),
             "torch": torch.__version__, "run_args": args.run_args}
    print(json.dumps(facts), flush=True)
    meta = run_metadata()
    conv = conventional_epoch_time(ds, pipe, args.workers)
    print(f"conventional pipeline, one epoch of 60,000 images: {conv:.1f} s", flush=True)
    refinery = Path(sys.executable).with_name("refinery")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(refinery), "run", "--preset", "quick", "--precision", args.precision, "--runs-dir", tmp,
               "--name", "quick", "--no-progress", *args.run_args]
        print(" ".join(cmd), flush=True)
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - start
        results = json.loads((Path(tmp) / "quick" / "results.json").read_text())
    gens = results["per_seed"]["0"]
    out = {"meta": meta, **facts, "conventional_epoch_s": conv, "quick_preset_wall_s": wall,
           "quick_over_conventional_epoch": wall / conv,
           "test_top1": [g["test_top1"] for g in gens], "phase_time_s": [g.get("phase_time_s") for g in gens]}
    print(f"quick preset: {wall:.0f} s = {wall / conv:.2f} conventional epochs; test top-1 "
          + ", ".join(f"R{i + 1} {t:.2f}" for i, t in enumerate(out["test_top1"])), flush=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
