"""Do Lookahead or a frozen whitening first layer pay for the quick preset? (airbench's line of work)

Trains the quick preset's R1 as ``refinery run --preset quick`` does (its model, recipe, split and seed; full
Fashion-MNIST; the library's ``engine.fit``), once per option and seed, and reports clean test top-1 and the
seconds of the fit side by side:

- ``baseline``: the preset as it is;
- ``lookahead``: its Adam wrapped in Lookahead (Zhang et al. 2019, "Lookahead Optimizer: k steps forward, 1 step
  back"; ``timm.optim.Lookahead``, alpha 0.5, k 6: the slow weights move halfway to the fast ones every 6 steps);
- ``whitening``: a frozen 3 x 3 whitening convolution in front of the network (airbench, Keller Jordan 2024: the
  eigenvectors of the training images' uncentred 3 x 3 patch covariance, each divided by the square root of its
  eigenvalue + 5e-4, with their negatives: 18 channels; weights frozen, bias trained; GELU), the convnet's first
  layer taking those 18 channels.

Every model has its BatchNorm statistics recomputed on the training images (as a generation's are) and keeps its
best epoch by validation, as the preset does; seeds and initialisations are the preset's, so ``baseline`` is the
preset's R1 of each seed.

    .venv/bin/python benchmarks/lookahead_whitening.py --seeds 0,1,2 --out benchmarks/results/lookahead-whitening.json
    # fewer epochs with the whitening layer: does it reach the preset's accuracy sooner?
    .venv/bin/python benchmarks/lookahead_whitening.py --seeds 0,1,2 --options baseline,whitening --epochs 3 \
        --out benchmarks/results/lookahead-whitening-3-epochs.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from unittest import mock

import torch
from timm.optim import Lookahead
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from benchmeta import run_metadata  # noqa: E402

from labelrefinery import engine  # noqa: E402
from labelrefinery.batch import Pipeline  # noqa: E402
from labelrefinery.config import resolve_config  # noqa: E402
from labelrefinery.data import load_dataset  # noqa: E402
from labelrefinery.device import cpu_features, resolve_precision, set_threads  # noqa: E402
from labelrefinery.engine import FitHooks, TrainData, TrainSetup, fit  # noqa: E402
from labelrefinery.inference import predict, recalibrate_batchnorm, recalibration_subset, top1_accuracy  # noqa: E402
from labelrefinery.models import ConvNet, ModelSpec, build_model  # noqa: E402
from labelrefinery.protocol import seed_split  # noqa: E402
from labelrefinery.seeding import seed_model_init  # noqa: E402
from labelrefinery.targets import StoredTargets  # noqa: E402

OPTIONS = ("baseline", "lookahead", "whitening")


def whitening_conv(images: torch.Tensor, mean: list[float], std: list[float], eps: float = 5e-4) -> nn.Conv2d:
    """A 3 x 3 convolution (padding 1) whose ``2 * 9 * C`` filters are the eigenvectors of the uncentred 3 x 3 patch
    covariance of ``images`` (``(N, C, H, W) uint8``, normalised by ``mean`` / ``std`` as the pipeline does), each
    divided by sqrt(eigenvalue + eps), and their negatives (airbench's ``init_whitening_conv``); weights frozen, bias
    zero and trainable."""
    x = (images.float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    c = x.shape[1]
    patches = x.unfold(2, 3, 1).unfold(3, 3, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * 9).double()
    values, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))
    filters = (vectors.T / (values + eps).sqrt().view(-1, 1)).reshape(c * 9, c, 3, 3).float()
    conv = nn.Conv2d(c, 2 * c * 9, 3, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.cat([filters, -filters]))
        conv.bias.zero_()
    conv.weight.requires_grad_(False)
    return conv


def build(option: str, spec: ModelSpec, images: torch.Tensor, mean: list[float], std: list[float]) -> nn.Module:
    """The preset's model, or for ``whitening`` the frozen whitening layer, GELU and the convnet on its channels."""
    if option != "whitening":
        return build_model(spec)
    white = whitening_conv(images[:5000], mean, std)
    return nn.Sequential(white, nn.GELU(), ConvNet(spec.num_classes, in_channels=white.out_channels))


def run_seed(ds, pipe, seed: int, option: str, data: str, epochs: int | None) -> dict:
    """The quick preset's R1 of ``seed`` with ``option`` (and ``epochs``, None: the preset's 4): ``{"seed",
    "option", "epochs", "fit_s", "test_top1", "val_top1"}`` (seconds, %)."""
    cfg = resolve_config("quick", {"dataset": data, **({"epochs": epochs} if epochs else {})})
    train_idx, val_idx = seed_split(ds, cfg, seed)
    images = ds.train.images[train_idx]
    seed_model_init(seed, 1)
    spec = ModelSpec(cfg.model, ds.train.num_classes, *ds.image_shape[:2])
    model = build(option, spec, images, ds.mean, ds.std).to(memory_format=torch.channels_last)
    plain = engine.build_optimizer
    wrap = (lambda m, c: Lookahead(plain(m, c), alpha=0.5, k=6)) if option == "lookahead" else plain
    start = time.perf_counter()
    with mock.patch.object(engine, "build_optimizer", wrap):
        fit(model, TrainData(images, StoredTargets(ds.train.labels[train_idx], num_classes=ds.train.num_classes),
                             ds.train.images[val_idx], ds.train.labels[val_idx]),
            TrainSetup(cfg.training, pipe, (seed, 1)), FitHooks())
    fit_s = time.perf_counter() - start
    recalibrate_batchnorm(model, recalibration_subset(images), pipe)
    return {"seed": seed, "option": option, "epochs": cfg.training.epochs, "fit_s": fit_s,
            "test_top1": top1_accuracy(predict(model, ds.test.images, pipe), ds.test.labels),
            "val_top1": top1_accuracy(predict(model, ds.train.images[val_idx], pipe), ds.train.labels[val_idx])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--options", default=",".join(OPTIONS), help=f"comma-separated, of {', '.join(OPTIONS)}")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of every model (default: the preset's 4)")
    parser.add_argument("--dataset", default="fashion-mnist", help="digits: a seconds-long smoke run")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    options = args.options.split(",")
    if unknown := sorted(set(options) - set(OPTIONS)):
        parser.error(f"unknown --options {','.join(unknown)}: choose from {', '.join(OPTIONS)}")
    set_threads(0)
    ds = load_dataset(args.dataset)
    cpu = torch.device("cpu")
    amp = resolve_precision("auto", cpu)
    pipe = Pipeline.create(cpu, ds.mean, ds.std, amp)
    facts = {"cpu_features": cpu_features(), "precision": str(amp), "torch": torch.__version__}
    print(json.dumps(facts), flush=True)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for option in options:  # interleaved, so a slower spell of the machine touches every option alike
            rows.append(run_seed(ds, pipe, seed, option, args.dataset, args.epochs))
            print(json.dumps(rows[-1]), flush=True)
    base = {r["seed"]: r for r in rows if r["option"] == "baseline"}
    for option in options:
        mine = [r for r in rows if r["option"] == option]
        line = f"{option:10s} test top-1 " + " ".join(f"{r['test_top1']:.2f}" for r in mine)
        line += "  fit s " + " ".join(f"{r['fit_s']:.0f}" for r in mine)
        if base and option != "baseline":
            gains = [r["test_top1"] - base[r["seed"]]["test_top1"] for r in mine if r["seed"] in base]
            line += f"  gain over baseline (mean) {sum(gains) / max(len(gains), 1):+.2f}"
        print(line, flush=True)
    if args.out:
        args.out.write_text(json.dumps({"meta": run_metadata(), **facts, "options": options, "seeds": rows},
                                       indent=2) + "\n")


if __name__ == "__main__":
    main()
