"""Fault injection: every numeric flag with NaN, inf, a negative, zero and a huge value; flags that do not apply;
odd checkpoints, images, models and datasets. One line, exit 2, nothing written."""

import math

import numpy as np
import pytest
import torch

from labelrefinery.cli import main
from labelrefinery.config import RunConfig, leaf_fields
from labelrefinery.errors import ConfigError

from ..conftest import TINY, tiny_run
from .conftest import one_line_error


NUMERIC = [(f.name, hint) for f, hint in leaf_fields()
           if hint in (int, float) or str(hint) in ("int | None", "float | None")]


ZERO_OK = {"weight_decay", "plateau_patience_epochs", "min_lr", "early_stop_patience_epochs",
           "early_stop_min_delta", "gt_weight", "adversarial_jitter", "threads", "label_smoothing", "cross_fit",
           "workers", "mixup", "student_epochs"}


HUGE_OK = {"plateau_patience_epochs", "early_stop_patience_epochs"}


VALUES = {"nan": math.nan, "inf": math.inf, "negative": -1, "zero": 0, "huge": 10**12}


def _cli_value(hint, value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(int(value)) if "int" in str(hint) else str(float(value))


@pytest.mark.parametrize("kind", sorted(VALUES))
@pytest.mark.parametrize("name,hint", NUMERIC, ids=[n for n, _ in NUMERIC])
def test_numeric_flag(tmp_path, capsys, name, hint, kind):
    value = VALUES[kind]
    accepted = (kind == "zero" and name in ZERO_OK) or (kind == "huge" and name in HUGE_OK)
    if accepted:
        cfg = RunConfig.from_flat({name: value})
        assert cfg.flat()[name] == value
        return
    flag = "--" + name.replace("_", "-")
    assert main(["run", "--dataset", "digits", "--no-progress", "--runs-dir", str(tmp_path), flag,
                 _cli_value(hint, value)]) == 2
    one_line_error(capsys, flag)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args,message", [
    (["--svhn-extra"], "--svhn-extra"),
    (["--skip-bad-images"], "--skip-bad-images"),
    (["--data-in-memory", "maybe"], "--data-in-memory"),
    (["--workers", "2"], "--workers"),
    (["--cache-dir", "cache"], "--cache-dir"),
    (["--label-storage", "topk:11"], "--label-storage topk:11"),
    (["--image-size", "64"], "--image-size"),
    (["--static-copies", "3"], "--static-copies"),
    (["--lr-steps", "1,2"], "--lr-steps"),
    (["--refinery-model", "convnet"], "--refinery-model"),
    (["--jitter-eps", "0.01"], "--jitter-eps"),
    (["--label-form", "topk:11"], "topk:11"),
    (["--batch-size", "100000"], "--batch-size"),
    (["--min-lr", "0.1", "--lr", "0.01", "--lr-schedule", "plateau"], "--min-lr"),
    (["--lr-steps", "1,500", "--lr-schedule", "steps"], "--lr-steps"),
])
def test_flags_that_do_not_apply_or_do_not_fit_are_refused(tmp_path, capsys, args, message):
    assert main(["run", "--dataset", "digits", "--no-progress", "--runs-dir", str(tmp_path), *args]) == 2
    one_line_error(capsys, message)
    assert not list(tmp_path.iterdir())


def test_argparse_errors_are_one_line(tmp_path, capsys):
    assert main(["run", "--epochs", "many"]) == 2
    one_line_error(capsys, "--epochs")
    assert main(["run", "--bogus-flag"]) == 2
    one_line_error(capsys, "--bogus-flag")


def test_pt_checkpoint_class_names_are_checked(tmp_path, capsys):
    from labelrefinery.models import ModelSpec, build_model

    state = build_model(ModelSpec("convnet", 10, 1, 8)).state_dict()
    path = tmp_path / "ref.pt"
    torch.save({"model": state, "classes": [f"c{i}" for i in range(10)]}, path)
    assert main(["run", *TINY, "--runs-dir", str(tmp_path / "runs"), "--refinery-checkpoint", str(path),
                 "--refinery-model", "convnet"]) == 2
    one_line_error(capsys, "class 0 is 'c0' there but '0' in digits")


def test_pickled_checkpoint_says_so_first(tmp_path, capsys):
    path = tmp_path / "pickled.pt"
    torch.save({"model": {"weight": torch.zeros(2)}, "note": ConfigError("a pickled object")}, path)
    assert main(["run", *TINY, "--runs-dir", str(tmp_path / "runs"), "--refinery-checkpoint", str(path)]) == 2
    line = one_line_error(capsys)
    assert line.startswith(f"refinery: error: {path} holds pickled Python objects")
    assert "\x1b" not in line and "Unsupported global: GLOBAL labelrefinery.errors.ConfigError" in line


