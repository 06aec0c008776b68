"""Checkpoints: reading refineries and other models' weights (safetensors, .pt, DDP, reference and Lightning
layouts), their classes and normalisation."""

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from labelrefinery.checkpoint import load_refinery, save_checkpoint
from labelrefinery.cli import main
from labelrefinery.data import load_dataset
from labelrefinery.errors import CheckpointError
from labelrefinery.inference import predict
from labelrefinery.models import ModelSpec

CPU = torch.device("cpu")


def _write_refinery(tmp_path, trained_refinery, classes, prefix=""):
    model, _ = trained_refinery
    path = tmp_path / "ref.safetensors"
    save_checkpoint(path, model, classes, ModelSpec("convnet", 10, 1, 8).to_dict())
    return path


@pytest.mark.slow
def test_external_refinery_class_mismatch_shows_first_difference(digits, trained_refinery, tmp_path):
    classes = list(digits.classes)
    classes[4] = "four"
    path = _write_refinery(tmp_path, trained_refinery, classes)
    with pytest.raises(CheckpointError, match=r"class 4 is 'four' there but '4' in digits"):
        load_refinery(path, None, digits, 8, CPU)


@pytest.mark.slow
def test_external_state_dict_with_ddp_prefix(digits, trained_refinery, tmp_path):
    model, p = trained_refinery
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


@pytest.fixture(scope="module")
def imagenet_normalised_resnet(tmp_path_factory):
    """A torchvision-style ResNet-18 trained on digits the standard way (ImageNet mean/std), saved as a plain
    state dict, the way a user's own teacher arrives."""
    from labelrefinery.models import ModelSpec, build_model

    torch.manual_seed(0)
    ds = load_dataset("digits")
    model = build_model(ModelSpec("resnet18", 10, 1, 8))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = (ds.train.images.float() / 255 - 0.449) / 0.226  # ImageNet's statistics, averaged for one channel
    for _ in range(4):
        model.train()
        for idx in torch.randperm(len(x)).split(64):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), ds.train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    path = tmp_path_factory.mktemp("teacher") / "resnet18.pt"
    torch.save({"model": model.state_dict(), "epoch": 4}, path)  # a reference-script-like dict
    return path


@pytest.mark.slow
def test_external_refinery_gets_its_own_normalisation(imagenet_normalised_resnet, tmp_path, capsys):
    args = ["run", "--dataset", "digits", "--generations", "1", "--epochs", "1", "--batch-size", "64",
            "--no-progress", "--refinery-checkpoint", str(imagenet_normalised_resnet), "--refinery-model",
            "resnet18", "--runs-dir", str(tmp_path)]
    agreement = {}
    for norm in ("auto", "dataset"):
        assert main([*args, "--name", norm] + ([] if norm == "auto" else ["--refinery-normalization", norm])) == 0
        err = capsys.readouterr().err
        agreement[norm] = float(re.search(r"agrees with the given label on ([\d.]+)%", err).group(1))
        if norm == "auto":
            assert "ImageNet statistics" in err
            record = json.loads((tmp_path / "auto/seed-0/refinery/summary.json").read_text())
            assert f"val {record['val_top1']:.2f}%  test {record['test_top1']:.2f}%" in err
            assert record["agreement"] == pytest.approx(agreement["auto"], abs=0.06)
            labels = np.load(tmp_path / "auto/seed-0/refinery/labels.npz")
            assert labels["labels"].shape == (len(labels["indices"]), 10)
            assert "| external refinery (--refinery-checkpoint) |" in (tmp_path / "auto/results.md").read_text()
    assert agreement["auto"] >= 90  # fed as it was trained
    assert agreement["dataset"] < agreement["auto"] - 2  # the digits' own statistics are not what it learned
    assert main([*args, "--name", "bad", "--refinery-normalization", "0.5,0.5/0.2"]) == 2
    assert main([*args, "--name", "bad", "--refinery-mean", "0.5"]) == 2  # needs --refinery-std too
    capsys.readouterr()
    assert main([*args, "--name", "explicit", "--refinery-mean", "0.449", "--refinery-std", "0.226"]) == 0
    err = capsys.readouterr().err
    assert "--refinery-normalization 0.449/0.226" in err
    assert float(re.search(r"agrees with the given label on ([\d.]+)%", err).group(1)) == agreement["auto"]


def _fake_lightning_attribute_dict():
    """A class pickled under Lightning's name, as a real Lightning checkpoint references it (Lightning itself
    is not needed to read the file, and not installed here)."""
    import sys
    import types

    module = types.ModuleType("lightning.fabric.utilities.data")

    class AttributeDict(dict):
        pass

    AttributeDict.__module__, AttributeDict.__qualname__ = module.__name__, "AttributeDict"
    module.AttributeDict = AttributeDict
    names = ["lightning", "lightning.fabric", "lightning.fabric.utilities", "lightning.fabric.utilities.data"]
    saved = {n: sys.modules.get(n) for n in names}
    for n in names[:-1]:
        sys.modules[n] = types.ModuleType(n)
    sys.modules[names[-1]] = module
    return AttributeDict, lambda: [sys.modules.pop(n) if saved[n] is None else sys.modules.update({n: saved[n]})
                                   for n in names]


def test_reference_and_lightning_checkpoints_load(tmp_path):
    import argparse

    from labelrefinery.checkpoint import load_checkpoint, model_from_state
    from labelrefinery.models import ModelSpec, build_model

    spec = ModelSpec("convnet", 10, 1, 8)
    net = build_model(spec)
    opt = torch.optim.SGD(net.parameters(), 0.1)
    reference = tmp_path / "reference.pth"  # torchvision/references/classification/train.py's layout
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "lr_scheduler": {}, "epoch": 3,
                "args": argparse.Namespace(lr=0.1, data_path="/data"), "classes": [str(i) for i in range(10)]},
               reference)
    AttributeDict, cleanup = _fake_lightning_attribute_dict()
    try:
        lightning = tmp_path / "epoch=3.ckpt"
        torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}},
                   tmp_path / "bare.ckpt")  # only the state_dict, as the README describes Lightning's layout
        torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}, "epoch": 3,
                    "global_step": 120, "pytorch-lightning_version": "2.5.0", "optimizer_states": [opt.state_dict()],
                    "hyper_parameters": AttributeDict(lr=0.1)}, lightning)
    finally:
        cleanup()
    for path in (reference, lightning, tmp_path / "bare.ckpt"):
        state, classes, _, _ = load_checkpoint(path)
        model = model_from_state(state, spec, torch.device("cpu"), str(path))
        x = torch.randn(4, 1, 8, 8)
        assert torch.allclose(model(x), net.eval()(x), atol=1e-5)
    assert load_checkpoint(reference)[1] == [str(i) for i in range(10)]  # a class list stored in a .pt is used
