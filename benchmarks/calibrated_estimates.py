"""R1's noise estimates with and without the temperature that calibrates it on validation, from kept runs.

For every run directory given (``refinery_gain.py --keep-runs DIR`` keeps them) and each seed whose R1 recorded a
``calibration_temperature``, reads R1's stored refined labels of its training images and gives the symmetric and
class-by-class noise estimates (``labelrefinery.noise``) on the rows as stored (T = 1) and at that temperature
(what the run used), beside the true share of wrong labels where the run injected noise. Runs nothing but reads.

    .venv/bin/python benchmarks/calibrated_estimates.py /tmp/bench/runs/* \
        --out benchmarks/results/calibrated-estimates.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from benchmeta import run_metadata  # noqa: E402

from labelrefinery.noise import classwise_summary, estimate_symmetric_noise, temperature_scaled  # noqa: E402
from labelrefinery.report.labelissues import own_labels, split_labels  # noqa: E402
from labelrefinery.rundir import RunDir  # noqa: E402


def seed_estimates(rd: RunDir, seed: int) -> dict | None:
    """``{"seed", "temperature", "true_rate", "t1": {"symmetric", "classwise"}, "calibrated": {...}}`` (rates as
    fractions; ``true_rate`` None without injected noise), or None when R1 recorded no temperature."""
    summary = rd.read_summary(seed, 1)
    if "calibration_temperature" not in summary:
        return None
    indices, probs, _, _ = own_labels(rd, seed, 1)
    given, clean = split_labels(rd.read_split(seed), indices)
    given_t, rows = torch.from_numpy(np.asarray(given)), torch.from_numpy(np.asarray(probs)).float()
    out = {"seed": seed, "temperature": summary["calibration_temperature"],
           "true_rate": None if clean is None else float(np.mean(np.asarray(given) != np.asarray(clean)))}
    for name, p in [("t1", rows), ("calibrated", temperature_scaled(rows, summary["calibration_temperature"]))]:
        out[name] = {"symmetric": estimate_symmetric_noise(given_t, p),
                     "classwise": classwise_summary(given_t, p)["rate"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    results = {}
    for run in args.runs:
        rd = RunDir(run)
        seeds = [s for s in (seed_estimates(rd, seed) for seed in rd.read_config().seed_values()) if s is not None]
        results[run.name] = seeds
        for s in seeds:
            true = "" if s["true_rate"] is None else f"  true {100 * s['true_rate']:.1f}%"
            print(f"{run.name} seed {s['seed']}: T {s['temperature']:.3f}  symmetric {100 * s['t1']['symmetric']:.1f}% "
                  f"-> {100 * s['calibrated']['symmetric']:.1f}%  class by class {100 * s['t1']['classwise']:.1f}% -> "
                  f"{100 * s['calibrated']['classwise']:.1f}%{true}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"meta": run_metadata(), "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
