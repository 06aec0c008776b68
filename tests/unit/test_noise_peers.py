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
