"""Temperature scaling before the noise estimates (``labelrefinery.noise.calibrate``)."""

import pytest
import torch

from labelrefinery.noise import estimate_symmetric_noise, fit_temperature, temperature_scaled


def _sampled(logits: torch.Tensor, temperature: float, seed: int = 0) -> torch.Tensor:
    """Labels drawn from ``softmax(logits / temperature)``: the labels a model at that temperature is calibrated to."""
    return torch.multinomial(torch.softmax(logits / temperature, 1), 1,
                             generator=torch.Generator().manual_seed(seed)).squeeze(1)


@pytest.mark.parametrize("true_temperature", [0.5, 2.0])
def test_fit_temperature_recovers_the_temperature_the_labels_were_drawn_at(true_temperature):
    logits = 3 * torch.randn(20000, 10, generator=torch.Generator().manual_seed(1))
    labels = _sampled(logits, true_temperature)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    assert fit_temperature(logits, labels, iterations=200) == pytest.approx(fitted, rel=1e-6)  # converged

    def nll(t):
        return float(torch.nn.functional.cross_entropy(logits.double() / t, labels))
    assert nll(fitted) <= min(nll(0.95 * fitted), nll(1.05 * fitted))  # the minimum, not just near the truth


def test_fit_temperature_edge_cases():
    assert fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64)) == 1.0
    with pytest.raises(ValueError, match="3 rows of logits against 2 labels"):
        fit_temperature(torch.zeros(3, 4), torch.zeros(2, dtype=torch.int64))


def test_temperature_scaled_rows_are_the_softmax_at_that_temperature():
    logits = torch.randn(50, 6, generator=torch.Generator().manual_seed(2))
    rows = torch.softmax(logits, 1)
    for t in (0.3, 1.0, 4.0):
        assert torch.allclose(temperature_scaled(rows, t), torch.softmax(logits / t, 1), atol=1e-6)
    rows[0] = torch.tensor([0.0, 0.5, 0.5, 0.0, 0.0, 0.0])  # probabilities stored as 0 stay 0
    assert temperature_scaled(rows, 0.5)[0].tolist() == [0.0, 0.5, 0.5, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="temperature must be positive, got 0"):
        temperature_scaled(rows, 0)


def test_an_under_confident_refinery_reads_the_noise_right_once_calibrated():
    """A refinery on labels with 2% symmetric noise, sure of most images' class and torn on one image in ten (60%
    on a look-alike class), but under-confident at temperature 3 (as mixup makes it): its raw rows read every
    disputed label as wrong; calibrated on held-out images whose labels carry the same noise, they read 2%."""
    clean = torch.arange(3000) % 10
    calibrated = torch.full((3000, 10), 0.02 / 9)
    calibrated[torch.arange(3000), clean] = 0.98
    torn = torch.arange(3000) % 10 == 0
    calibrated[torn] = 0.4 / 9
    calibrated[torn, 1] = 0.6
    calibrated_logits = calibrated.log()
    logits = calibrated_logits / 3  # what the under-confident model outputs
    given = _sampled(calibrated_logits, 1.0, seed=3)  # training labels
    held_out = _sampled(calibrated_logits, 1.0, seed=4)  # held-out labels drawn alike
    rows = torch.softmax(logits, 1)
    raw = estimate_symmetric_noise(given, rows)
    assert raw > 0.05  # capped at the disputed share, not the 2%
    temperature = fit_temperature(logits, held_out)
    assert temperature == pytest.approx(1 / 3, rel=0.1)
    assert estimate_symmetric_noise(given, temperature_scaled(rows, temperature)) == pytest.approx(0.02, abs=0.004)
