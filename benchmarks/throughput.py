"""Training-path benchmark: our trainer against the model's bound, a conventional pipeline and the machine's peak.

Measures, in one process, on the same model, data (Fashion-MNIST), batch size
and precision, after warm-up, each as the median of several timed repeats:

  (a) bound      bare forward + backward + optimizer step on one fixed in-memory batch
  (b) ours       train_one_epoch, offline soft labels, online augmentation (RandomAffine)
  (c) ours+ref   train_one_epoch with per-crop labels from a frozen refinery of the same architecture
  (d) torch      torchvision Dataset + per-sample torchvision transforms (same augmentation) + DataLoader
                 with one worker per core; (d+ref) the same plus the refinery's forward per batch
  (e) predict    label generation (predict) on the training images
  (f) peak       matrix-multiply FLOP/s in the same dtype; the model's FLOPs per image
                 (torch.utils.flop_counter); achieved FLOP/s of (a) and (b) as a share of the peak

``--accuracy-epochs N`` also trains (b) and (d) for N epochs each from the same
initialisation and reports their test top-1, and ``--precisions`` repeats the
speed figures (and accuracy) per precision. Prints a table and writes JSON.

    python benchmarks/throughput.py --out benchmarks/results/results-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmeta import run_metadata
from labelrefinery.augment import RandomAffine
from labelrefinery.data import load_dataset
from labelrefinery.losses import soft_target_cross_entropy
from labelrefinery.models import ModelSpec, build_model
from labelrefinery.batch import Pipeline
from labelrefinery.device import resolve_device, resolve_precision
from labelrefinery.engine import EpochSteps, TrainData, train_one_epoch
from labelrefinery.inference import evaluate, predict
from labelrefinery.targets import FrozenRefinery, LabelRecipe, RefineryTargets, StoredTargets, refined_labels


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_rate(fn, images_per_call: int, repeats: int, warmup: int, device: torch.device) -> float:
    """Median images/s of ``fn`` over ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        rates.append(images_per_call / (time.perf_counter() - t))
    return statistics.median(rates)


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int, repeats: int = 5) -> float:
    """Median FLOP/s of an n x n x n matrix multiply in ``dtype``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    calls = 4 if device.type == "cpu" else 50
    rate = median_rate(lambda: [a @ b for _ in range(calls)], calls, repeats, 1, device)
    return rate * 2 * n**3


def flops_per_image(model, x, y) -> tuple[float, float]:
    """(forward FLOPs, forward + backward FLOPs) per image, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fwd:
        out = model(x)
    with FlopCounterMode(display=False) as both:
        out = model(x)
        F.cross_entropy(out.float(), y).backward()
    model.zero_grad(set_to_none=True)
    return fwd.get_total_flops() / len(x), both.get_total_flops() / len(x)


