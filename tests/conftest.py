"""Shared fixtures and helpers, seen by every folder below (unit/, e2e/, faults/).

The one tiny run: ``TINY`` (digits, 1 epoch, 2 generations, 1 thread) started by :func:`tiny_run`, and
``finished_tiny_run``, one such run (with ``--ensemble 1,2``) finished once per session, to copy.
"""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from labelrefinery.cli import main
from labelrefinery.data import DEBIAN_FASHION_MNIST

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session", autouse=True)
def _no_home_cache(tmp_path_factory):
    """Converted datasets (e.g. ``folder:PATH`` without ``--data-dir``) are cached in a temporary
    ``$XDG_CACHE_HOME``, never in the real ``~/.cache/labelrefinery``."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    yield
    mp.undo()


class interrupt_after_first_epoch:
    """Within ``with``: a KeyboardInterrupt right after ``gen_dir``'s first ``train-state.pt`` is written."""

    def __init__(self, monkeypatch, gen_dir: str = "gen-2"):
        import labelrefinery.fileio as fileio_module  # the run directory's writes look it up there at write time

        self.mp, self.module, self.gen_dir = monkeypatch, fileio_module, gen_dir
        self.real = fileio_module.atomic_write_bytes

    def __enter__(self):
        def stop(path, data):
            self.real(path, data)
            if path.name == "train-state.pt" and path.parent.name == self.gen_dir:
                raise KeyboardInterrupt

        self.mp.setattr(self.module, "atomic_write_bytes", stop)
        return self

    def __exit__(self, *exc):
        self.mp.setattr(self.module, "atomic_write_bytes", self.real)
        return False


HAVE_FASHION_MNIST = (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists()
needs_fashion_mnist = pytest.mark.skipif(
    not HAVE_FASHION_MNIST, reason="apt-get install dataset-fashion-mnist (the README's setup does)"
)


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write ``array`` (uint8) in the IDX format of MNIST / Fashion-MNIST."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.fixture
def tiny_idx_dir(tmp_path: Path) -> Path:
    """A directory with the four Fashion-MNIST IDX files holding 120 train and 40 test random images."""
    rng = np.random.default_rng(0)
    d = tmp_path / "fmnist"
    d.mkdir()
    write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (120, 28, 28)))
    write_idx(d / "train-labels-idx1-ubyte.gz", np.arange(120) % 10)
    write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (40, 28, 28)))
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.arange(40) % 10)
    return d


# --------------------------------------------------------------------------- the tiny run

TINY = ["--dataset", "digits", "--epochs", "1", "--generations", "2", "--no-progress", "--threads", "1"]
"""The tiny digits run's flags (after ``run``): a few seconds on one core."""

SHORT_RUN = ["run", "--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--no-progress"]
"""The label-noise tests' run (``run`` included): 2 epochs of batch 64, all cores."""


def tiny_run(runs_dir, name: str, *extra: str) -> int:
    """``refinery run`` with :data:`TINY` (``extra`` flags after it win) into ``runs_dir/name``; its exit status."""
    return main(["run", *TINY, "--runs-dir", str(runs_dir), "--name", name, *extra])


@pytest.fixture(scope="session")
def finished_tiny_run(tmp_path_factory) -> Path:
    """A finished tiny run (2 generations, offline labels, ensemble 1,2), made once per session: copy it before
    changing anything in it."""
    d = tmp_path_factory.mktemp("finished")
    assert tiny_run(d, "run", "--ensemble", "1,2") == 0
    return d / "run"


def run_cli(args, tmp_path):
    """``refinery ARGS`` into ``tmp_path/runs`` without progress bars; its exit status."""
    return main(args + ["--runs-dir", str(tmp_path / "runs"), "--no-progress"])


# --------------------------------------------------------------------------- shared data

@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits (8 x 8 px), as the package loads them."""
    from labelrefinery.data import load_digits

    return load_digits()


@pytest.fixture(scope="session")
def trained_refinery(digits):
    """A convnet trained on digits for a few epochs (in eval mode) and its pipeline: the refinery of the tests of
    per-batch targets and checkpoints."""
    from labelrefinery.batch import Pipeline
    from labelrefinery.config import resolve_config
    from labelrefinery.engine import TrainData, TrainSetup, fit
    from labelrefinery.models import ModelSpec, build_model
    from labelrefinery.targets import StoredTargets

    cfg = resolve_config("quick", {"epochs": 6, "batch_size": 128}).training
    p = Pipeline.create(torch.device("cpu"), digits.mean, digits.std)
    torch.manual_seed(0)
    model = build_model(ModelSpec("convnet", 10, 1, 8))
    fit(model, TrainData(digits.train.images, StoredTargets(digits.train.labels), digits.test.images,
                         digits.test.labels), TrainSetup(cfg, p, (0, 1)))
    return model.eval(), p


CLASSES = ["zero", "one", "two"]


@pytest.fixture(scope="session")
def digit_folder(tmp_path_factory) -> Path:
    """300 small JPEG and PNG files (scikit-learn's digits 0, 1 and 2, enlarged to 24 px and coloured) in the
    ImageNet layout ``train/<class>/``, ``val/<class>/`` (class names :data:`CLASSES`)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digit-folder")
    digits = load_digits()
    rng = np.random.default_rng(0)
    count = {}
    for image, label in zip(digits.images, digits.target):
        if label > 2:
            continue
        i = count.get(label, 0)
        if i >= 100:
            continue
        count[label] = i + 1
        split = "val" if i % 5 == 0 else "train"
        folder = root / split / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        gray = np.kron(image / 16 * 255, np.ones((3, 3)))  # 24 x 24
        rgb = np.stack([gray, gray * rng.uniform(0.5, 1), gray * rng.uniform(0.5, 1)], -1).clip(0, 255)
        im = Image.fromarray(rgb.astype(np.uint8))
        im.save(folder / f"{i:03d}.{'jpg' if i % 2 else 'png'}")
    return root
