"""A trained generation used outside the tool: `load_classifier`, `refinery predict`, `refinery export`."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from labelrefinery import load_classifier
from labelrefinery.checkpoint import load_checkpoint
from labelrefinery.cli import main
from labelrefinery.data import load_dataset


README = Path(__file__).parent.parent.parent / "README.md"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clf")
    assert main(["run", "--dataset", "digits", "--epochs", "3", "--generations", "2", "--batch-size", "64",
                 "--no-progress", "--precision", "fp32", "--runs-dir", str(d), "--name", "r"]) == 0
    return d / "r"


@pytest.mark.slow
def test_checkpoint_stores_its_preprocessing(run_dir):
    _, classes, spec, extra = load_checkpoint(run_dir / "seed-0/gen-1/model.safetensors")
    ds = load_dataset("digits")
    pre = extra["preprocessing"]
    assert pre["mean"] == pytest.approx(list(ds.mean)) and pre["std"] == pytest.approx(list(ds.std))
    assert (pre["channels"], pre["stored_size"], pre["augment"]) == (1, 8, "none")
    assert classes == ds.classes and spec["image_size"] == 8


@pytest.mark.slow
def test_loaded_generation_scores_what_the_run_measured(run_dir):
    ds = load_dataset("digits")
    for g in (1, 2):
        clf = load_classifier(run_dir, generation=g)
        summary = json.loads((run_dir / f"seed-0/gen-{g}/summary.json").read_text())
        correct = int((clf.predict_proba(ds.test.images).argmax(1) == ds.test.labels).sum())
        assert 100 * correct / len(ds.test.labels) == summary["test_top1"]  # the same images right, no tolerance
        unit = ds.test.images.float() / 255  # [0, 1] floats give the same predictions
        assert torch.equal(clf.predict_proba(unit).argmax(1), clf.predict_proba(ds.test.images).argmax(1))
    bigger = torch.nn.functional.interpolate(ds.test.images.float(), size=(16, 16), mode="nearest").to(torch.uint8)
    acc = (load_classifier(run_dir).predict_proba(bigger).argmax(1) == ds.test.labels).float().mean().item()
    assert acc > 0.8  # other sizes are resized to the training size first
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\), got \(300, 3, 8, 8\)"):
        load_classifier(run_dir).predict_proba(torch.zeros(300, 3, 8, 8))  # the input's shape, not a batch's
    with pytest.raises(ValueError, match="must be in \\[0, 1\\].*divide by 255"):
        load_classifier(run_dir).predict_proba(ds.test.images.float())  # 0-255 floats would score wrongly


@pytest.mark.slow
def test_readme_example_prints_the_runs_accuracy(run_dir, capsys):
    text = README.read_text()
    section = text[text.index("## Use a trained generation"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace('"runs/NAME"', repr(str(run_dir))).replace('load_dataset("fashion-mnist")',
                                                                    'load_dataset("digits")')
    exec(compile(code, "README", "exec"), {})
    printed = capsys.readouterr().out
    acc = float(re.search(r"test top-1 ([\d.]+)%", printed).group(1))
    best = max(json.loads((run_dir / f"seed-0/gen-{g}/summary.json").read_text())["val_top1"] for g in (1, 2))
    gens = [json.loads((run_dir / f"seed-0/gen-{g}/summary.json").read_text()) for g in (1, 2)]
    chosen = next(s for s in gens if s["val_top1"] == best)
    assert acc == pytest.approx(chosen["test_top1"], abs=0.3)


@pytest.mark.slow
def test_predict_command_on_image_files(run_dir, tmp_path, capsys):
    from PIL import Image

    ds = load_dataset("digits")
    folder = tmp_path / "imgs" / "nested"
    folder.mkdir(parents=True)
    for i in range(40):  # the digits test images, 4x upscaled, as PNG and JPEG files
        img = Image.fromarray(ds.test.images[i, 0].numpy()).resize((32, 32), Image.NEAREST)
        img.save(folder / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run_dir), str(tmp_path / "imgs"), "--top-k", "2", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 40 and list(rows[0]) == ["path", "label_1", "p_1", "label_2", "p_2"]
    truth = {f"{i:03d}": ds.classes[int(ds.test.labels[i])] for i in range(40)}
    right = sum(r["label_1"] == truth[Path(r["path"]).stem] for r in rows)
    assert right >= 32 and all(float(r["p_1"]) >= float(r["p_2"]) for r in rows)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert main(["predict", str(run_dir), str(tmp_path / "bad.png")]) == 2
    assert "bad.png" in capsys.readouterr().err
    assert main(["predict", str(run_dir), str(tmp_path / "missing")]) == 2
    assert main(["predict", str(run_dir), str(folder), "--top-k", "11"]) == 2


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_export_includes_preprocessing(run_dir, tmp_path, fmt, capsys):
    import subprocess
    import sys

    ds = load_dataset("digits")
    out = tmp_path / ("m.pt" if fmt == "torchscript" else "m.pt2")
    # as a user runs it: a fresh process (torchvision not imported before tracing)
    subprocess.run([sys.executable, "-m", "labelrefinery", "export", str(run_dir), "--format", fmt, "--out",
                    str(out), "--generation", "1"], check=True, capture_output=True)
    loaded = torch.jit.load(str(out)) if fmt == "torchscript" else torch.export.load(str(out)).module()
    x = ds.test.images[:50].float() / 255
    want = load_classifier(run_dir, generation=1)(x)
    assert torch.allclose(loaded(x), want, atol=1e-4)


@pytest.mark.slow
def test_export_and_predict_never_write_among_the_runs_files(run_dir, tmp_path, capsys):
    weights = run_dir / "seed-0/gen-1/model.safetensors"
    before = weights.read_bytes()
    for args in (["export", str(run_dir), "--format", "export", "--out", str(weights)],
                 ["export", str(weights), "--format", "torchscript", "--out", str(run_dir / "seed-0/m.pt")],
                 ["export", str(run_dir), "--format", "torchscript", "--out", str(tmp_path / "m.txt")],
                 ["predict", str(run_dir), str(tmp_path), "--out", str(run_dir / "seed-0/p.csv")],
                 ["predict", str(run_dir), str(tmp_path), "--out", str(tmp_path / "p.txt")]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "--out" in err and len(err.strip().splitlines()) == 1
    assert weights.read_bytes() == before and not (run_dir / "seed-0/p.csv").exists()


@pytest.mark.slow
def test_export_onnx_without_exporter_says_what_to_install(run_dir, tmp_path, capsys):
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
        pytest.skip("onnx is installed here")
    except ImportError:
        pass
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "pip install onnx onnxscript" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_old_checkpoint_inside_its_run_dir_recovers_preprocessing(run_dir, tmp_path):
    """Checkpoints of older versions store no preprocessing: it is recomputed from their run's dataset."""
    import shutil

    from safetensors.torch import load_file, save_file

    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    path = old / "seed-0/gen-1/model.safetensors"
    state, classes, spec, extra = load_checkpoint(path)
    extra.pop("preprocessing")
    save_file(load_file(path), path, metadata={"format": "labelrefinery-checkpoint/1", "classes": json.dumps(classes),
                                               "model": json.dumps(spec), "extra": json.dumps(extra)})
    clf = load_classifier(path)
    assert clf.preprocessing["stored_size"] == 8 and np.allclose(clf.preprocessing["mean"],
                                                                 load_dataset("digits").mean)
    lone = tmp_path / "lone.safetensors"
    shutil.copy(path, lone)
    with pytest.raises(Exception, match="give its run directory"):
        load_classifier(lone)


