"""Fingerprint of five small runs: the SHA-256 of every generation's labels.npz and model.safetensors.

A restructure that changes no behaviour leaves every fingerprint identical. Run it before and after a change,
on the same machine, and compare (``diff``)::

    .venv/bin/python scripts/fingerprint.py --out /tmp/before.json   # at the old commit
    .venv/bin/python scripts/fingerprint.py --out /tmp/after.json    # at the new one
    diff /tmp/before.json /tmp/after.json && echo identical

The five configurations cover the paths a restructure can break: offline soft labels, per-crop online labels
with crops, injected noise with the symmetric posterior, the class-wise posterior with float16 storage, and
static augmented copies with top-k labels and both controls. Each runs on scikit-learn's digits, one thread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

from labelrefinery.cli import main

BASE = ["--dataset", "digits", "--epochs", "2", "--generations", "2", "--no-progress", "--threads", "1",
        "--precision", "fp32"]
CONFIGS = {
    "offline-soft": [],
    "online-crop": ["--labels", "online", "--augment", "crop"],
    "noise-auto": ["--label-noise", "symmetric:0.3", "--noise-prior", "auto"],
    "noise-classwise-f16": ["--label-noise", "pairflip:0.3", "--noise-prior", "classwise", "--label-storage",
                            "float16"],
    "static-topk-controls": ["--augment", "static", "--label-form", "topk:3", "--controls"],
}


def _content(path: Path) -> bytes:
    """What must not change: a labels.npz whole; a model.safetensors's tensors (names, dtypes, shapes, bytes),
    not its metadata, which names the run's temporary directory."""
    if path.suffix != ".safetensors":
        return path.read_bytes()
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    return b"".join(k.encode() + str(v.dtype).encode() + str(v.shape).encode() + v.tobytes()
                    for k, v in sorted(tensors.items()))


def fingerprint(root: Path) -> dict[str, str]:
    """SHA-256 of each labels.npz and model.safetensors's weights under ``root``, by path relative to it."""
    files = sorted(p for name in ("labels.npz", "model.safetensors") for p in root.rglob(name))
    return {str(p.relative_to(root)): hashlib.sha256(_content(p)).hexdigest() for p in files}


def main_(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file of the fingerprints")
    args = parser.parse_args(argv)
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in CONFIGS.items():
            if main(["run", *BASE, *extra, "--runs-dir", tmp, "--name", name]) != 0:
                raise SystemExit(f"configuration {name} failed")
            result[name] = fingerprint(Path(tmp) / name)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"{args.out}: {sum(len(v) for v in result.values())} files in {len(result)} configurations")
    return 0


if __name__ == "__main__":
    raise SystemExit(main_())
