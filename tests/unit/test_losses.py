import pytest
import torch
import torch.nn.functional as F

from labelrefinery.losses import distillation_loss, kl_divergence, smooth_targets, soft_target_cross_entropy


def test_soft_ce_matches_hard_ce_on_one_hot():
    logits = torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    a = soft_target_cross_entropy(logits, F.one_hot(y, 5).float())
    assert torch.allclose(a, F.cross_entropy(logits, y), atol=1e-6)
    assert torch.allclose(soft_target_cross_entropy(logits, y), a, atol=1e-6)


def test_ce_is_kl_plus_entropy_and_kl_zero_at_target():
    logits = torch.randn(16, 7)
    p = torch.softmax(torch.randn(16, 7), 1)
    h = -(p * p.log()).sum(1).mean()
    assert torch.allclose(soft_target_cross_entropy(logits, p), kl_divergence(logits, p) + h, atol=1e-5)
    assert kl_divergence(p.log(), p).abs() < 1e-6


def test_kl_handles_zero_probabilities():
    p = torch.tensor([[1.0, 0.0, 0.0]])
    assert torch.isfinite(kl_divergence(torch.tensor([[5.0, 0.0, -3.0]]), p))


def test_distillation_temperature_scaling():
    s = torch.randn(4, 10, requires_grad=True)
    r = torch.randn(4, 10)
    # The targets are the refinery's softmax already at temperature T (refined labels made at T).
    loss1 = distillation_loss(s, torch.softmax(r, 1), 1.0)
    assert torch.allclose(loss1, soft_target_cross_entropy(s, torch.softmax(r, 1)))
    loss4 = distillation_loss(s, torch.softmax(r / 4, 1), 4.0)
    expected = 16 * soft_target_cross_entropy(s / 4, torch.softmax(r / 4, 1))
    assert torch.allclose(loss4, expected)
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        distillation_loss(s, torch.softmax(r, 1), 0)


def test_loss_computed_in_fp32_from_bf16_logits():
    logits = torch.randn(4, 3).bfloat16()
    assert soft_target_cross_entropy(logits, torch.tensor([0, 1, 2, 0])).dtype == torch.float32


def test_bad_targets_shape():
    with pytest.raises(ValueError, match=r"targets must be"):
        soft_target_cross_entropy(torch.randn(4, 3), torch.rand(4, 2))


def test_smooth_targets():
    t = smooth_targets(torch.tensor([2, 0]), 4, 0.2)
    assert torch.allclose(t, torch.tensor([[0.05, 0.05, 0.85, 0.05], [0.85, 0.05, 0.05, 0.05]]))
    soft = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    assert torch.allclose(smooth_targets(soft, 4, 0.2), torch.tensor([[0.45, 0.45, 0.05, 0.05]]))
    idx = torch.tensor([1])
    assert smooth_targets(idx, 4, 0.0) is idx
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        smooth_targets(idx, 4, 1.0)


def test_losses_reject_targets_that_are_not_probability_rows():
    logits = torch.randn(4, 3)
    bad = {
        "nan": torch.tensor([[float("nan"), 0.5, 0.5]] * 4),
        "negative": torch.tensor([[-0.5, 1.0, 0.5]] * 4),
        "not summing to 1": torch.full((4, 3), 0.5),
        "float class indices": torch.tensor([0.0, 1.0, 2.0, 1.0]),
        "indices out of range": torch.tensor([0, 1, 2, 3]),
    }
    for name, t in bad.items():
        for fn in (soft_target_cross_entropy, kl_divergence, distillation_loss):
            with pytest.raises(ValueError):
                fn(logits, t)


def test_kl_matches_its_definition_and_zero_probability_never_nan():
    """kl_divergence equals sum_k p_k log(p_k / q_k) (0 log 0 = 0), computed here in float64 from q = softmax(logits);
    identical rows give exactly 0; zero probabilities give finite losses."""
    p = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.0, 0.25, 0.75]])
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0], [0.3, 0.3, 0.3], [-1.0, 2.0, 1.0]])
    q = torch.softmax(logits.double(), 1)
    p64 = p.double()
    terms = torch.where(p64 > 0, p64 * (p64.clamp_min(1e-300).log() - q.log()), torch.zeros_like(p64))
    per_row = terms.sum(1)
    assert float(kl_divergence(logits, p)) == pytest.approx(float(per_row.mean()), abs=1e-6)
    for i in range(len(p)):  # row by row: one wrong row cannot hide in the mean
        assert float(kl_divergence(logits[i:i + 1], p[i:i + 1])) == pytest.approx(float(per_row[i]), abs=1e-6)
    assert float(per_row.min()) > 0.01  # the rows differ: every divergence is clearly positive
    same = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0.0, 0.0]])
    assert kl_divergence(torch.log(same), same).item() == 0.0
    assert kl_divergence(torch.zeros(2, 4), torch.full((2, 4), 0.25)).item() == 0.0
    hard = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    extreme = torch.tensor([[50.0, -200.0, -200.0], [0.0, 0.0, -float("inf")]])
    assert torch.isfinite(soft_target_cross_entropy(extreme, hard)) and torch.isfinite(kl_divergence(extreme, hard))
