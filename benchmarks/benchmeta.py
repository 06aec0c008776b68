"""What every benchmark result records about its run: the one function that writes the ``"meta"`` of a result JSON.

    from benchmeta import run_metadata   # a script run as `python benchmarks/NAME.py` finds it next to itself
    result = {"meta": run_metadata(), ...}

``meta`` holds the git commit of this checkout (and whether its working tree had changes), the exact command
line, the environment variables that change the kernels (``ONEDNN_MAX_CPU_ISA``, ...), the CPU's model name
and SIMD features, the torch version, the CUDA device (if any), torch's thread count, the Python version and
the date and time (UTC). Call it after the script has set its threads.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KERNEL_ENV = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "CUDA_VISIBLE_DEVICES")  # set before a run, they change what is measured


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_metadata(argv: list[str] | None = None) -> dict:
    """The run's provenance as a JSON-ready dict (``argv`` defaults to ``sys.argv``).

    ``commit`` is None (and ``dirty`` None) outside a git checkout; ``cuda_device`` is None without CUDA.
    """
    import torch  # imported here: importing this module stays cheap

    from labelrefinery.device import cpu_features

    argv = list(sys.argv if argv is None else argv)
    head = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain")
    cuda = torch.cuda.is_available()
    return {
        "commit": head.strip() if head else None,
        "dirty": None if status is None else bool(status.strip()),
        "command": shlex.join([sys.executable, *argv]),
        "env": {k: os.environ[k] for k in KERNEL_ENV if k in os.environ},
        "cpu_model": _cpu_model(),
        "cpu_features": cpu_features(),
        "torch": torch.__version__,
        "cuda_device": torch.cuda.get_device_name(torch.cuda.current_device()) if cuda else None,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


if __name__ == "__main__":  # print this machine's metadata
    import json

    print(json.dumps(run_metadata(), indent=1))
