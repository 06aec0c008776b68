"""Does an exponential moving average (EMA) of the weights pay for the quick preset? (airbench's line of work)

Trains the quick preset's R1 exactly as ``refinery run --preset quick`` does (its model, recipe, split and
seed; full Fashion-MNIST; the library's ``engine.fit``) and, beside it, for each decay d, an EMA of its weights
updated after every optimizer step: ema <- delta ema + (1 - delta) w with delta = min(d, (1 + t) / (10 + t)) at
step t (the warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=t)``, so the random initial weights
do not linger). Every model has its BatchNorm statistics recomputed on the training images (as a generation's
are) and is scored on the test images; the trained model is the one the preset keeps (its best epoch by
validation). One training gives every row, so the comparison is paired per seed.

    .venv/bin/python benchmarks/weight_averaging.py --seeds 0,1,2 --out benchmarks/results/weight-averaging.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

sys.path.insert(0, str(Path(__file__).parent))
from benchmeta import run_metadata  # noqa: E402

from labelrefinery.batch import Pipeline  # noqa: E402
from labelrefinery.config import resolve_config  # noqa: E402
from labelrefinery.data import load_dataset  # noqa: E402
from labelrefinery.device import cpu_features, resolve_precision, set_threads  # noqa: E402
from labelrefinery.engine import FitHooks, TrainData, TrainSetup, fit  # noqa: E402
from labelrefinery.inference import predict, recalibrate_batchnorm, recalibration_subset, top1_accuracy  # noqa: E402
from labelrefinery.models import ModelSpec, build_model  # noqa: E402
from labelrefinery.protocol import seed_split  # noqa: E402
from labelrefinery.seeding import seed_model_init  # noqa: E402
from labelrefinery.targets import StoredTargets  # noqa: E402


class WeightAverages:
    """EMAs of ``model``'s parameters, one copy per decay, updated by :meth:`update` (with the ``(1 + t) / (10 + t)``
    warm-up)."""

    def __init__(self, model: torch.nn.Module, decays: list[float]):
        self.model, self.decays, self.steps = model, decays, 0
        self.copies = {d: copy.deepcopy(model) for d in decays}

    @torch.no_grad()
    def update(self, *_args) -> None:
        self.steps += 1
        for d, avg in self.copies.items():
            delta = min(d, (1 + self.steps) / (10 + self.steps))
            for a, w in zip(avg.parameters(), self.model.parameters()):
                a.lerp_(w, 1 - delta)


def run_seed(ds, pipe, seed: int, decays: list[float], data: str) -> dict:
    """The quick preset's R1 of ``seed`` on ``ds`` and its EMAs, each BatchNorm-recalibrated: ``{"seed", "steps",
    "trained" | "ema D": {"test_top1", "val_top1"} (%)}``."""
    cfg = resolve_config("quick", {"dataset": data})
    train_idx, val_idx = seed_split(ds, cfg, seed)
    seed_model_init(seed, 1)
    model = build_model(ModelSpec(cfg.model, ds.train.num_classes, *ds.image_shape[:2])).to(
        memory_format=torch.channels_last)
    averages = WeightAverages(model, decays)
    hook = register_optimizer_step_post_hook(averages.update)
    images = ds.train.images[train_idx]
    try:
        fit(model, TrainData(images, StoredTargets(ds.train.labels[train_idx], num_classes=ds.train.num_classes),
                             ds.train.images[val_idx], ds.train.labels[val_idx]),
            TrainSetup(cfg.training, pipe, (seed, 1)), FitHooks())
    finally:
        hook.remove()
    row = {"seed": seed, "steps": averages.steps}
    for name, m in [("trained", model), *((f"ema {d:g}", a) for d, a in averages.copies.items())]:
        recalibrate_batchnorm(m, recalibration_subset(images), pipe)
        row[name] = {"test_top1": top1_accuracy(predict(m, ds.test.images, pipe), ds.test.labels),
                     "val_top1": top1_accuracy(predict(m, ds.train.images[val_idx], pipe), ds.train.labels[val_idx])}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--decays", default="0.99,0.998", help="comma-separated EMA decays per optimizer step")
    parser.add_argument("--dataset", default="fashion-mnist", help="digits: a seconds-long smoke run")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    set_threads(0)
    ds = load_dataset(args.dataset)
    cpu = torch.device("cpu")
    amp = resolve_precision("auto", cpu)
    pipe = Pipeline.create(cpu, ds.mean, ds.std, amp)
    decays = [float(d) for d in args.decays.split(",")]
    facts = {"cpu_features": cpu_features(), "precision": str(amp), "torch": torch.__version__}
    print(json.dumps(facts), flush=True)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        rows.append(run_seed(ds, pipe, seed, decays, args.dataset))
        print(json.dumps(rows[-1]), flush=True)
    names = [k for k in rows[0] if k not in ("seed", "steps")]
    for name in names:
        gains = [r[name]["test_top1"] - r["trained"]["test_top1"] for r in rows]
        print(f"{name:10s} test top-1 " + " ".join(f"{r[name]['test_top1']:.2f}" for r in rows)
              + f"  gain over trained (mean) {sum(gains) / len(gains):+.2f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"meta": run_metadata(), **facts, "decays": decays, "seeds": rows},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
