"""When does a model learn the label noise? Epoch by epoch, for plain training on noisy labels.

After every epoch of a plain model (``--preset``'s recipe, ``--epochs`` epochs) trained on a ``--train-size``
subset of Fashion-MNIST with ``--noise`` injected, on the training images: the share of its predictions that
agree with the given labels and the share that are the true class (its refined labels' accuracy), the same for
the mean of its predictions over the epochs so far (the epoch-averaged labels of SEAL, Chen et al. 2021), and its
clean test top-1. Noise that a model learns only late (memorisation) shows as true-class accuracy that peaks
early and then falls while agreement with the given labels keeps rising; noise a model learns from the start
shows no such peak, and no early snapshot or average of the model's own predictions can undo it.

    .venv/bin/python benchmarks/noise_learning_curve.py --noise idn:0.35 --out benchmarks/results/noise-curve-idn.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmeta import run_metadata
from labelrefinery.batch import Pipeline
from labelrefinery.config import resolve_config
from labelrefinery.console import log
from labelrefinery.data import load_dataset
from labelrefinery.device import resolve_precision, set_threads
from labelrefinery.engine import FitHooks, TrainData, TrainSetup, fit
from labelrefinery.inference import predict
from labelrefinery.models import ModelSpec, build_model
from labelrefinery.protocol import seed_split, with_label_noise
from labelrefinery.seeding import derive_seed
from labelrefinery.targets import StoredTargets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--noise", default="idn:0.35", help="the --label-noise setting")
    parser.add_argument("--preset", default="noisy", help="the recipe (optimiser, schedule)")
    parser.add_argument("--train-size", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    set_threads(0)
    cpu = torch.device("cpu")
    ds, noise = with_label_noise(load_dataset("fashion-mnist"), args.noise)
    cfg = resolve_config(args.preset, {"train_size": args.train_size, "epochs": args.epochs, "seeds": 1})
    train_idx, val_idx = seed_split(ds, cfg, args.seed)
    pipe = Pipeline.create(cpu, ds.mean, ds.std, resolve_precision("auto", cpu))
    torch.manual_seed(derive_seed(args.seed, 1))
    model = build_model(ModelSpec(cfg.model, ds.train.num_classes, *ds.image_shape[:2])).to(
        memory_format=torch.channels_last)
    images, given, clean = ds.train.images[train_idx], ds.train.labels[train_idx], noise.clean[train_idx]
    mean = torch.zeros(len(train_idx), ds.train.num_classes)
    rows = []

    def after_epoch(record: dict) -> None:
        nonlocal mean
        probs = predict(model, images, pipe).softmax(1)
        mean += (probs - mean) / record["epoch"]
        test = predict(model, ds.test.images, pipe).argmax(1)
        rows.append({"epoch": record["epoch"], "val_top1_given": record["val_top1"],
                     "agree_given": 100 * float((probs.argmax(1) == given).float().mean()),
                     "true_class": 100 * float((probs.argmax(1) == clean).float().mean()),
                     "epoch_mean_true_class": 100 * float((mean.argmax(1) == clean).float().mean()),
                     "test_top1": 100 * float((test == ds.test.labels).float().mean())})
        log(json.dumps(rows[-1]))

    fit(model, TrainData(images, StoredTargets(given, num_classes=ds.train.num_classes), ds.train.images[val_idx],
                         ds.train.labels[val_idx]), TrainSetup(cfg.training, pipe, (args.seed, 1)),
        FitHooks(log=after_epoch))
    result = {"meta": run_metadata(), "noise": args.noise, "given_labels_right": 100 * float(
        (given == clean).float().mean()), "epochs": rows}
    print("| epoch | agrees with given labels | argmax = true class | epoch-mean argmax = true class | "
          "test top-1 | validation (given labels) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['epoch']} | {r['agree_given']:.1f} | {r['true_class']:.1f} | {r['epoch_mean_true_class']:.1f} | "
              f"{r['test_top1']:.2f} | {r['val_top1_given']:.2f} |")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
