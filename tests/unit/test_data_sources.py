"""Loaders for datasets that cannot be downloaded here, each tested on tiny files in its real on-disk format."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from PIL import Image

from labelrefinery.data import DataError, ImageFiles, load_dataset, read_all, read_batches

from ..conftest import CLASSES, write_idx


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def no_download(monkeypatch):
    def refuse(self, *a, **k):
        raise OSError("no network in tests")

    for cls in (tvd.CIFAR10, tvd.CIFAR100, tvd.SVHN, tvd.MNIST):
        monkeypatch.setattr(cls, "download", refuse)


def write_cifar10(root, monkeypatch, n_per_batch=6):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    train_list, test_list = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 "labels": [int(x) for x in rng.integers(0, 10, n_per_batch)], "batch_label": name}
        (base / name).write_bytes(pickle.dumps(entry, protocol=2))
        (test_list if name == "test_batch" else train_list).append([name, md5(base / name)])
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, protocol=2))
    monkeypatch.setattr(tvd.CIFAR10, "train_list", train_list)
    monkeypatch.setattr(tvd.CIFAR10, "test_list", test_list)
    monkeypatch.setattr(tvd.CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names",
                                               "md5": md5(base / "batches.meta")})
    return base


def test_cifar10_pickle_batches(tmp_path, monkeypatch, no_download):
    base = write_cifar10(tmp_path, monkeypatch)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.train.images.shape == (30, 3, 32, 32) and ds.test.images.shape == (6, 3, 32, 32)
    assert ds.classes[3] == "cat" and ds.hflip_keeps_class
    first = pickle.loads((base / "data_batch_1").read_bytes())
    # CIFAR rows are 1024 red, then green, then blue values, row-major.
    assert torch.equal(ds.train.images[0], torch.from_numpy(first["data"][0].reshape(3, 32, 32)))
    assert ds.train.labels[:6].tolist() == first["labels"]
    assert (tmp_path / "labelrefinery-cache" / "cifar10.safetensors").exists()
    # Second load comes from the cache, even with the source gone.
    for f in base.iterdir():
        f.unlink()
    assert torch.equal(load_dataset("cifar10", tmp_path).train.images, ds.train.images)


def test_cifar10_corrupt_batch_is_reported(tmp_path, monkeypatch, no_download):
    base = write_cifar10(tmp_path, monkeypatch)
    (base / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cifar10 not found or corrupt in --data-dir"):
        load_dataset("cifar10", tmp_path)


def test_svhn_mat(tmp_path, monkeypatch, no_download):
    from scipy.io import savemat

    d = tmp_path / "svhn"
    d.mkdir()
    rng = np.random.default_rng(0)
    split_list = {}
    for split, n in (("train", 12), ("test", 5), ("extra", 7)):
        y = np.array([10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 3][:n]).reshape(n, 1)
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        savemat(d / f"{split}_32x32.mat", {"X": x, "y": y})
        split_list[split] = ["", f"{split}_32x32.mat", md5(d / f"{split}_32x32.mat")]
        if split == "train":
            first = x[:, :, :, 0]
    monkeypatch.setattr(tvd.SVHN, "split_list", split_list)
    ds = load_dataset("svhn", d)
    assert ds.train.images.shape == (12, 3, 32, 32) and len(ds.test) == 5
    assert ds.train.labels[:2].tolist() == [0, 1]  # label 10 means digit 0
    assert torch.equal(ds.train.images[0], torch.from_numpy(first.transpose(2, 0, 1).copy()))
    assert not ds.hflip_keeps_class
    assert len(load_dataset("svhn", d, svhn_extra=True).train) == 19


def test_mnist_idx_in_torchvision_layout(tmp_path, no_download):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((30, 28, 28)), compress=False)
    write_idx(raw / "train-labels-idx1-ubyte", np.arange(30) % 10, compress=False)
    write_idx(raw / "t10k-images-idx3-ubyte.gz", np.ones((10, 28, 28)))
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.arange(10))
    ds = load_dataset("mnist", tmp_path)
    assert len(ds.train) == 30 and ds.test.images.max() == 1 and not ds.hflip_keeps_class


def test_missing_torchvision_dataset(tmp_path, no_download):
    with pytest.raises(DataError, match="svhn not found or corrupt"):
        load_dataset("svhn", tmp_path)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # never the real ~/.cache
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for split, classes in (("train", ["bird", "Cat", "dog"]), ("val", ["Cat", "dog"])):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(root / split / c / "rgb.png")
            Image.fromarray(rgb[:, :, 0]).save(root / split / c / "gray.png")  # L
            Image.fromarray(rgb).convert("P").save(root / split / c / "palette.png")
            Image.fromarray(rgb).convert("RGBA").save(root / split / c / "rgba.png")
            Image.fromarray(rgb).convert("CMYK").save(root / split / c / "cmyk.jpg")
    return root


def test_image_folder(folder, tmp_path):
    ds = load_dataset(f"folder:{folder}", image_size=16)
    assert ds.classes == ["Cat", "bird", "dog"]  # torchvision's sort: case-sensitive
    assert ds.train.images.shape == (15, 3, 16, 16) and ds.train.images.dtype == torch.uint8
    assert len(ds.test) == 10
    # val lacks "bird" but keeps the training indices: Cat = 0, dog = 2
    assert sorted(set(ds.test.labels.tolist())) == [0, 2]
    gray = ds.train.images[ds.train.labels == 0][1]  # gray.png: the three channels are equal
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    # The converted images are cached under $XDG_CACHE_HOME/labelrefinery, never inside the image tree.
    assert list((tmp_path / "cache" / "labelrefinery").glob("folder-*-16px-*.safetensors"))
    assert not (folder / "labelrefinery-cache").exists()


def test_image_folder_corrupt_file_named(folder):
    bad = folder / "train" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"cannot read image .*broken\.png"):
        load_dataset(f"folder:{folder}", image_size=16)


def test_image_folder_val_class_unknown(folder):
    (folder / "val" / "zebra").mkdir()
    with pytest.raises(DataError, match="zebra"):
        load_dataset(f"folder:{folder}", image_size=16)


def test_image_folder_empty_class_refused(folder):
    (folder / "train" / "aaempty").mkdir()
    with pytest.raises(DataError, match=r"train/aaempty holds no images"):
        load_dataset(f"folder:{folder}", image_size=16)


@pytest.mark.multiprocess
def test_streamed_folder_reads_like_the_in_memory_one(digit_folder, tmp_path):
    memory = load_dataset(f"folder:{digit_folder}", image_size=16, in_memory="yes", cache_dir=tmp_path)
    streamed = load_dataset(f"folder:{digit_folder}", image_size=16, in_memory="no", workers=2, cache_dir=tmp_path)
    assert streamed.streamed and not memory.streamed
    assert isinstance(streamed.train.images, ImageFiles) and streamed.train.images.shape == (240, 3, 16, 16)
    assert streamed.classes == memory.classes == sorted(CLASSES)
    assert torch.equal(streamed.train.labels, memory.train.labels) and torch.equal(streamed.test.labels,
                                                                                  memory.test.labels)
    assert torch.equal(read_all(streamed.train.images), memory.train.images)  # the same pixels
    assert streamed.mean == memory.mean and streamed.std == memory.std
    # Batches in any order, by worker processes, equal the in-memory rows.
    order = [torch.tensor([5, 0, 239]), torch.tensor([17]), torch.arange(100, 164)]
    for idx, batch in zip(order, read_batches(streamed.train.images, order)):
        assert torch.equal(batch, memory.train.images[idx])
    picked = streamed.train.images[torch.tensor([3, 1])][1:]  # subsets of subsets stay lazy
    assert isinstance(picked, ImageFiles) and torch.equal(picked[0], memory.train.images[1])
    assert not list(digit_folder.rglob("*.safetensors")) and not list(digit_folder.rglob("*.json"))


@pytest.mark.multiprocess
def test_auto_streams_what_does_not_fit(digit_folder, tmp_path, monkeypatch, capsys):
    import labelrefinery.data.folder as folder_module

    monkeypatch.setattr(folder_module, "available_memory", lambda: 100_000)  # 100 kB: the 300 images take 230 kB
    ds = load_dataset(f"folder:{digit_folder}", image_size=16, in_memory="auto", workers=1, cache_dir=tmp_path)
    assert ds.streamed
    assert "streamed from the files by 1 worker process (more than half of the 0.1 MB RAM available; " \
        "--data-in-memory auto)" in capsys.readouterr().err
    monkeypatch.setattr(folder_module, "available_memory", lambda: 10**10)
    assert not load_dataset(f"folder:{digit_folder}", image_size=16, in_memory="auto", cache_dir=tmp_path).streamed
