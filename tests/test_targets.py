import pytest
import torch

from labelrefinery.config import parse_label_form
from labelrefinery.errors import ConfigError
from labelrefinery.targets import refined_labels


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


@pytest.mark.parametrize("bad", ["topk:0", "topk:x", "softer", ""])
def test_bad_label_form(bad):
    with pytest.raises(ConfigError, match="--label-form"):
        parse_label_form(bad)