class TorchvisionFashion(torch.utils.data.Dataset):
    """The conventional pipeline: a map-style Dataset returning one transformed image and its target."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform):
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.targets[i]


def conventional_transform(mean, std, hflip: bool):
    from torchvision.transforms import v2

    ops = [v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), fill=0)]
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(ops)


def optimizer_step(model, optimizer, x, targets, pipeline) -> None:
    """One forward + backward + step on an already normalised batch (the body every loop here shares)."""
    with pipeline.autocast():
        logits = model(x)
    loss = soft_target_cross_entropy(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def conventional_epoch(model, optimizer, loader, pipeline, refinery=None, scheduler=None) -> int:
    """One pass of the conventional loop; returns the number of images seen."""
    model.train()
    seen = 0
    for x, t in loader:
        x = x.to(pipeline.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        t = t.to(pipeline.device, non_blocking=True)
        if refinery is not None:
            with torch.no_grad(), pipeline.autocast():
                t = torch.softmax(refinery(x).float(), 1)
        optimizer_step(model, optimizer, x, t, pipeline)
        if scheduler is not None:
            scheduler.step()
        seen += len(x)
    return seen


def bench_precision(args, ds, device, precision: str) -> dict:
    amp = resolve_precision(precision, device)
    pipe = Pipeline.create(device, ds.mean, ds.std, amp)
    c, h, _ = ds.image_shape
    spec = ModelSpec(args.model, ds.train.num_classes, c, h)
    n = args.images
    images = ds.train.images[:n].to(device)
    labels = ds.train.labels[:n].to(device)
    soft = refined_labels(torch.randn(n, ds.train.num_classes, device=device) * 3)
    bs = args.batch_size
    augment = RandomAffine(hflip=ds.hflip_keeps_class)

    def new_model(seed=0):
        torch.manual_seed(seed)
        return build_model(spec).to(device).to(memory_format=torch.channels_last)

    res: dict = {"precision": precision, "amp_dtype": str(amp).replace("torch.", "") if amp else "fp32"}

    # (a) bound: one fixed, already normalised batch
    model = new_model()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    xb = pipe.normalize(pipe.to_unit(images[:bs]))
    tb = soft[:bs]

    def bare_step_of(net, optimizer):
        return lambda: optimizer_step(net, optimizer, xb, tb, pipe)

    bare_step = bare_step_of(model, opt)
    steps = max(1, n // bs)
    res["a_bound"] = median_rate(lambda: [bare_step() for _ in range(steps)], steps * bs, args.repeats, 1, device)

    if args.compile:
        cmodel = torch.compile(new_model())
        compiled_step = bare_step_of(cmodel, torch.optim.Adam(cmodel.parameters(), 1e-3))
        t0 = time.perf_counter()
        compiled_step()
        sync(device)
        res["compile_time_s"] = time.perf_counter() - t0
        res["a_bound_compiled"] = median_rate(lambda: [compiled_step() for _ in range(steps)], steps * bs,
                                              args.repeats, 1, device)

    # (b) our trainer, offline soft labels, online augmentation
    g = torch.Generator().manual_seed(0)
    stored = StoredTargets(soft)
    res["b_ours"] = median_rate(
        lambda: train_one_epoch(model, opt, TrainData(images, stored), pipe, EpochSteps(bs, g, augment=augment)),
        n, args.repeats, 1, device)
    res["b_ours_no_aug"] = median_rate(
        lambda: train_one_epoch(model, opt, TrainData(images, stored), pipe, EpochSteps(bs, g)),
        n, args.repeats, 1, device)

    # (c) per-crop labels from a frozen refinery of the same architecture
    refinery = FrozenRefinery(new_model(1))
    online = RefineryTargets(refinery, LabelRecipe(), labels)
    res["c_ours_refinery"] = median_rate(
        lambda: train_one_epoch(model, opt, TrainData(images, online), pipe, EpochSteps(bs, g, augment=augment)),
        n, args.repeats, 1, device)

    # (d) conventional: Dataset + per-sample transforms + DataLoader(workers = cores)
    transform = conventional_transform(ds.mean, ds.std, ds.hflip_keeps_class)
    cpu_soft = soft.cpu()
    loader = torch.utils.data.DataLoader(
        TorchvisionFashion(ds.train.images[:n], cpu_soft, transform), batch_size=bs, shuffle=True,
        num_workers=args.workers, pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
        drop_last=True)
    seen = (n // bs) * bs
    res["d_conventional"] = median_rate(lambda: conventional_epoch(model, opt, loader, pipe), seen,
                                        args.repeats, 1, device)
    res["d_conventional_refinery"] = median_rate(
        lambda: conventional_epoch(model, opt, loader, pipe, refinery=refinery), seen, args.repeats, 1, device)

    # (e) label generation
    res["e_predict"] = median_rate(lambda: predict(model, images, pipe, batch_size=1024), n, args.repeats, 1, device)

    # (f) peak and FLOPs
    fwd, train_flops = flops_per_image(new_model(), xb[:8], labels[:8])
    peak = matmul_peak(amp or torch.float32, device, args.matmul_size)
    res.update({
        "model_fwd_flops_per_image": fwd, "model_train_flops_per_image": train_flops,
        "matmul_peak_flops": peak,
        "a_share_of_peak": res["a_bound"] * train_flops / peak,
        "b_share_of_peak": res["b_ours"] * train_flops / peak,
    })

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            train_one_epoch(model, opt, TrainData(images, stored), pipe, EpochSteps(bs, g, augment=augment))
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        res["profile_b"] = prof.key_averages().table(sort_by=sort, row_limit=15)
    if args.accuracy_epochs:
        res.update(accuracy_comparison(args, ds, pipe, spec, augment))
    return res


class _PerBatch:
    """A torch scheduler stepped after every batch, as train_one_epoch's ``schedule`` expects."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def after_batch(self) -> None:
        self.scheduler.step()


