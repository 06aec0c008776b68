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

On a rows dataset (``fashion-mnist-rows``, ``mnist-rows``) the script also knows what each crop shows: the share
of the visible item area (the three items' rectangles inside the crop box) that is the centre item, the left or
the right neighbour (whose classes :func:`labelrefinery.data.rows.row_neighbours` gives). For the crops that show
mostly one neighbour (over half the visible item area), it counts how often the model names the image's label,
that neighbour's class, or something else: whether the refinery can say what a crop shows, which per-crop labels
need. ``--generation`` picks the model (default R1, the refinery of R2's labels).
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
from labelrefinery.data import load_dataset
from labelrefinery.data.rows import ROWS_SEED, row_neighbours
from labelrefinery.protocol import load_run_dataset
from labelrefinery.rundir import RunDir


def what_crops_show(views: torch.Tensor, labels: torch.Tensor, neighbours: torch.Tensor, named: torch.Tensor,
                    side: int) -> dict:
    """For crops of rows images (``views``: ``(n, 5)`` boxes from ``RandomResizedCrop.draw``), the share of crops
    whose visible item area is mostly the centre item or mostly one neighbour, and for each kind how often
    ``named`` (the model's argmax on the crop) is the image's label, the neighbour's class, or another (%)."""
    item = side // 2  # items are side/2 px squares in the band [side/4, 3 side/4); neighbours are cut in half
    band, columns = (side // 4, side // 4 + item - 1), [(0, side // 4 - 1), (side // 4, side // 4 + item - 1),
                                                         (side // 4 + item, side - 1)]  # left, centre, right
    x0, y0, x1, y1 = (views[:, i].float() for i in range(4))
    rows = (y1.clamp(max=band[1]) - y0.clamp(min=band[0]) + 1).clamp_min(0)  # box rows inside the item band
    areas = torch.stack([(x1.clamp(max=b) - x0.clamp(min=a) + 1).clamp_min(0) * rows for a, b in columns], 1)
    share = areas / areas.sum(1, keepdim=True).clamp_min(1)
    out = {"crops": len(views)}
    for name, mask, other in (("mostly centre", share[:, 1] > 0.5, None),
                              ("mostly left neighbour", share[:, 0] > 0.5, neighbours[:, 0]),
                              ("mostly right neighbour", share[:, 2] > 0.5, neighbours[:, 1])):
        n = int(mask.sum())
        row = {"share_of_crops": 100 * n / len(views),
               "names_label": 100 * float((named[mask] == labels[mask]).float().mean()) if n else None}
        if other is not None and n:
            row["names_neighbour"] = 100 * float((named[mask] == other[mask]).float().mean())
            row["names_another"] = 100 - row["names_label"] - row["names_neighbour"]
        out[name] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--images", type=int, default=5000, help="training images, one crop each")
    parser.add_argument("--seed", type=int, default=0, help="the run seed whose model is used")
    parser.add_argument("--generation", type=int, default=1, help="the generation whose model names the crops")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cfg = RunDir(args.run_dir).read_config()
    if cfg.data.augment != "crop":
        sys.exit(f"{args.run_dir} trained with --augment {cfg.data.augment}; this measures --augment crop runs")
    ds = load_run_dataset(cfg)
    clf = load_classifier(args.run_dir, generation=args.generation, seed=args.seed)
    g = torch.Generator().manual_seed(1234)
    pick = torch.randperm(len(ds.train), generator=g)[: args.images]
    images, labels = ds.train.images[pick].float().div(255), ds.train.labels[pick]
    crop = make_augment("crop", ds.hflip_keeps_class, ds.image_shape[1])
    views = crop.draw(len(images), images.shape[2], images.shape[3], g)
    with torch.no_grad():
        crops = torch.cat([crop.apply(images[i:i + 500], views[i:i + 500]) for i in range(0, len(images), 500)])
        on_crops = torch.cat([clf.model((crops[i:i + 500] - clf.mean) / clf.std).argmax(1)
                              for i in range(0, len(crops), 500)])
        on_centre = clf.predict_proba(images).argmax(1)
    result = {"meta": run_metadata(), "run_dir": str(args.run_dir), "dataset": cfg.data.dataset, "images": len(pick),
              "generation": args.generation,
              "crop_argmax_differs_from_label": float((on_crops != labels).float().mean()),
              "centre_argmax_differs_from_label": float((on_centre != labels).float().mean())}
    if cfg.data.dataset.endswith("-rows"):
        base = load_dataset(cfg.data.dataset[: -len("-rows")]).train
        neighbours = base.labels[torch.from_numpy(row_neighbours(base, ROWS_SEED))][pick]  # (n, 2) classes
        result["what_crops_show"] = what_crops_show(views, labels, neighbours, on_crops, images.shape[3])
    print(json.dumps({k: v for k, v in result.items() if k != "meta"}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
