"""The batch pipeline: rescaling for progressive resizing."""

import torch

from labelrefinery.batch import rescale


def test_rescale_sizes_and_identity():
    x = torch.rand(3, 1, 28, 28)
    assert rescale(x, 1.0) is x
    assert rescale(x, 0.72).shape == (3, 1, 20, 20) and rescale(x, 0.86).shape == (3, 1, 24, 24)
    assert rescale(torch.rand(2, 3, 32, 48), 0.5).shape == (2, 3, 16, 24)
    flat = torch.full((1, 1, 28, 28), 0.3)  # antialiased bilinear keeps a constant image constant
    assert torch.allclose(rescale(flat, 0.72), torch.full((1, 1, 20, 20), 0.3))
