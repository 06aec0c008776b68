"""Streaming an image folder from disk against torchvision ``ImageFolder`` + ``DataLoader``, same workers, same run.

Makes (once) an ImageNet-layout folder of JPEGs (``--images`` training images in 10 classes, 256-500 px per
side, plus 10% as many in ``val/``) and a second folder holding the first quarter of them (hard links), then
measures, each in a fresh subprocess so peak memory is its own:

- ``loader``: images/s of reading the training images in a random order in batches of 64 and producing
  224 x 224 random resized crops + flips as [0, 1] floats. Ours: :class:`~labelrefinery.data.files.ImageFiles`
  with :func:`~labelrefinery.data.files.read_batches` (decode, shorter side to 256, centre crop, then the
  :class:`~labelrefinery.augment.RandomResizedCrop` view drawn by the training process, all in the workers,
  as ``refinery run --data-in-memory no --augment crop`` does); conventional: ``ImageFolder`` with per-sample
  ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip`` + ``ToTensor`` + ``Normalize`` in a ``DataLoader``
  (``shuffle=True``).
- ``train``: images/s of training torchvision's ``resnet18`` at 224 px (Adam, channels_last, the run's
  precision) on ``--train-images`` images: ours through the engine's own ``train_one_epoch``, conventional
  through the usual loop.
- peak memory of the whole process tree (the process and its workers: proportional set sizes summed,
  sampled every 50 ms, so pages shared between them count once), on both folder sizes.

    .venv/bin/python benchmarks/streaming.py --root /tmp/stream-bench --out benchmarks/results/streaming.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

CLASSES = 10
BATCH = 64


def _make_image(args: tuple[str, int]) -> None:
    from PIL import Image

    path, seed = args
    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(256, 501, 2))
    small = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)  # smooth colour fields with some texture
    im = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    a = np.asarray(im).astype(np.int16) + rng.integers(-12, 13, (h, w, 1), dtype=np.int16)
    Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def make_folder(root: Path, images: int) -> tuple[Path, Path]:
    """``root/full`` with ``images`` training JPEGs (+10% in val/) and ``root/quarter`` with a quarter of them."""
    from multiprocessing import Pool

    full, quarter = root / "full", root / "quarter"
    if not (full / "done").exists():
        jobs = []
        for split, n in (("train", images), ("val", images // 10)):
            for i in range(n):
                folder = full / split / f"class{i % CLASSES:02d}"
                folder.mkdir(parents=True, exist_ok=True)
                jobs.append((str(folder / f"{i:06d}.jpg"), 2 * i + (split == "val")))
        with Pool(os.cpu_count()) as pool:
            pool.map(_make_image, jobs, chunksize=64)
        (full / "done").write_text("")
    if not (quarter / "done").exists():
        for split in ("train", "val"):
            for cls in sorted((full / split).iterdir()):
                files = sorted(cls.iterdir())
                (quarter / split / cls.name).mkdir(parents=True, exist_ok=True)
                for f in files[: len(files) // 4]:
                    target = quarter / split / cls.name / f.name
                    if not target.exists():
                        os.link(f, target)
        (quarter / "done").write_text("")
    return full, quarter


# --------------------------------------------------------------------------- one measurement (a subprocess)


def _tree_memory(pid: int) -> int:
    """Bytes of memory held by ``pid`` and its descendants: their proportional set sizes (PSS) summed, so pages
    the workers share with the process they were forked from count once."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo.extend(int(c) for c in f.read().split())
        except (OSError, StopIteration):
            pass
    return total


