import pytest
import torch
import torch.nn.functional as F

from labelrefinery.losses import distillation_loss, kl_divergence, soft_target_cross_entropy


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
