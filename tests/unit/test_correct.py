"""Refined labels corrected on verified labels (noise.correct): the map, its cross-validation, its use."""

import pytest
import torch

from labelrefinery.noise import fit_verified_correction


def _confused_refinery(n=300, seed=1):
    """Rows of a refinery that calls half the images of class 0 class 1 (p = 0.35 / 0.6): learned noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    p = torch.full((n, 3), 0.1)
    p[torch.arange(n), y] = 0.8
    confused = (y == 0) & (torch.rand(n, generator=g) < 0.5)
    p[confused] = torch.tensor([0.35, 0.6, 0.05])
    return p, y, confused


def test_the_correction_learns_what_the_refinery_confuses_and_says_so_out_of_fold():
    p, y, confused = _confused_refinery()
    c = fit_verified_correction(p, y)
    assert c.before == pytest.approx(100 * float((p.argmax(1) == y).float().mean()))
    assert c.before < 85 and c.after == 100.0  # out of fold: each image corrected by a map fitted without it
    fixed = c(p)
    assert torch.allclose(fixed.sum(1), torch.ones(len(p))) and fixed.dtype == torch.float32
    assert (fixed[confused].argmax(1) == 0).all() and (fixed[~confused].argmax(1) == y[~confused]).all()
    again = fit_verified_correction(p, y)
    assert torch.equal(again.weight, c.weight) and c.strength in (1e-3, 1e-2, 1e-1, 1.0)
    assert c.inputs == "log-probabilities"
    assert set(c.record()) == {"inputs", "strength", "verified_top1_before", "verified_top1_after"}


def test_a_refinery_that_is_right_is_left_almost_as_it_is():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (200,), generator=g)
    p = torch.full((200, 4), 0.05)
    p[torch.arange(200), y] = 0.85
    c = fit_verified_correction(p, y)
    assert c.before == c.after == 100.0 and (c(p).argmax(1) == y).all()
    assert c(torch.full((1, 4), 0.25)).argmax(1).item() in range(4)  # an unsure row stays a distribution


def test_features_win_where_the_refinerys_outputs_hide_what_its_features_show():
    """Two classes that the refinery's layer merges (same logits) but one feature separates: only a layer refitted
    on the features can correct them, and cross-validation picks it; without features, log-probabilities."""
    g = torch.Generator().manual_seed(0)
    n = 400
    y = torch.randint(0, 2, (n,), generator=g)
    features = torch.stack([torch.randn(n, generator=g), y.double() * 2 - 1 + 0.3 * torch.randn(n, generator=g)], 1)
    weight, bias = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.zeros(2)  # the refinery reads feature 0 only
    probs = (features.float() @ weight.T + bias).softmax(1)
    c = fit_verified_correction(probs, y, features, (weight, bias))
    assert c.inputs == "features" and c.before < 60 and c.after > 95
    assert (c(probs, features).argmax(1) == y).float().mean() > 0.95
    with pytest.raises(ValueError, match="pass them"):
        c(probs)
    assert fit_verified_correction(probs, y).inputs == "log-probabilities"


def test_labels_no_correction_improves_are_left_as_they_are():
    """Verified labels drawn from the refinery's own probabilities (a perfectly calibrated refinery): out of fold
    no layer beats its labels, so they are left as they are (inputs "none", the identity)."""
    g = torch.Generator().manual_seed(1)
    probs = (torch.randn(200, 4, generator=g) * 2).softmax(1)
    y = torch.multinomial(probs, 1, generator=g).squeeze(1)
    c = fit_verified_correction(probs, y)
    assert c.inputs == "none" and c.after == c.before and torch.equal(c(probs), probs.float())
