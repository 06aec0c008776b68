import torch

from labelrefinery.augment import RandomAffine, RandomResizedCrop, augment_uint8


def _images(n=6, c=1, s=16):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, c, s, s, generator=g)


def test_affine_identity_when_ranges_are_zero():
    x = _images()
    aug = RandomAffine(max_rotation_deg=0, scale_range=(1, 1), max_shift=0, hflip=False)
    assert torch.allclose(aug(x, torch.Generator().manual_seed(1)), x, atol=1e-5)


def test_affine_flip_only_when_enabled():
    x = _images(n=64)
    aug = RandomAffine(max_rotation_deg=0, scale_range=(1, 1), max_shift=0, hflip=True)
    y = aug(x, torch.Generator().manual_seed(1))
    flipped = torch.tensor([torch.allclose(y[i], x[i].flip(-1), atol=1e-5) for i in range(64)])
    same = torch.tensor([torch.allclose(y[i], x[i], atol=1e-5) for i in range(64)])
    assert (flipped | same).all() and 10 < flipped.sum() < 54


def test_affine_seeded_and_per_sample():
    x = _images(n=8).repeat(1, 1, 1, 1)
    x = x[:1].repeat(8, 1, 1, 1)  # eight copies of one image
    aug = RandomAffine()
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])  # per-sample parameters differ


def test_affine_shift_moves_content_and_fills_zero():
    x = torch.zeros(1, 1, 20, 20)
    x[..., 8:12, 8:12] = 1
    aug = RandomAffine(max_rotation_deg=0, scale_range=(1, 1), max_shift=0.1)
    y = aug(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and abs(y.sum().item() - 16) < 1.0


def test_resized_crop_full_box_is_identity():
    x = _images(n=4, c=3, s=12)
    aug = RandomResizedCrop(size=12, scale=(1, 1), ratio=(1, 1), hflip=False)
    boxes = aug.boxes(4, 12, 12, torch.Generator().manual_seed(0))
    assert torch.equal(boxes[0], torch.tensor([0.0, 0.0, 11.0, 11.0]))
    assert torch.allclose(aug(x, torch.Generator().manual_seed(0)), x, atol=1e-4)


def test_resized_crop_boxes_inside_and_varied():
    aug = RandomResizedCrop(size=8)
    b = aug.boxes(500, 32, 24, torch.Generator().manual_seed(0))
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= 23).all() and (b[:, 3] <= 31).all()
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1) / (32 * 24)
    assert area.min() < 0.2 and area.max() > 0.8
    out = aug(_images(n=500, c=1, s=32)[:, :, :, :24], torch.Generator().manual_seed(0))
    assert out.shape == (500, 1, 8, 8)


def test_augment_uint8_keeps_dtype():
    x = (torch.rand(10, 1, 8, 8) * 255).to(torch.uint8)
    y = augment_uint8(x, RandomAffine(), torch.Generator().manual_seed(0), batch_size=3)
    assert y.dtype == torch.uint8 and y.shape == x.shape and not torch.equal(x, y)
