import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

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