class PeakMemory:
    """Peak of :func:`_tree_memory` of this process, sampled by a thread every 50 ms."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_memory(os.getpid()))
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _tree_memory(os.getpid()))


def measure(kind: str, path: str, workers: int, images: int, precision: str, device_name: str = "cpu") -> dict:
    import torch

    from labelrefinery.augment import RandomResizedCrop
    from labelrefinery.batch import Pipeline
    from labelrefinery.data import load_dataset, read_batches
    from labelrefinery.device import resolve_precision

    torch.manual_seed(0)
    peak = PeakMemory()
    started = time.perf_counter()
    if kind.startswith("ours"):
        ds = load_dataset(f"folder:{path}", image_size=256, in_memory="no", workers=workers,
                          cache_dir=os.path.join(os.path.dirname(path), "cache"), device=torch.device(device_name))
        files = ds.train.images
        order = torch.randperm(len(files))[:images]
    else:
        from torchvision import datasets, transforms

        tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                 transforms.ToTensor(), transforms.Normalize([0.485, 0.456, 0.406],
                                                                            [0.229, 0.224, 0.225])])
        folder = datasets.ImageFolder(os.path.join(path, "train"), transform=tf)
        order = torch.randperm(len(folder))[:images]
        subset = torch.utils.data.Subset(folder, order.tolist())
    setup = time.perf_counter() - started
    device = torch.device(device_name)
    amp = resolve_precision(precision, device)
    gen = torch.Generator().manual_seed(0)
    crop = RandomResizedCrop(224)
    count, start = 0, time.perf_counter()
    if kind == "ours-loader":
        batches = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
        views = [crop.draw(len(idx), 256, 256, gen) for idx in batches]  # as train_one_epoch does
        for raw in read_batches(files, batches, views, crop):
            x = raw.float().div_(255)
            count += len(x)
    elif kind == "conventional-loader":
        loader = torch.utils.data.DataLoader(subset, batch_size=BATCH, num_workers=workers)
        for x, _ in loader:
            count += len(x)
    else:
        from torchvision.models import resnet18

        from labelrefinery.engine import EpochSteps, TrainData, train_one_epoch
        from labelrefinery.targets import StoredTargets

        model = resnet18(num_classes=CLASSES).to(device, memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        if kind == "ours-train":
            pipeline = Pipeline.create(device, ds.mean, ds.std, amp)
            picked = files[order]
            targets = StoredTargets(ds.train.labels[order].to(device), num_classes=CLASSES)
            stats = train_one_epoch(model, opt, TrainData(picked, targets), pipeline,
                                    EpochSteps(BATCH // 2, gen, augment=crop))
            count = int(round(stats["images_per_s"] * stats["epoch_time_s"]))
        else:
            loader = torch.utils.data.DataLoader(subset, batch_size=BATCH // 2, num_workers=workers, drop_last=True,
                                                 pin_memory=device.type == "cuda")
            model.train()
            for x, y in loader:
                x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                y = y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    loss = torch.nn.functional.cross_entropy(model(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                count += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"kind": kind, "device": device_name, "folder": path, "workers": workers, "images": count, "seconds": elapsed,
            "images_per_s": count / elapsed, "setup_s": setup, "peak_memory_mb": peak.stop() / 2**20}


# --------------------------------------------------------------------------- driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/stream-bench"), help="where the folders are made")
    parser.add_argument("--images", type=int, default=20000, help="training images of the larger folder")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of both pipelines")
    parser.add_argument("--loader-images", type=int, default=0,
                        help="images read per loader measurement (0 = every training image of the folder)")
    parser.add_argument("--train-images", type=int, default=512, help="images per training measurement")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--out", type=Path, default=None, help="write every figure to this JSON file")
    parser.add_argument("--device", default="cpu", help="training device of the train measurements (cpu, cuda)")
    parser.add_argument("--one", nargs=6, metavar=("KIND", "PATH", "WORKERS", "IMAGES", "PRECISION", "DEVICE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        kind, path, workers, images, precision, device = args.one
        print(json.dumps(measure(kind, path, int(workers), int(images), precision, device)))
        return

    from benchmeta import run_metadata
    from labelrefinery.device import cpu_features

    meta = run_metadata()
    t0 = time.perf_counter()
    full, quarter = make_folder(args.root, args.images)
    made = time.perf_counter() - t0
    rows = []

    def one(kind: str, folder: Path, images: int) -> dict:
        out = subprocess.run([sys.executable, __file__, "--one", kind, str(folder), str(args.workers), str(images),
                              args.precision, args.device], capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        rows.append(row)
        print(f"{kind:20s} {folder.name:8s} {row['images']:6d} images  {row['images_per_s']:7.1f} images/s  "
              f"peak memory {row['peak_memory_mb']:6.0f} MB", flush=True)
        return row

    sizes = {folder: sum(1 for _ in (folder / "train").rglob("*.jpg")) for folder in (full, quarter)}
    for folder in (quarter, full):
        n = args.loader_images or sizes[folder]
        for kind in ("ours-loader", "conventional-loader"):
            one(kind, folder, min(n, sizes[folder]))
    for kind in ("ours-train", "conventional-train"):
        one(kind, full, args.train_images)
    result = {"meta": meta, "cpu_features": cpu_features(), "workers": args.workers, "precision": args.precision,
              "device": args.device,
              "folder_images": {str(k): v for k, v in sizes.items()}, "make_folder_s": made, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))


if __name__ == "__main__":
    main()
