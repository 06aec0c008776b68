"""The published noise-robust methods ``benchmarks/refinery_gain.py --peers`` trains (``benchmarks/noise_peers.py``):
each method's own rule on hand-made logits, without training."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

BENCH = Path(__file__).resolve().parent.parent.parent / "benchmarks"


@pytest.fixture
def peers(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("noise_peers")


def test_plc_relabels_where_the_given_label_is_unlikely_and_widens_when_nothing_changes(peers):
    labels = torch.tensor([0, 1, 2])
    probs = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])
    new, delta, changed = peers.lrt_correction(labels, probs, 0.3)
    assert new.tolist() == [1, 1, 2] and changed == 1 and delta == 0.3  # 0.1 < 0.3 * 0.9; 0.4 >= 0.3 * 0.5
    again, delta, changed = peers.lrt_correction(new, probs, 0.3)
    assert again.tolist() == [1, 1, 2] and changed == 0 and delta == pytest.approx(0.4)
    assert peers.lrt_correction(torch.arange(3), torch.eye(3), 0.85)[1] == 0.9  # nothing changed: capped


def test_plc_corrects_after_each_epoch_from_the_warmup_on_and_keeps_the_given_labels(peers):
    given = torch.tensor([0, 0, 1, 1])
    plc = peers.PLC(given, 2, warmup=1, window=2)
    logits = torch.tensor([[5.0, -5.0], [-5.0, 5.0], [-5.0, 5.0], [-5.0, 5.0]])  # image 1 looks like class 1
    for half in (torch.tensor([0, 1]), torch.tensor([2, 3])):
        batch = plc.for_batch(half, torch.zeros(2, 1, 2, 2), None, None, None)
        plc.loss(logits[half], batch.targets)
    assert plc.labels.tolist() == [0, 1, 1, 1] and plc.changed == [1] and plc.epoch == 1
    assert given.tolist() == [0, 0, 1, 1]


def test_coteaching_fits_each_network_to_the_images_the_other_finds_easy(peers):
    k, targets = 3, torch.tensor([0, 0, 0, 0])
    first = torch.tensor([[4.0, 0, 0], [4.0, 0, 0], [0, 4.0, 0], [0, 4.0, 0]])  # easy: images 0, 1
    second = torch.tensor([[0, 4.0, 0], [0, 4.0, 0], [4.0, 0, 0], [4.0, 0, 0]])  # easy: images 2, 3
    rule = peers.CoTeaching(k, forget_rate=0.5, ramp_steps=1)
    logits = torch.cat([first, second], 1).requires_grad_(True)
    rule.loss(logits, targets).backward()  # step 0: nothing dropped yet
    assert (logits.grad.abs().sum(1) > 0).all()
    logits.grad = None
    loss = rule.loss(logits, targets)  # step 1: half dropped
    loss.backward()
    touched_first = logits.grad[:, :k].abs().sum(1) > 0
    touched_second = logits.grad[:, k:].abs().sum(1) > 0
    assert touched_first.tolist() == [False, False, True, True]  # the second network's easy images
    assert touched_second.tolist() == [True, True, False, False]
    expected = F.cross_entropy(first[2:], targets[2:]) + F.cross_entropy(second[:2], targets[:2])
    assert loss.item() == pytest.approx(expected.item())


def test_coteaching_pair_trains_both_and_scores_the_first(peers):
    torch.manual_seed(0)
    pair = peers.CoTeachingPair(nn.Linear(4, 3), nn.Linear(4, 3))
    x = torch.randn(5, 4)
    assert pair.train()(x).shape == (5, 6)
    assert torch.equal(pair.eval()(x), pair.first(x))


def test_elr_keeps_a_running_average_of_each_images_predictions(peers):
    elr = peers.ELR(torch.tensor([0, 1, 2]), 3, lam=3.0, beta=0.7)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    batch = elr.for_batch(torch.tensor([0, 2]), torch.zeros(2, 1, 1, 1), None, None, None)
    loss = elr.loss(logits, batch.targets)
    p = logits.softmax(1).clamp(1e-4, 1 - 1e-4)
    t = 0.3 * p / p.sum(1, keepdim=True)
    assert torch.allclose(elr.target[[0, 2]], t) and elr.target[1].abs().sum() == 0
    expected = F.cross_entropy(logits, torch.tensor([0, 2])) + 3.0 * (1 - (t * p).sum(1)).log().mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.fixture
def dividemix(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("dividemix")


def test_dividemix_divides_by_a_two_component_mixture_of_the_losses(dividemix):
    g = torch.Generator().manual_seed(0)
    losses = torch.cat([0.1 * torch.rand(80, generator=g), 2.0 + torch.rand(20, generator=g)])  # 20 high: "noisy"
    w = dividemix.clean_probability(losses)
    assert w.shape == (100,) and w.dtype == torch.float32
    assert (w[:80] > 0.9).all() and (w[80:] < 0.1).all()  # the low-loss component is the clean one


def test_dividemix_sharpens_and_augments_as_stated(dividemix):
    p = torch.tensor([[0.6, 0.4], [0.5, 0.5]])
    assert torch.allclose(dividemix.sharpen(p), torch.tensor([[0.36 / 0.52, 0.16 / 0.52], [0.5, 0.5]]))
    x = torch.zeros(64, 1, 9, 11)
    x[:, 0, 4, 2] = 1.0  # one lit pixel, 2 px from the left edge: a 2-px shift keeps it in the image
    out = dividemix.shift_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and (out.sum((1, 2, 3)) == 1).all()
    rows, cols = out[:, 0].nonzero()[:, 1], out[:, 0].nonzero()[:, 2]
    assert ((rows - 4).abs() <= 2).all() and (rows != 4).any()  # shifted by at most 2 px, and shifted
    assert (((cols - 2).abs() <= 2) | ((cols - 8).abs() <= 2)).all()  # as it was, or mirrored (10 - 2 = 8)
    assert (cols >= 6).any() and (cols <= 4).any()  # both happen


@pytest.mark.slow
def test_dividemix_trains_both_networks_on_each_others_division(dividemix):
    from labelrefinery.batch import Pipeline
    from labelrefinery.config import resolve_config
    from labelrefinery.data import load_dataset

    ds = load_dataset("digits")
    images, clean = ds.train.images[:600], ds.train.labels[:600]
    g = torch.Generator().manual_seed(0)
    flip = torch.rand(600, generator=g) < 0.3
    given = torch.where(flip, (clean + 1) % 10, clean)
    cfg = resolve_config("quick", {"epochs": 3, "batch_size": 64})
    torch.manual_seed(0)
    nets = tuple(nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 10))
                 for _ in range(2))
    before = [n[1].weight.detach().clone() for n in nets]
    pipe = Pipeline.create(torch.device("cpu"), ds.mean, ds.std)
    dm = dividemix.DivideMix(nets, cfg, pipe, torch.Generator().manual_seed(1), 10)
    history = dm.fit(images, given, (ds.train.images[600:800], ds.train.labels[600:800]))
    assert len(history["val_top1"]) == 3 and len(history["labelled"]) == 4  # 2 epochs after the warm-up x 2 nets
    assert all(0.3 < s < 1.0 for s in history["labelled"])  # a division, neither everything nor nothing
    assert all(not torch.equal(b, n[1].weight) for b, n in zip(before, nets))  # both trained
    # the best epoch's weights and BatchNorm statistics are the ones kept: the same score, exactly
    assert dm.score(ds.train.images[600:800], ds.train.labels[600:800]) == max(history["val_top1"])
    assert dm.probabilities(images[:5]).sum(1).allclose(torch.ones(5))
