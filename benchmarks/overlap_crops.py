"""How often does a random crop show something other than the image's label? R1's argmax on training crops.

For a finished run trained with ``--augment crop`` (random resized crops, 8-100% of the area), draw one crop of
each of ``--images`` training images exactly as training draws them, and count how often R1 (the model trained
on the given labels) names another class for the crop than the image's label, against the same count on the
centre view every evaluation uses. On ``fashion-mnist-rows`` (each image a row of three items) the difference
is the share of crops whose label describes a thing the crop barely shows: what per-crop refined labels
(``--labels online``) are for (the paper's Figure 4).

    .venv/bin/python benchmarks/refinery_gain.py --dataset fashion-mnist-rows --augment crop --noise "" \\
        --clean-variants soft,online --keep-runs /tmp/rows-runs ...
    .venv/bin/python benchmarks/overlap_crops.py /tmp/rows-runs/clean-online --out crops.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from benchmeta import run_metadata
from labelrefinery import load_classifier
from labelrefinery.augment import make_augment
from labelrefinery.protocol import load_run_dataset
from labelrefinery.rundir import RunDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--images", type=int, default=5000, help="training images, one crop each")
    parser.add_argument("--seed", type=int, default=0, help="the run seed whose R1 is used")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cfg = RunDir(args.run_dir).read_config()
    if cfg.data.augment != "crop":
        sys.exit(f"{args.run_dir} trained with --augment {cfg.data.augment}; this measures --augment crop runs")
    ds = load_run_dataset(cfg)
    clf = load_classifier(args.run_dir, generation=1, seed=args.seed)
    g = torch.Generator().manual_seed(1234)
    pick = torch.randperm(len(ds.train), generator=g)[: args.images]
    images, labels = ds.train.images[pick].float().div(255), ds.train.labels[pick]
    crop = make_augment("crop", ds.hflip_keeps_class, ds.image_shape[1])
    with torch.no_grad():
        crops = torch.cat([crop(images[i:i + 500], g) for i in range(0, len(images), 500)])
        on_crops = torch.cat([clf.model((crops[i:i + 500] - clf.mean) / clf.std).argmax(1)
                              for i in range(0, len(crops), 500)])
        on_centre = clf.predict_proba(images).argmax(1)
    result = {"meta": run_metadata(), "run_dir": str(args.run_dir), "dataset": cfg.data.dataset, "images": len(pick),
              "crop_argmax_differs_from_label": float((on_crops != labels).float().mean()),
              "centre_argmax_differs_from_label": float((on_centre != labels).float().mean())}
    print(json.dumps({k: v for k, v in result.items() if k != "meta"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
