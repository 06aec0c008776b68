import gzip

import numpy as np
import pytest
import torch

from labelrefinery.data import (DataError, ImageData, load_dataset, load_digits, load_fashion_mnist, read_idx,
                                stratified_split)
from labelrefinery.errors import ConfigError

from ..conftest import needs_fashion_mnist, write_idx


def test_read_idx_round_trip_gz_and_raw(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.gz", a)), a)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a", a, compress=False)), a)


def test_read_idx_truncated_names_file_and_fix(tmp_path):
    a = np.zeros((10, 28, 28), dtype=np.uint8)
    p = write_idx(tmp_path / "train-images-idx3-ubyte", a, compress=False)
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*truncated or corrupt.*fetch the dataset again"):
        read_idx(p)


def test_read_idx_bad_magic_and_bad_gzip(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"\x12\x34\x08\x01" + bytes(8))
    with pytest.raises(DataError, match="bad magic"):
        read_idx(p)
    g = tmp_path / "y.gz"
    g.write_bytes(gzip.compress(b"\0\0\x08\x01" + (5).to_bytes(4, "big") + bytes(5))[:-6])
    with pytest.raises(DataError, match="cannot read"):
        read_idx(g)


def test_fashion_mnist_from_data_dir(tiny_idx_dir, tmp_path):
    ds = load_fashion_mnist(tiny_idx_dir, debian_dir=tmp_path / "nowhere")
    assert ds.train.images.shape == (120, 1, 28, 28) and ds.train.images.dtype == torch.uint8
    assert ds.test.labels.tolist() == [i % 10 for i in range(40)]
    assert ds.classes[0] == "T-shirt/top" and ds.hflip_keeps_class


def test_fashion_mnist_missing_everywhere_lists_three_ways(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(tvd.FashionMNIST, "download", no_network)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        load_fashion_mnist(tmp_path / "empty", debian_dir=tmp_path / "nowhere")
    msg = str(e.value)
    assert "\n" not in msg
    assert "--data-dir" in msg and "apt-get install dataset-fashion-mnist" in msg and "download" in msg


def test_labels_out_of_range_rejected(tiny_idx_dir, tmp_path):
    write_idx(tiny_idx_dir / "t10k-labels-idx1-ubyte.gz", np.full(40, 12))
    with pytest.raises(DataError, match=r"label 12 is outside \[0, 10\)"):
        load_fashion_mnist(tiny_idx_dir, debian_dir=tmp_path / "nowhere")


def test_image_data_rejects_float_images():
    with pytest.raises(DataError, match="uint8"):
        ImageData(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64), ["a", "b"])


@needs_fashion_mnist
def test_real_fashion_mnist():
    ds = load_dataset("fashion-mnist")
    assert ds.train.images.shape == (60000, 1, 28, 28)
    assert ds.test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train.labels).tolist() == [6000] * 10
    assert 0.2 < ds.mean[0] < 0.4


def test_digits_split_fixed():
    a, b = load_digits(), load_digits()
    assert len(a.train) == 1437 and len(a.test) == 360
    assert torch.equal(a.test.labels, b.test.labels)
    assert a.train.images.max() == 255 and not a.hflip_keeps_class


def test_unknown_dataset_lists_known():
    with pytest.raises(ConfigError, match="known datasets: fashion-mnist"):
        load_dataset("imagenet-21k")


def test_stratified_split():
    labels = torch.arange(1000) % 10
    keep, held = stratified_split(labels, 0.15, seed=3)
    assert len(held) == 150 and len(keep) == 850
    assert torch.bincount(labels[held]).tolist() == [15] * 10
    assert set(keep.tolist()).isdisjoint(held.tolist())
    assert torch.equal(held, stratified_split(labels, 0.15, seed=3)[1])
    assert not torch.equal(held, stratified_split(labels, 0.15, seed=4)[1])


