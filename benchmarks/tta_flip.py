"""Does test-time augmentation with horizontal flips pay? Every saved generation of a finished run, scored on the
run's test images with and without it.

For each seed and finished generation: test top-1 of the model as the run scored it (``Classifier.predict_proba``,
fp32) and of the mean of its softmax on the image and on the image mirrored left-right (flip TTA, the cheapest
test-time augmentation; airbench's evaluation uses it); and the same for the ensemble of the seed's generations
(mean softmax). Only for datasets whose class survives a flip (``hflip_keeps_class``: Fashion-MNIST, CIFAR-10
yes; digits no). Prints a Markdown table; ``--out`` writes the figures as JSON. Inference only: seconds.

    .venv/bin/refinery run --preset quick --name quick
    .venv/bin/python benchmarks/tta_flip.py runs/quick --out benchmarks/results/tta-flip.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from benchmeta import run_metadata
from labelrefinery import load_classifier
from labelrefinery.protocol import load_run_dataset
from labelrefinery.rundir import RunDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    rd = RunDir(args.run_dir)
    cfg = rd.read_config()
    ds = load_run_dataset(cfg)
    if not ds.hflip_keeps_class:
        sys.exit(f"{cfg.data.dataset}: a flip changes the class here (hflip_keeps_class is False); nothing to measure")
    size = cfg.data.test_size or len(ds.test)
    images, labels = ds.test.images[:size], ds.test.labels[:size].numpy()
    per_seed = {}
    for seed in rd.seeds():
        rows, plain_sum, tta_sum = [], 0, 0
        for g in rd.finished_generations(seed):
            clf = load_classifier(args.run_dir, generation=g, seed=seed)
            plain = clf.predict_proba(images).numpy()
            tta = (plain + clf.predict_proba(images.flip(-1)).numpy()) / 2
            plain_sum, tta_sum = plain_sum + plain, tta_sum + tta
            rows.append({"generation": g, "test_top1": 100 * float((plain.argmax(1) == labels).mean()),
                         "test_top1_flip_tta": 100 * float((tta.argmax(1) == labels).mean())})
        rows.append({"generation": "ensemble", "test_top1": 100 * float((plain_sum.argmax(1) == labels).mean()),
                     "test_top1_flip_tta": 100 * float((tta_sum.argmax(1) == labels).mean())})
        per_seed[seed] = rows
    print("| seed | generation | test top-1 | with flip TTA | gain |\n|---|---|---|---|---|")
    for seed, rows in per_seed.items():
        for r in rows:
            print(f"| {seed} | {r['generation']} | {r['test_top1']:.2f} | {r['test_top1_flip_tta']:.2f} | "
                  f"{r['test_top1_flip_tta'] - r['test_top1']:+.2f} |")
    gains = [r["test_top1_flip_tta"] - r["test_top1"] for rows in per_seed.values() for r in rows]
    print(f"median gain {np.median(gains):+.2f} over {len(gains)} models and ensembles")
    if args.out:
        args.out.write_text(json.dumps({"meta": run_metadata(), "run_dir": str(args.run_dir),
                                        "dataset": cfg.data.dataset, "test_images": int(size),
                                        "per_seed": per_seed, "median_gain": float(np.median(gains))}, indent=1) + "\n")


if __name__ == "__main__":
    main()