def test_sixteen_bit_grayscale_keeps_its_values(tmp_path):
    from PIL import Image

    from labelrefinery.data.files import read_image

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    path = tmp_path / "g16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    img = read_image(str(path), 64)
    assert img.dtype == torch.uint8 and img.shape == (3, 64, 64)
    expected = torch.from_numpy((ramp.astype(np.float64) / 257).round().astype(np.uint8))
    assert (img[0].int() - expected.int()).abs().max() <= 1
    assert img.float().std() > 50  # a ramp, not clipped to white
    from labelrefinery.classifier import read_image as read_for_predict

    for channels in (3, 1):  # `refinery predict` reads the file as training did
        assert torch.equal(read_for_predict(path, channels), img[:channels])


def batchnorm1d_head(num_classes: int, in_channels: int, image_size: int) -> torch.nn.Module:
    """A small model with alexnet_bn's kind of head (Linear - BatchNorm1d - ReLU - Linear), where a batch of one
    in train mode raises; built through ``--model tests.faults.test_bad_input:batchnorm1d_head``."""
    return torch.nn.Sequential(torch.nn.Conv2d(in_channels, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
                               torch.nn.Linear(32, 16, bias=False), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                               torch.nn.Linear(16, num_classes))


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tests.faults.test_bad_input:batchnorm1d_head", "convnet"])
def test_a_batch_of_one_never_reaches_batchnorm_in_train_mode(tmp_path, model, monkeypatch):
    """Jitter subsets of one image and a last batch of one all run."""
    import labelrefinery.targets as targets

    sizes = []
    jitter = targets.adversarial_jitter
    monkeypatch.setattr(targets, "adversarial_jitter", lambda student, refinery, x, *a: sizes.append(len(x)) or
                        jitter(student, refinery, x, *a))
    # 1221 training views; batch 1220 leaves a last batch of 1 (dropped); this seed's jitter picks one image
    assert main(["run", "--dataset", "digits", "--model", model, "--epochs", "2", "--generations", "2",
                 "--labels", "online", "--adversarial-jitter", "0.001", "--batch-size", "1220", "--no-progress",
                 "--threads", "2", "--runs-dir", str(tmp_path)]) == 0
    assert 1 in sizes


def test_class_with_a_single_image_is_one_line(tmp_path, capsys):
    from PIL import Image

    for split, counts in (("train", {"a": 24, "b": 1}), ("val", {"a": 2, "b": 2})):
        for cls, n in counts.items():
            (tmp_path / "imgs" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(tmp_path / "imgs" / split / cls / f"{i}.png")
    code = main(["run", "--dataset", f"folder:{tmp_path / 'imgs'}", "--image-size", "8", "--data-dir",
                 str(tmp_path / "cache"), "--no-progress", "--runs-dir", str(tmp_path / "runs")])
    assert code == 2
    one_line_error(capsys, "single image")


def test_train_size_too_small_names_the_flag(tmp_path, capsys):
    assert main(["run", "--dataset", "digits", "--train-size", "20", "--no-progress", "--runs-dir", str(tmp_path)]) == 2
    one_line_error(capsys, "--train-size 20")


def test_checkpoint_spec_with_unknown_keys_is_one_line(tmp_path, capsys):
    from labelrefinery.checkpoint import save_checkpoint
    from labelrefinery.models import ModelSpec, build_model

    path = tmp_path / "odd.safetensors"
    spec = {**ModelSpec("convnet", 10, 1, 8).to_dict(), "depth_multiplier": 2}
    save_checkpoint(path, build_model(ModelSpec("convnet", 10, 1, 8)), [str(i) for i in range(10)], spec)
    assert main(["run", *TINY, "--runs-dir", str(tmp_path / "runs"), "--refinery-checkpoint", str(path)]) == 2
    one_line_error(capsys, "model spec")


def test_a_model_factory_that_cannot_be_called_as_documented_is_one_line(tmp_path, capsys):
    for factory in ("os:system", "os:getcwd", "torch.nn:Linear"):
        assert tiny_run(tmp_path, "f", "--model", factory) == 2
        one_line_error(capsys, factory, "factory(num_classes=K, in_channels=C, image_size=S)")
    assert not (tmp_path / "f").exists()


def test_a_config_file_that_is_not_utf8_text_is_one_line(tmp_path, capsys):
    (tmp_path / "b.yaml").write_bytes(bytes(range(256)))
    assert tiny_run(tmp_path, "c", "--config", str(tmp_path / "b.yaml")) == 2
    one_line_error(capsys, "b.yaml", "UTF-8")
    assert not (tmp_path / "c").exists()


def test_a_factory_or_model_module_that_fails_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods/raising.py").write_text("def f(num_classes, in_channels, image_size):\n"
                                              "    raise RuntimeError('boom from factory')\n")
    (tmp_path / "mods/broken.py").write_text("def f(:\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    assert tiny_run(tmp_path, "a", "--model", "raising:f") == 2
    one_line_error(capsys, "raising:f", "RuntimeError: boom from factory")
    assert tiny_run(tmp_path, "b", "--model", "broken:f") == 2
    one_line_error(capsys, "broken:f", "SyntaxError")