def accuracy_comparison(args, ds, pipe, spec, augment) -> dict:
    """Train (b) and (d) for the same epochs from the same initialisation; test top-1 and wall time of each."""
    device = pipe.device
    epochs = args.accuracy_epochs
    bs = args.batch_size
    images, labels = ds.train.images.to(device), ds.train.labels.to(device)
    out = {}
    for name in ("ours", "conventional"):
        torch.manual_seed(0)
        model = build_model(spec).to(device).to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        steps = len(images) // bs
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * (steps + 1))
        start = time.perf_counter()
        if name == "ours":
            for e in range(epochs):
                train_one_epoch(model, opt, TrainData(images, StoredTargets(labels)), pipe,
                                EpochSteps(bs, torch.Generator().manual_seed(e), augment=augment,
                                           schedule=_PerBatch(sched)))
        else:
            loader = torch.utils.data.DataLoader(
                TorchvisionFashion(ds.train.images, ds.train.labels,
                                   conventional_transform(ds.mean, ds.std, ds.hflip_keeps_class)),
                batch_size=bs, shuffle=True, num_workers=args.workers, drop_last=True,
                persistent_workers=args.workers > 0)
            for e in range(epochs):
                conventional_epoch(model, opt, loader, pipe, scheduler=sched)
        sync(device)
        out[f"acc_{name}_wall_s"] = time.perf_counter() - start
        out[f"acc_{name}_test_top1"] = evaluate(model, ds.test.images, ds.test.labels, pipe)["top1"]
    out["acc_epochs"] = epochs
    return out


def table(results: list[dict]) -> str:
    rows = [("(a) bound: bare fwd+bwd+step, images/s", "a_bound", "{:.0f}"),
            ("    (a) under torch.compile, images/s", "a_bound_compiled", "{:.0f}"),
            ("    torch.compile time (first step), s", "compile_time_s", "{:.0f}"),
            ("(b) ours: offline labels + online aug, images/s", "b_ours", "{:.0f}"),
            ("    ours without augmentation, images/s", "b_ours_no_aug", "{:.0f}"),
            ("(c) ours + per-crop refinery, images/s", "c_ours_refinery", "{:.0f}"),
            ("(d) conventional DataLoader pipeline, images/s", "d_conventional", "{:.0f}"),
            ("    conventional + refinery forward, images/s", "d_conventional_refinery", "{:.0f}"),
            ("(e) predict (label generation), images/s", "e_predict", "{:.0f}"),
            ("(f) matmul peak, GFLOP/s", "matmul_peak_flops", "{:.0f}", 1e-9),
            ("    model train FLOPs per image, MFLOP", "model_train_flops_per_image", "{:.1f}", 1e-6),
            ("    (a) achieved / peak", "a_share_of_peak", "{:.1%}"),
            ("    (b) achieved / peak", "b_share_of_peak", "{:.1%}"),
            ("(b) / (a)  [target >= 0.85]", "r_b_a", "{:.2f}"),
            ("(c) cost per image / (b)  [target <= 1.4]", "r_c_b", "{:.2f}"),
            ("(b) / (d)  [target >= 3]", "r_b_d", "{:.2f}"),
            ("(c) / (d + refinery)", "r_c_dref", "{:.2f}"),
            ("test top-1 after N epochs: ours, %", "acc_ours_test_top1", "{:.2f}"),
            ("test top-1 after N epochs: conventional, %", "acc_conventional_test_top1", "{:.2f}"),
            ("wall time of those N epochs: ours, s", "acc_ours_wall_s", "{:.0f}"),
            ("wall time of those N epochs: conventional, s", "acc_conventional_wall_s", "{:.0f}")]
    for r in results:
        r["r_b_a"] = r["b_ours"] / r["a_bound"]
        r["r_c_b"] = r["b_ours"] / r["c_ours_refinery"]
        r["r_b_d"] = r["b_ours"] / r["d_conventional"]
        r["r_c_dref"] = r["c_ours_refinery"] / r["d_conventional_refinery"]
    lines = ["| measure | " + " | ".join(r["amp_dtype"] for r in results) + " |",
             "|---" * (len(results) + 1) + "|"]
    for label, key, fmt, *scale in rows:
        if not any(key in r for r in results):
            continue
        cells = [fmt.format(r[key] * (scale[0] if scale else 1)) if key in r else "" for r in results]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--images", type=int, default=8192, help="training images per timed repeat")
    parser.add_argument("--batch-size", type=int, default=256, help="images per step")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per figure (the median is reported)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                        help="DataLoader workers of the conventional pipeline (default: one per core)")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16, auto")
    parser.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n x n peak matmul")
    parser.add_argument("--accuracy-epochs", type=int, default=0,
                        help="also train ours and the conventional pipeline this many full epochs and compare")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile on (a): compile time and steady rate")
    parser.add_argument("--profile", action="store_true", help="also profile one epoch of (b) and print the top ops")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    started = run_metadata()
    ds = load_dataset(args.dataset, args.data_dir)
    results = [bench_precision(args, ds, device, p) for p in args.precisions.split(",")]
    meta = {**started, "torch": torch.__version__, "device": str(device),
            "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name")), platform.processor()),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "threads": torch.get_num_threads(), "args": {k: str(v) for k, v in vars(args).items()}}
    text = table(results)
    print(json.dumps(meta))
    print(text)
    for r in results:
        if "profile_b" in r:
            print(f"\nprofile of (b), {r['amp_dtype']}:\n{r['profile_b']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
