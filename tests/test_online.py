"""Per-crop refinement: the frozen refinery, batch invariance, crops vs whole images, external refineries."""

import json

import pytest
import torch
from safetensors.torch import save_file

from labelrefinery.batch import Pipeline
from labelrefinery.checkpoint import load_refinery, save_checkpoint
from labelrefinery.cli import main
from labelrefinery.config import resolve_config
from labelrefinery.data import load_digits
from labelrefinery.engine import EpochSteps, TrainData, TrainSetup, fit, train_one_epoch
from labelrefinery.inference import predict
from labelrefinery.errors import CheckpointError
from labelrefinery.models import ModelSpec, build_model
from labelrefinery.targets import (FrozenRefinery, LabelRecipe, RefineryTargets, StoredTargets, adversarial_jitter,
                                   refined_labels)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def trained(digits):
    """A convnet trained on digits for a few epochs: the refinery of these tests."""
    cfg = resolve_config("quick", {"epochs": 6, "batch_size": 128}).training
    p = Pipeline.create(CPU, digits.mean, digits.std)
    torch.manual_seed(0)
    model = build_model(ModelSpec("convnet", 10, 1, 8))
    fit(model, TrainData(digits.train.images, StoredTargets(digits.train.labels), digits.test.images,
                         digits.test.labels), TrainSetup(cfg, p, (0, 1)))
    return model.eval(), p


def test_refinery_unchanged_by_a_generation(digits, trained):
    refinery_model, p = trained
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


def test_refined_label_independent_of_batch(digits, trained):
    refinery_model, p = trained
    frozen = FrozenRefinery(refinery_model)
    x = p.normalize(p.to_unit(digits.test.images[:64]))
    alone = frozen(x[:1])
    batched = frozen(x)[:1]
    assert torch.allclose(alone, batched, atol=1e-5)


def test_left_crops_are_labelled_as_their_own_content(digits, trained):
    """Images whose left half shows one digit and right half another: each left crop gets the left digit's
    label from the refinery, while the offline label of the whole image is split between both digits."""
    refinery_model, p = trained
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


def test_adversarial_jitter_bounded_and_increases_disagreement(digits, trained):
    refinery_model, p = trained
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


def _write_refinery(tmp_path, trained, classes, prefix=""):
    model, _ = trained
    path = tmp_path / "ref.safetensors"
    save_checkpoint(path, model, classes, ModelSpec("convnet", 10, 1, 8).to_dict())
    return path


def test_external_refinery_class_mismatch_shows_first_difference(digits, trained, tmp_path):
    classes = list(digits.classes)
    classes[4] = "four"
    path = _write_refinery(tmp_path, trained, classes)
    with pytest.raises(CheckpointError, match=r"class 4 is 'four' there but '4' in digits"):
        load_refinery(path, None, digits, 8, CPU)


def test_external_state_dict_with_ddp_prefix(digits, trained, tmp_path):
    model, p = trained
    state = {f"module.{k}": v.clone().contiguous() for k, v in model.state_dict().items()}
    pt = tmp_path / "ddp.pt"
    torch.save(state, pt)
    with pytest.raises(CheckpointError, match="--refinery-model"):
        load_refinery(pt, None, digits, 8, CPU)
    loaded = load_refinery(pt, "convnet", digits, 8, CPU, "dataset")  # it was trained with the digits' statistics
    assert torch.allclose(predict(loaded, digits.test.images, p), predict(model, digits.test.images, p), atol=1e-4)
    from labelrefinery.checkpoint import Renormalized

    assert isinstance(load_refinery(pt, "convnet", digits, 8, CPU), Renormalized)  # a plain state dict: ImageNet's
    partial = {k: v for k, v in state.items() if "classifier" not in k}
    save_file(partial, tmp_path / "partial.safetensors")
    with pytest.raises(CheckpointError, match=r"does not fit model 'convnet': missing \['classifier"):
        load_refinery(tmp_path / "partial.safetensors", "convnet", digits, 8, CPU)


def test_cross_architecture_run_and_ensemble(digits, tmp_path, capsys):
    common = ["--dataset", "digits", "--epochs", "2", "--no-progress", "--runs-dir", str(tmp_path)]
    assert main(["run", *common, "--model", "resnet20", "--generations", "1", "--name", "big"]) == 0
    ref = tmp_path / "big/seed-0/gen-1/model.safetensors"
    assert main(["run", *common, "--model", "convnet", "--generations", "2", "--labels", "online",
                 "--augment", "crop", "--refinery-checkpoint", str(ref), "--ensemble", "1,2",
                 "--name", "small"]) == 0
    results = json.loads((tmp_path / "small/results.json").read_text())
    assert [g["generation"] for g in results["generations"]] == [1, 2]
    assert results["ensemble"][0]["generations"] == [1, 2]
    assert "ensemble R1+R2" in (tmp_path / "small/results.md").read_text()
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "small"), "--ensemble", "1,2"]) == 0
    out = capsys.readouterr().out
    assert "| 0 | R2 |" in out and "ensemble 1,2" in out
    acc = float(out.strip().splitlines()[-1].split("|")[3])
    assert acc == pytest.approx(results["ensemble"][0]["per_seed"]["0"], abs=0.006)


def test_external_refinery_offline_labels_and_resume(tmp_path):
    common = ["--dataset", "digits", "--epochs", "1", "--no-progress", "--runs-dir", str(tmp_path)]
    assert main(["run", *common, "--model", "resnet20", "--generations", "1", "--name", "big"]) == 0
    ref = tmp_path / "big/seed-0/gen-1/model.safetensors"
    student = ["run", *common, "--refinery-checkpoint", str(ref), "--name", "small"]
    assert main(student + ["--generations", "1"]) == 0
    summary = json.loads((tmp_path / "small/seed-0/gen-1/summary.json").read_text())
    assert main(student + ["--generations", "2"]) == 0  # generation 1 is kept, not retrained
    assert json.loads((tmp_path / "small/seed-0/gen-1/summary.json").read_text()) == summary
    assert (tmp_path / "small/seed-0/gen-2/summary.json").exists()