USER_MODEL = '''
import torch.nn as nn


def tiny(num_classes, in_channels, image_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 32), nn.ReLU(),
                         nn.Linear(32, num_classes))


def not_a_model(num_classes, in_channels, image_size):
    return "nope"


def seven(num_classes, in_channels, image_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 7))
'''


def test_user_factory_model_runs_resumes_and_evaluates(tmp_path, monkeypatch, capsys):
    import sys

    (tmp_path / "mymodels.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mymodels", None)
    args = ["run", "--dataset", "digits", "--model", "mymodels:tiny", "--epochs", "2", "--batch-size", "64",
            "--train-scale-start", "1", "--no-progress", "--runs-dir", str(tmp_path / "runs"), "--name", "u"]
    # the quick preset's progressive resizing needs a model that takes smaller images; this one flattens 8 x 8 px
    assert main([*args[:9], *args[11:-1], "fixed"]) == 2
    assert capsys.readouterr().err.startswith("refinery: error: --train-scale-start 0.72 trains at 6 x 6 px, which "
                                              "mymodels:tiny cannot take (")
    assert not (tmp_path / "runs/fixed").exists()
    assert main([*args, "--generations", "1"]) == 0
    teacher = str(tmp_path / "runs/u/seed-0/gen-1/model.safetensors")  # labelling per crop, it sees small views
    capsys.readouterr()
    assert main(["run", "--dataset", "digits", "--epochs", "2", "--generations", "1", "--refinery-checkpoint",
                 teacher, "--labels", "online", "--no-progress", "--runs-dir", str(tmp_path / "runs"),
                 "--name", "t"]) == 2
    err = capsys.readouterr().err
    assert f"trains at 6 x 6 px, which the refinery {teacher} cannot take" in err
    assert err.strip().endswith("add --train-scale-start 1 (full size every epoch)")
    assert main([*args, "--generations", "2"]) == 0  # extends the run: R1 is kept, R2 trained
    assert "resuming" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "runs/u"), "--ensemble", "1,2"]) == 0
    assert "| 0 | R2 |" in capsys.readouterr().out
    clf = load_classifier(tmp_path / "runs/u", generation=2)
    ds = load_dataset("digits")
    assert (clf.predict_proba(ds.test.images).argmax(1) == ds.test.labels).float().mean() > 0.5
    for bad, message in (("mymodels:not_a_model", "not an nn.Module"), ("mymodels:missing", "has no 'missing'"),
                         ("mymodels:seven", "not logits of shape (2, 10)"),
                         ("nosuchmodule:f", "cannot import nosuchmodule")):
        assert main([*args[:4], bad, *args[5:-1], f"bad-{bad.split(':')[1]}"]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_predict_on_the_test_set_as_files_gives_the_runs_accuracy(run_dir, tmp_path):
    """Every digits test image written as a PNG file at its own size: `refinery predict` scores what the run did."""
    from PIL import Image

    ds = load_dataset("digits")
    for i, (img, label) in enumerate(zip(ds.test.images, ds.test.labels)):
        Image.fromarray(img[0].numpy()).save(tmp_path / f"{i:04d}_{int(label)}.png")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run_dir), str(tmp_path), "--generation", "2", "--top-k", "1", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    right = sum(r["label_1"] == Path(r["path"]).stem.split("_")[1] for r in rows)
    summary = json.loads((run_dir / "seed-0/gen-2/summary.json").read_text())
    assert len(rows) == len(ds.test.labels)
    assert 100 * right / len(rows) == pytest.approx(summary["test_top1"], abs=0.3)


