"""Does `refinery label-issues` find wrong labels in a user's folder, validation images included?

Writes ``--images`` Fashion-MNIST training images as PNG files in class folders (``train/<class>/``; the test
images, 1,000 by default, in ``val/<class>/``, which the tool uses as its test set), moves ``--moved`` of the
training files into a wrong class folder (a uniformly drawn other class), trains ``--seeds`` seeds of one
generation (``refinery run --dataset folder:DIR``), runs ``refinery label-issues RUN --seed S --all`` for each and
scores the rows against the moves: recall over every moved file, over the moved files the run trained on and over
those it held out for validation, and precision, each per seed and as mean ± std. ``--round-trip`` then writes
each seed's fixed label file (``label-issues --write-labels``), trains the same recipe and seed on it
(``--dataset csv:FILE``) and compares its test top-1 with the run on the noisy folder; it also checks that the file
lists every image once.

    .venv/bin/python benchmarks/label_issues_folder.py --out benchmarks/results/label-issues-folder.json
    .venv/bin/python benchmarks/label_issues_folder.py --noise pairflip --moved 0.2 --round-trip \
        --out benchmarks/results/label-issues-round-trip.json

Needs the Debian package ``dataset-fashion-mnist``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmeta import run_metadata
from labelrefinery.data import load_dataset


def write_folder(root: Path, images: int, test_images: int, moved: float, seed: int,
                 noise: str = "symmetric") -> set[str]:
    """The folder; returns the paths of the moved files (relative to ``root``, as ``train/<class>/<name>``)."""
    ds = load_dataset("fashion-mnist")
    rng = np.random.default_rng(seed)
    k = len(ds.classes)
    names = [c.replace("/", "-") for c in ds.classes]
    pick = rng.choice(len(ds.train), size=images, replace=False)
    wrong = set(rng.choice(images, size=int(round(moved * images)), replace=False).tolist())
    moved_files = set()
    for n, i in enumerate(pick.tolist()):
        label = int(ds.train.labels[i])
        if n in wrong:
            label = (label + (int(rng.integers(1, k)) if noise == "symmetric" else 1)) % k
        path = root / "train" / names[label] / f"img{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ds.train.images[i, 0].numpy()).save(path)
        if n in wrong:
            moved_files.add(str(path))
    for i in range(test_images):
        path = root / "val" / names[int(ds.test.labels[i])] / f"test{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ds.test.images[i, 0].numpy()).save(path)
    return moved_files


def score(rows: list[dict], moved: set[str]) -> dict:
    """Recall over all moved files, their training and validation parts, and precision of the disputed rows."""
    disputed = {r["source"] for r in rows if float(r["margin"]) < 0}
    split = {r["source"]: r["split"] for r in rows}
    out = {"checked": len(rows), "moved": len(moved), "disputed": len(disputed),
           "precision": len(disputed & moved) / max(1, len(disputed))}
    for part in ("all", "train", "val"):
        mine = {f for f in moved if part == "all" or split.get(f) == part}
        out[f"recall_{part}"] = len(mine & disputed) / max(1, len(mine))
        out[f"moved_{part}"] = len(mine)
    return out


def round_trip(refinery: str, root: Path, fixed: Path, seed: int, tmp: Path, common: list[str]) -> dict:
    """Retrain seed ``seed`` on the fixed label file; its test top-1 against the noisy run's, and the file's rows."""
    rows = list(csv.DictReader(fixed.open()))
    files = sorted(str(p.resolve()) for p in root.rglob("*.png"))
    intact = sorted(r["path"] for r in rows) == files
    name = f"fixed-{seed}"
    subprocess.run([refinery, "run", "--dataset", f"csv:{fixed}", "--seeds", f"{seed},", "--name", name, *common],
                   check=True)
    noisy = json.loads((tmp / "runs" / "r" / f"seed-{seed}" / "gen-1" / "summary.json").read_text())["test_top1"]
    clean = json.loads((tmp / "runs" / name / f"seed-{seed}" / "gen-1" / "summary.json").read_text())["test_top1"]
    changed = sum(r["label"] != Path(r["path"]).parent.name for r in rows if r["split"] == "train")
    return {"noisy_test_top1": noisy, "fixed_test_top1": clean, "gain": clean - noisy, "rows": len(rows),
            "every_file_once": intact, "labels_changed": changed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000, help="training images written (default 3000)")
    parser.add_argument("--test-images", type=int, default=1000, help="test images written (default 1000)")
    parser.add_argument("--moved", type=float, default=0.15, help="share of training files moved (default 0.15)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--noise", choices=("symmetric", "pairflip"), default="symmetric",
                        help="a moved file goes to a uniformly drawn other class, or from class k to k + 1")
    parser.add_argument("--round-trip", action="store_true", help="also retrain on each seed's fixed label file")
    parser.add_argument("--min-margin", type=float, default=0.0,
                        help="label-issues --write-labels --min-margin: change a label only where the suggested "
                        "class leads the given label by more than this (default 0)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    meta = run_metadata()
    refinery = str(Path(sys.executable).with_name("refinery"))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "folder"
        moved = write_folder(root, args.images, args.test_images, args.moved, seed=0, noise=args.noise)
        common = ["--epochs", str(args.epochs), "--generations", "1", "--no-progress", "--runs-dir",
                  str(Path(tmp) / "runs"), "--cache-dir", str(Path(tmp) / "cache")]
        subprocess.run([refinery, "run", "--dataset", f"folder:{root}", "--seeds", str(args.seeds), "--name", "r",
                        *common], check=True)
        per_seed = []
        for seed in range(args.seeds):
            csv_path, fixed = Path(tmp) / f"issues-{seed}.csv", Path(tmp) / f"fixed-{seed}.csv"
            subprocess.run([refinery, "label-issues", str(Path(tmp) / "runs" / "r"), "--seed", str(seed), "--all",
                            "--out", str(csv_path), "--write-labels", str(fixed), "--min-margin",
                            str(args.min_margin)], check=True)
            per_seed.append(score(list(csv.DictReader(csv_path.open())), moved))
            if args.round_trip:
                per_seed[-1].update(round_trip(refinery, root, fixed, seed, Path(tmp), common))
            print(json.dumps(per_seed[-1]), flush=True)
    keys = ("recall_all", "recall_train", "recall_val", "precision") + (
        ("noisy_test_top1", "fixed_test_top1", "gain") if args.round_trip else ())
    summary = {k: {"mean": statistics.mean(s[k] for s in per_seed),
                   "std": statistics.stdev(s[k] for s in per_seed) if len(per_seed) > 1 else None} for k in keys}
    result = {"meta": meta, "args": vars(args) | {"out": str(args.out)}, "per_seed": per_seed, "summary": summary,
              "wall_s": time.perf_counter() - start}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