def test_synthetic_is_seeded_and_learnable_shape():
    from labelrefinery.data import load_synthetic

    a = load_synthetic(num_train=300, num_test=100, size=16)
    b = load_synthetic(num_train=300, num_test=100, size=16)
    assert a.train.images.shape == (300, 3, 16, 16) and torch.equal(a.train.images, b.train.images)
    # class templates differ: per-class mean images are far apart
    means = torch.stack([a.train.images[a.train.labels == k].float().mean(0) for k in range(10)])
    assert torch.cdist(means.flatten(1), means.flatten(1)).fill_diagonal_(1e9).min() > 50


def test_data_dir_typo_and_partial_files_are_errors_not_fallbacks(tiny_idx_dir, tmp_path):
    with pytest.raises(DataError, match="is not a directory"):
        load_fashion_mnist(tmp_path / "no-such-dir", debian_dir=tiny_idx_dir)
    (tiny_idx_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte missing"):
        load_fashion_mnist(tiny_idx_dir, debian_dir=tmp_path / "nowhere")


def test_gzip_corrupted_in_the_middle(tiny_idx_dir, tmp_path):
    p = tiny_idx_dir / "train-images-idx3-ubyte.gz"
    raw = bytearray(p.read_bytes())
    for i in range(200, 260):
        raw[i] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="cannot read .*train-images-idx3-ubyte.gz"):
        load_fashion_mnist(tiny_idx_dir, debian_dir=tmp_path / "nowhere")


def test_validation_split_too_small():
    with pytest.raises(ConfigError, match="--val-fraction between"):
        stratified_split(torch.arange(1000) % 10, 0.001, seed=0)


def test_item_rows_put_the_image_in_the_centre_and_other_classes_beside_it():
    from labelrefinery.data.rows import item_rows, row_neighbours

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    images = torch.randint(0, 256, (200, 1, 28, 28), dtype=torch.uint8, generator=g)
    rows = item_rows(ImageData(images, labels, list("abcd")), seed=3)
    assert rows.images.shape == (200, 1, 56, 56) and torch.equal(rows.labels, labels)
    assert torch.equal(rows.images[:, :, 14:42, 14:42], images)  # the labelled item, whole, in the centre
    assert not rows.images[:, :, :14].any() and not rows.images[:, :, 42:].any()  # one row of items
    right_halves, left_halves = images[:, :, :, 14:], images[:, :, :, :14]
    drawn = []
    for i in range(200):  # each neighbour half is an image of this split from another class
        left = (right_halves == rows.images[i, :, 14:42, :14]).flatten(1).all(1).nonzero().flatten()
        right = (left_halves == rows.images[i, :, 14:42, 42:]).flatten(1).all(1).nonzero().flatten()
        assert len(left) == 1 and len(right) == 1
        assert labels[left[0]] != labels[i] and labels[right[0]] != labels[i]
        drawn += [int(labels[left[0]]), int(labels[right[0]])]
        neighbours = row_neighbours(ImageData(images, labels, list("abcd")), seed=3)[i]
        assert [labels[left[0]], labels[right[0]]] == [labels[neighbours[0]], labels[neighbours[1]]]
    assert set(drawn) == {0, 1, 2, 3}  # every other class is drawn
    again = item_rows(ImageData(images, labels, list("abcd")), seed=3)
    assert torch.equal(again.images, rows.images)  # deterministic
    assert not torch.equal(item_rows(ImageData(images, labels, list("abcd")), seed=4).images, rows.images)


@needs_fashion_mnist
def test_fashion_mnist_rows_are_stable_across_versions():
    """The recipe is fixed: these checksums change only if the dataset does (then say so in the README)."""
    import hashlib

    ds = load_dataset("fashion-mnist-rows")
    assert ds.image_shape == (1, 56, 56) and len(ds.train) == 60000 and len(ds.test) == 10000
    digest = {name: hashlib.sha256(s.images.numpy().tobytes() + s.labels.numpy().tobytes()).hexdigest()
              for name, s in (("train", ds.train), ("test", ds.test))}
    assert digest == {"train": "3a28d98c62955046a5534c4ed1422fbe2b0bb4a35899440b9bcfc10035ab3d28",
                      "test": "44c9b6724ed83311b8b2581d28b35179b60f6119e71436c613864108c224f773"}
    plain = load_fashion_mnist()
    assert torch.equal(ds.test.labels, plain.test.labels) and ds.classes == plain.classes
