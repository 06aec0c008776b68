"""Prediction (refined labels, validation, test) speed by batch size: what ``engine.prediction_batch_size`` picks.

Times :func:`labelrefinery.engine.predict` of the default model on random 28 x 28 uint8
images at each batch size, in one process, after a warm-up; each figure is the median
of ``--repeats`` timed passes, the sizes interleaved. Prints images/s per batch size and writes JSON.

    .venv/bin/python benchmarks/predict_batch.py --precision fp32 --out FILE
    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/predict_batch.py --precision fp32 --out FILE
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from benchmeta import run_metadata
from labelrefinery.batch import Pipeline
from labelrefinery.device import cpu_features, precision_name, resolve_precision, set_threads
from labelrefinery.inference import predict
from labelrefinery.models import ModelSpec, build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--images", type=int, default=8192, help="images per timed pass")
    parser.add_argument("--batch-sizes", default="128,256,512,1024,2048", help="comma-separated images per pass")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per batch size (the median is reported)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    set_threads(0)
    cpu = torch.device("cpu")
    amp = resolve_precision(args.precision, cpu)
    pipe = Pipeline.create(cpu, [0.286], [0.353], amp)
    torch.manual_seed(0)
    model = build_model(ModelSpec(args.model, 10, 1, 28)).to(memory_format=torch.channels_last)
    images = torch.randint(0, 256, (args.images, 1, 28, 28), dtype=torch.uint8)
    facts = {"cpu_features": cpu_features(), "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
             "precision": precision_name(amp), "threads": torch.get_num_threads(), "torch": torch.__version__,
             "model": args.model, "images": args.images}
    print(json.dumps(facts), flush=True)
    meta = run_metadata()
    predict(model, images, pipe)  # warm-up
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    times: dict[int, list[float]] = {bs: [] for bs in sizes}
    for _ in range(args.repeats):  # interleaved, so that a slow spell of a shared machine hits every size alike
        for bs in sizes:
            start = time.perf_counter()
            predict(model, images, pipe, batch_size=bs)
            times[bs].append(time.perf_counter() - start)
    rates = {bs: args.images / statistics.median(t) for bs, t in times.items()}
    for bs, rate in rates.items():
        print(f"batch {bs:5d}: {rate:7.0f} images/s", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, **facts, "images_per_s": rates}, indent=2) + "\n")


if __name__ == "__main__":
    main()
