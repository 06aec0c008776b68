"""Accuracy per second of candidate quick-preset models on full Fashion-MNIST (issue: fast on ordinary CPUs).

Each candidate is a :class:`labelrefinery.models.ConvNet` variant (width, convs per stage)
trained as generation R1 of the quick preset (Adam, one-cycle lr 3e-3, batch 256,
weight decay 5e-4, no augmentation, 15% validation) for a number of epochs, optionally with
progressive resizing (``--train-scale-start``; the preset's own value is not applied), through the
library's own ``engine.fit``. Reported per candidate: multiply-adds per image, training
images/s, wall time of the generation (fit + BatchNorm recalibration + test prediction)
and test top-1. In the same run, one epoch of the conventional pipeline (torchvision
``Dataset`` + per-sample ``RandomAffine`` + ``DataLoader(num_workers=2)``) training the
default model, the reference of the quick preset's time target.

    .venv/bin/python benchmarks/quick_frontier.py --precision fp32 --out benchmarks/results/frontier-fp32.json

Set ``ONEDNN_MAX_CPU_ISA=AVX2`` to restrict oneDNN's convolution kernels to AVX2 on a
CPU that has more (an approximation of an AVX2-only machine: its clock and memory stay).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from benchmeta import run_metadata  # noqa: E402
from throughput import TorchvisionFashion, conventional_epoch, conventional_transform  # noqa: E402

from labelrefinery.batch import Pipeline  # noqa: E402
from labelrefinery.config import resolve_config  # noqa: E402
from labelrefinery.data import load_dataset  # noqa: E402
from labelrefinery.device import cpu_features, resolve_precision, set_threads  # noqa: E402
from labelrefinery.engine import FitHooks, TrainData, TrainSetup, fit  # noqa: E402
from labelrefinery.inference import predict, recalibrate_batchnorm, top1_accuracy  # noqa: E402
from labelrefinery.models import ConvNet  # noqa: E402
from labelrefinery.protocol import seed_split  # noqa: E402
from labelrefinery.targets import StoredTargets  # noqa: E402

CANDIDATES = {  # name: (width, convs per stage, stride of the first convolution)
    "convnet": (32, (1, 2, 2), 1),
    "w24": (24, (1, 2, 2), 1),
    "slim": (32, (1, 1, 1), 1),
    "slim-w48": (48, (1, 1, 1), 1),
    "mid": (32, (1, 2, 1), 1),
    "s2": (32, (1, 2, 2), 2),  # stride-2 stem in place of the first max-pool
    "s2-w40": (40, (1, 2, 2), 2),
}


def macs_per_image(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-adds of convolutions and linear layers for one image of ``shape`` (C, H, W)."""
    total = 0

    def hook(mod, _inp, out):
        nonlocal total
        if isinstance(mod, torch.nn.Conv2d):
            total += out[0].numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, torch.nn.Linear):
            total += mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return total


def train_candidate(name: str, epochs: int, ds, pipe, seed: int, batch_size: int = 256,
                    train_scale_start: float = 1.0) -> dict:
    width, stages, stem_stride = CANDIDATES[name]
    run_cfg = resolve_config("quick", {"epochs": epochs, "batch_size": batch_size,
                                       "train_scale_start": train_scale_start})
    train_idx, val_idx = seed_split(ds, run_cfg, seed)
    torch.manual_seed(seed)
    model = ConvNet(10, 1, width, stages, stem_stride).to(memory_format=torch.channels_last)
    macs = macs_per_image(model, ds.image_shape)
    images, labels = ds.train.images[train_idx], ds.train.labels[train_idx]
    epoch_times: list[float] = []
    start = time.perf_counter()
    fit(model, TrainData(images, StoredTargets(labels, num_classes=10), ds.train.images[val_idx],
                         ds.train.labels[val_idx]), TrainSetup(run_cfg.training, pipe, (seed, 1)),
        FitHooks(log=lambda r: epoch_times.append(r["epoch_time_s"])))
    recalibrate_batchnorm(model, images, pipe)
    test_top1 = top1_accuracy(predict(model, ds.test.images, pipe), ds.test.labels)
    wall = time.perf_counter() - start
    return {"candidate": name, "width": width, "stages": list(stages), "stem_stride": stem_stride, "seed": seed,
            "epochs": epochs, "batch_size": batch_size, "train_scale_start": train_scale_start,
            "epoch_times_s": epoch_times, "macs_per_image": macs,
            "train_images_per_s": len(images) * len(epoch_times) / sum(epoch_times), "wall_s": wall,
            "test_top1": test_top1}


def conventional_epoch_time(ds, pipe, workers: int) -> float:
    torch.manual_seed(0)
    model = ConvNet(10, 1).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    loader = torch.utils.data.DataLoader(
        TorchvisionFashion(ds.train.images, ds.train.labels, conventional_transform(ds.mean, ds.std, True)),
        batch_size=256, shuffle=True, num_workers=workers, drop_last=True, persistent_workers=workers > 0)
    start = time.perf_counter()
    conventional_epoch(model, opt, loader, pipe)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default="convnet:4,slim:4,slim-w48:4,mid:4,w24:4",
                        help="comma-separated NAME:EPOCHS[:BATCH[:START]] (batch default 256; START: "
                        "--train-scale-start, default 1 = full size every epoch; names: "
                        + ", ".join(CANDIDATES) + ")")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds: each candidate is trained once per seed")
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the conventional pipeline")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    set_threads(0)
    ds = load_dataset("fashion-mnist")
    cpu = torch.device("cpu")
    pipe = Pipeline.create(cpu, ds.mean, ds.std, resolve_precision(args.precision, cpu))
    facts = {"cpu_features": cpu_features(), "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
             "precision": args.precision, "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(json.dumps(facts), flush=True)
    meta = run_metadata()
    conv = conventional_epoch_time(ds, pipe, args.workers)
    print(f"conventional pipeline, one epoch of 60,000 images (convnet): {conv:.1f} s", flush=True)
    rows = []
    jobs = [(int(seed), item) for seed in args.seeds.split(",") for item in args.candidates.split(",")]
    for seed, item in jobs:
        name, epochs, *rest = item.split(":")
        row = train_candidate(name, int(epochs), ds, pipe, seed, int(rest[0]) if rest else 256,
                              float(rest[1]) if len(rest) > 1 else 1.0)
        row["wall_over_conventional_epoch"] = row["wall_s"] / conv
        rows.append(row)
        print(f"seed {seed} {name:9s} {row['macs_per_image'] / 1e6:5.1f} M MAC  {epochs} epochs  "
              f"batch {row['batch_size']}  start {row['train_scale_start']:g}  "
              f"{row['train_images_per_s']:6.0f} img/s  {row['wall_s']:6.1f} s "
              f"({row['wall_over_conventional_epoch']:.2f} conventional epochs)  test {row['test_top1']:.2f}%",
              flush=True)
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, **facts, "conventional_epoch_s": conv, "candidates": rows},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
