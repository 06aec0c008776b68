"""fp32 training-step settings for the default model: memory format x batch size, and where one step's time goes.

Bare steps (forward, backward, Adam) of ``convnet`` on one fixed batch of 1x28x28
images, 2 threads; the median of 5 timed repeats of 10 steps after 3 warm-up steps,
all settings measured in one process. With ``--profile``, torch.profiler's table
of the default setting (channels_last, batch 256) is printed.

    .venv/bin/python benchmarks/step_settings.py --profile
    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/step_settings.py --profile
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from labelrefinery.device import cpu_features, set_threads
from labelrefinery.models import ModelSpec, build_model


def images_per_s(memory_format: torch.memory_format, batch: int, repeats: int = 5) -> float:
    torch.manual_seed(0)
    model = build_model(ModelSpec("convnet", 10, 1, 28)).to(memory_format=memory_format)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,))

    def step():
        loss = F.cross_entropy(model(x), y)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="128,256,512")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    set_threads(2)
    facts = {"cpu_features": cpu_features(), "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
             "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(json.dumps(facts))
    rows = []
    for batch in map(int, args.batches.split(",")):
        for name, fmt in (("channels_last", torch.channels_last), ("contiguous", torch.contiguous_format)):
            rate = images_per_s(fmt, batch)
            rows.append({"batch": batch, "memory_format": name, "images_per_s": rate})
            print(f"batch {batch:4d}  {name:13s}  {rate:7.0f} images/s", flush=True)
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
            json.dump({**facts, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
