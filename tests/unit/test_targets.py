"""Refined labels: label forms, the frozen refinery, per-batch (per-crop) targets, adversarial jitter."""

import pytest
import torch
from torch import nn

from labelrefinery.config import resolve_config
from labelrefinery.engine import EpochSteps, TrainData, TrainSetup, fit, train_one_epoch
from labelrefinery.inference import predict
from labelrefinery.models import ModelSpec, build_model
from labelrefinery.targets import FrozenRefinery, LabelRecipe, RefineryTargets, adversarial_jitter, refined_labels

CPU = torch.device("cpu")


def test_forms_sum_to_one():
    logits = torch.randn(32, 10)
    for form in ("soft", "hard", "topk:3", "topk:10"):
        t = refined_labels(logits, form=form)
        assert t.dtype == torch.float32 and t.shape == (32, 10)
        assert torch.allclose(t.sum(1), torch.ones(32), atol=1e-5)
    hard = refined_labels(logits, form="hard")
    assert torch.equal(hard.argmax(1), logits.argmax(1)) and set(hard.unique().tolist()) == {0.0, 1.0}
    top3 = refined_labels(logits, form="topk:3")
    assert ((top3 > 0).sum(1) == 3).all()


def test_temperature_softens():
    logits = torch.randn(8, 10) * 5
    ent = lambda p: -(torch.xlogy(p, p)).sum(1).mean()  # noqa: E731
    assert ent(refined_labels(logits, temperature=4)) > ent(refined_labels(logits, temperature=1))


def test_gt_weight_mixes_one_hot():
    logits = torch.zeros(2, 4)
    t = refined_labels(logits, ground_truth=torch.tensor([1, 3]), gt_weight=0.5)
    assert torch.allclose(t[0], torch.tensor([0.125, 0.625, 0.125, 0.125]))
    with pytest.raises(ValueError, match="ground-truth"):
        refined_labels(logits, gt_weight=0.5)


class Parent(nn.Module):
    def __init__(self, refinery):
        super().__init__()
        self.student = nn.Linear(2, 2)
        self.refinery = refinery


def test_frozen_refinery_stays_in_eval_mode():
    inner = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    parent = Parent(FrozenRefinery(inner))
    parent.train()
    assert parent.student.training and not inner.training and not inner[1].training
    assert all(not p.requires_grad for p in inner.parameters())
    before = inner[1].running_mean.clone()
    parent.refinery(torch.randn(16, 4) * 10 + 3)
    assert torch.equal(inner[1].running_mean, before)


@pytest.mark.slow
def test_refinery_unchanged_by_a_generation(digits, trained_refinery):
    refinery_model, p = trained_refinery
    before = {k: v.clone() for k, v in refinery_model.state_dict().items()}
    frozen = FrozenRefinery(refinery_model)
    cfg = resolve_config("quick", {"epochs": 2, "batch_size": 64, "labels": "online",
                                   "adversarial_jitter": 0.5, "augment": "online"}).training
    torch.manual_seed(1)
    student = build_model(ModelSpec("convnet", 10, 1, 8))
    online = RefineryTargets(frozen, LabelRecipe(), digits.train.labels, jitter_prob=0.5, jitter_eps=2 / 255)
    from labelrefinery.augment import RandomAffine

    fit(student, TrainData(digits.train.images, online, digits.test.images, digits.test.labels),
        TrainSetup(cfg, p, (0, 2), augment=RandomAffine()))
    after = refinery_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm running statistics
    assert not refinery_model.training
    assert not any(p.requires_grad for p in refinery_model.parameters())


@pytest.mark.slow
def test_refined_label_independent_of_batch(digits, trained_refinery):
    refinery_model, p = trained_refinery
    frozen = FrozenRefinery(refinery_model)
    x = p.normalize(p.to_unit(digits.test.images[:64]))
    alone = frozen(x[:1])
    batched = frozen(x)[:1]
    assert torch.allclose(alone, batched, atol=1e-5)


@pytest.mark.slow
def test_left_crops_are_labelled_as_their_own_content(digits, trained_refinery):
    """Images whose left half shows one digit and right half another: each left crop gets the left digit's
    label from the refinery, while the offline label of the whole image is split between both digits."""
    refinery_model, p = trained_refinery
    imgs, labels = digits.test.images, digits.test.labels
    g = torch.Generator().manual_seed(0)
    left = torch.randperm(len(imgs), generator=g)[:120]
    right = torch.randperm(len(imgs), generator=g)[:120]
    keep = labels[left] != labels[right]
    left, right = left[keep], right[keep]
    pairs = torch.cat([imgs[left], imgs[right]], dim=3)  # (M, 1, 8, 16)
    offline = refined_labels(predict(refinery_model, pairs, p))

    seen = []

    def spy(logits, position):
        t = refined_labels(logits)
        seen.append((t, position))
        return t

    spy.temperature = 1.0  # a label recipe names the temperature its targets were made at

    left_crop = lambda x, generator: x[..., :8]  # noqa: E731  the view the student sees
    torch.manual_seed(0)
    student = build_model(ModelSpec("convnet", 10, 1, 8))
    opt = torch.optim.SGD(student.parameters(), lr=0.0)
    # the "ground truth" handed to the spy is each pair's position, to undo the batch permutation
    online = RefineryTargets(FrozenRefinery(refinery_model), spy, torch.arange(len(pairs)))
    train_one_epoch(student, opt, TrainData(pairs, online), p,
                    EpochSteps(len(pairs) + 1, torch.Generator().manual_seed(0), augment=left_crop))
    got, match = seen[0]
    per_crop = refined_labels(predict(refinery_model, imgs[left], p))
    assert torch.allclose(got, per_crop[match], atol=1e-4)  # exactly the label of the left digit alone
    crop_acc = (got.argmax(1) == labels[left][match]).float().mean()
    offline_left_mass = offline[torch.arange(len(left)), labels[left]].mean()
    crop_left_mass = got[torch.arange(len(got)), labels[left][match]].mean()
    total_variation = 0.5 * (got - offline[match]).abs().sum(1).mean()
    assert crop_acc > 0.85
    assert crop_left_mass > offline_left_mass + 0.2
    assert total_variation > 0.2


@pytest.mark.slow
def test_adversarial_jitter_bounded_and_increases_disagreement(digits, trained_refinery):
    refinery_model, p = trained_refinery
    torch.manual_seed(3)
    student = build_model(ModelSpec("convnet", 10, 1, 8))
    frozen = FrozenRefinery(refinery_model)
    x = p.to_unit(digits.test.images[:64])
    eps = 4 / 255
    xj = adversarial_jitter(student, frozen, x, p, eps)
    assert (xj - x).abs().max() <= eps + 1e-6 and xj.min() >= 0 and xj.max() <= 1
    student.eval()

    def disagreement(z):
        with torch.no_grad():
            target = torch.softmax(frozen(p.normalize(z)), 1)
            return -(target * torch.log_softmax(student(p.normalize(z)), 1)).sum(1).mean()

    assert disagreement(xj) > disagreement(x)