def test_a_crop_trained_model_exports_and_teaches_with_its_own_view(tmp_path):
    """A generation trained with random crops: TorchScript export keeps its centre crop, and as
    --refinery-checkpoint of a run without crops it is fed its own view, scoring what load_classifier scores."""
    import json

    common = ["--dataset", "digits", "--model", "convnet", "--epochs", "2", "--generations", "1", "--no-progress",
              "--threads", "1", "--runs-dir", str(tmp_path)]
    assert main(["run", *common, "--augment", "crop", "--name", "crop"]) == 0
    teacher = tmp_path / "crop"
    ds = load_dataset("digits")
    x = ds.test.images.float() / 255
    want = load_classifier(teacher, generation=1)(x)
    assert main(["export", str(teacher), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    assert torch.allclose(torch.jit.load(str(tmp_path / "m.pt"))(x), want, atol=1e-4)
    accuracy = 100 * (want.argmax(1) == ds.test.labels).float().mean().item()
    assert main(["run", *common, "--refinery-checkpoint", str(teacher / "seed-0/gen-1/model.safetensors"),
                 "--name", "student"]) == 0
    record = json.loads((tmp_path / "student/seed-0/refinery/summary.json").read_text())
    assert abs(record["test_top1"] - accuracy) < 0.3, (record["test_top1"], accuracy)
