"""fp32 training-step settings for the default model, and where a generation's time goes besides training.

Bare steps (forward, backward, Adam) of ``convnet`` on one fixed batch of 1x28x28
images; the median of 5 timed repeats of 10 steps after 3 warm-up steps, every
setting measured in one process. Settings compared: memory format x batch size;
oneDNN (mkldnn) convolutions on and off; 1 and 2 threads; ``torch.compile``
(``--compile``). The step's achieved FLOP/s (counted by ``torch.utils.flop_counter``)
is set against this machine's fp32 matrix-multiply rate (2048^3, measured here).

``--profile`` prints torch.profiler's table of the default setting (channels_last, batch 256).
``--recalibration`` trains ``convnet`` one epoch on full Fashion-MNIST, then times
BatchNorm recalibration on every training image and on the subset the engine uses
(``engine.recalibration_subset``), each followed by test top-1, and times prediction.

    .venv/bin/python benchmarks/step_settings.py --profile --compile --recalibration --out FILE
    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/step_settings.py ...  # AVX2 kernels on a bigger CPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from labelrefinery.device import cpu_features, set_threads
from labelrefinery.models import ModelSpec, build_model

sys.path.insert(0, str(Path(__file__).parent))
from benchmeta import run_metadata  # noqa: E402
from throughput import flops_per_image, matmul_peak  # noqa: E402


def images_per_s(memory_format: torch.memory_format, batch: int, repeats: int = 5, compile: bool = False) -> float:
    torch.manual_seed(0)
    model = build_model(ModelSpec("convnet", 10, 1, 28)).to(memory_format=memory_format)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    trainee = torch.compile(model) if compile else model
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,))

    def step():
        loss = F.cross_entropy(trainee(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(10):
            step()
        rates.append(10 * batch / (time.perf_counter() - t))
    return statistics.median(rates)


def recalibration_costs() -> dict:
    """One epoch of training, then recalibration (all images vs the engine's subset) and prediction costs."""
    from labelrefinery.batch import Pipeline
    from labelrefinery.config import resolve_config
    from labelrefinery.data import load_dataset
    from labelrefinery.engine import TrainData, TrainSetup, fit
    from labelrefinery.inference import predict, recalibrate_batchnorm, recalibration_subset, top1_accuracy
    from labelrefinery.protocol import seed_split
    from labelrefinery.targets import StoredTargets

    ds = load_dataset("fashion-mnist")
    pipe = Pipeline.create(torch.device("cpu"), ds.mean, ds.std, torch.float32)
    cfg = resolve_config("quick", {"epochs": 1, "recalibrate_bn": False})
    train_idx, val_idx = seed_split(ds, cfg, 0)
    images = ds.train.images[train_idx]
    torch.manual_seed(0)
    model = build_model(ModelSpec("convnet", 10, 1, 28)).to(memory_format=torch.channels_last)
    start = time.perf_counter()
    fit(model, TrainData(images, StoredTargets(ds.train.labels[train_idx], num_classes=10), ds.train.images[val_idx],
                         ds.train.labels[val_idx]), TrainSetup(cfg.training, pipe, (0, 1)))
    out = {"train_epoch_s": time.perf_counter() - start, "train_images": len(images)}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, subset in (("all", images), ("subset", recalibration_subset(images))):
        model.load_state_dict(state)
        t = time.perf_counter()
        recalibrate_batchnorm(model, subset, pipe)
        out[f"recalibrate_{name}_s"] = time.perf_counter() - t
        out[f"recalibrate_{name}_images"] = len(subset)
        out[f"test_top1_after_{name}"] = top1_accuracy(predict(model, ds.test.images, pipe), ds.test.labels)
    t = time.perf_counter()
    predict(model, images, pipe)
    out["predict_images_per_s"] = len(images) / (time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="128,256,512", help="batch sizes for the memory-format comparison")
    parser.add_argument("--profile", action="store_true", help="print the profiler table of one setting")
    parser.add_argument("--compile", action="store_true", help="also time the step under torch.compile")
    parser.add_argument("--recalibration", action="store_true",
                        help="time BatchNorm recalibration and prediction after one real epoch (about 1 min)")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    set_threads(2)
    facts = {"cpu_features": cpu_features(), "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
             "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(json.dumps(facts))
    meta = run_metadata()
    rows = []

    def record(setting: str, batch: int, rate: float, **extra) -> None:
        rows.append({"setting": setting, "batch": batch, "images_per_s": rate, **extra})
        print(f"{setting:34s} batch {batch:4d}  {rate:7.0f} images/s", flush=True)

    for batch in map(int, args.batches.split(",")):
        for name, fmt in (("channels_last", torch.channels_last), ("contiguous", torch.contiguous_format)):
            record(name, batch, images_per_s(fmt, batch), memory_format=name)
    for batch in (128, 256):
        with torch.backends.mkldnn.flags(enabled=False):
            record("channels_last, oneDNN off", batch, images_per_s(torch.channels_last, batch))
        torch.set_num_threads(1)
        record("channels_last, 1 thread", batch, images_per_s(torch.channels_last, batch))
        torch.set_num_threads(2)
        if args.compile:
            record("channels_last, torch.compile", batch, images_per_s(torch.channels_last, batch, compile=True))

    model = build_model(ModelSpec("convnet", 10, 1, 28))
    _, train_flops = flops_per_image(model, torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    peak = matmul_peak(torch.float32, torch.device("cpu"), 2048)
    default = next(r["images_per_s"] for r in rows if r["setting"] == "channels_last" and r["batch"] == 256)
    share = {"train_flop_per_image": train_flops, "matmul_flop_per_s": peak,
             "step_share_of_matmul_rate_batch256": default * train_flops / peak}
    print(f"training FLOP per image {train_flops / 1e6:.0f} M; fp32 matmul 2048^3 {peak / 1e9:.0f} GFLOP/s; "
          f"step (channels_last, batch 256) at {100 * share['step_share_of_matmul_rate_batch256']:.0f}% of it")
    recal = recalibration_costs() if args.recalibration else None
    if recal:
        print(json.dumps(recal, indent=1))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        model = build_model(ModelSpec("convnet", 10, 1, 28)).to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        x = torch.randn(256, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (256,))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, **facts, "rows": rows, "peak": share, "recalibration": recal}, f, indent=2)


if __name__ == "__main__":
    main()
