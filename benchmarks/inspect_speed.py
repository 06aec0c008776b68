"""How long `refinery inspect` takes on a finished run: the whole command, and the report alone.

Times ``refinery inspect RUN_DIR --out TMP/report.html`` as a user runs it (a fresh process: interpreter,
torch and matplotlib imports included) ``--repeats`` times, and :func:`labelrefinery.report.inspection.inspect_runs`
in this process (the report alone); prints medians, the run's size and the machine's CPU features.

    .venv/bin/python benchmarks/inspect_speed.py runs/readme-report --out benchmarks/results/inspect-speed.json

Target (issue: "a 60,000-image run in under 30 s on 2 CPU cores"). Run nothing else on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmeta import run_metadata
from labelrefinery.device import cpu_features
from labelrefinery.report.inspection import inspect_runs
from labelrefinery.rundir import RunDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    rd = RunDir(args.run_dir)
    info = rd.read_run_info()
    gens = {s: rd.finished_generations(s) for s in rd.seeds()}
    split = rd.read_split(rd.seeds()[0])
    facts = {"cpu_features": cpu_features(), "threads": torch.get_num_threads(), "torch": torch.__version__,
             "dataset": info.get("dataset", {}).get("name"), "dataset_train_images": info.get("dataset", {}).get("train"),
             "training_images_after_split": int(len(split["train_indices"])), "generations": gens}
    print(json.dumps(facts), flush=True)
    meta = run_metadata()
    refinery = Path(sys.executable).with_name("refinery")
    command, in_process = [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.html"
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run([str(refinery), "inspect", str(args.run_dir), "--out", str(out)], check=True,
                           capture_output=True)
            command.append(time.perf_counter() - start)
            _, seconds = inspect_runs([args.run_dir], out)
            in_process.append(seconds)
        size = out.stat().st_size
    result = {"meta": meta, **facts, "command_s": command, "report_s": in_process,
              "command_median_s": statistics.median(command), "report_median_s": statistics.median(in_process),
              "page_bytes": size}
    print(f"refinery inspect (whole command): median {result['command_median_s']:.1f} s of {command}; "
          f"the report alone: median {result['report_median_s']:.1f} s; page {size / 1e6:.2f} MB", flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
