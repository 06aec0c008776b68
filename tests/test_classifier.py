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

README = Path(__file__).parent.parent / "README.md"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clf")
    assert main(["run", "--dataset", "digits", "--epochs", "3", "--generations", "2", "--batch-size", "64",
                 "--no-progress", "--precision", "fp32", "--runs-dir", str(d), "--name", "r"]) == 0
    return d / "r"


def test_checkpoint_stores_its_preprocessing(run_dir):
    _, classes, spec, extra = load_checkpoint(run_dir / "seed-0/gen-1/model.safetensors")
    ds = load_dataset("digits")
    pre = extra["preprocessing"]
    assert pre["mean"] == pytest.approx(list(ds.mean)) and pre["std"] == pytest.approx(list(ds.std))
    assert (pre["channels"], pre["stored_size"], pre["augment"]) == (1, 8, "none")
    assert classes == ds.classes and spec["image_size"] == 8


def test_loaded_generation_scores_what_the_run_measured(run_dir):
    ds = load_dataset("digits")
    for g in (1, 2):
        clf = load_classifier(run_dir, generation=g)
        summary = json.loads((run_dir / f"seed-0/gen-{g}/summary.json").read_text())
        acc_uint8 = 100 * (clf.predict_proba(ds.test.images).argmax(1) == ds.test.labels).float().mean().item()
        assert acc_uint8 == pytest.approx(summary["test_top1"], abs=0.3)
        unit = ds.test.images.float() / 255  # [0, 1] floats give the same predictions
        assert torch.equal(clf.predict_proba(unit).argmax(1), clf.predict_proba(ds.test.images).argmax(1))
    bigger = torch.nn.functional.interpolate(ds.test.images.float(), size=(16, 16), mode="nearest").to(torch.uint8)
    acc = (load_classifier(run_dir).predict_proba(bigger).argmax(1) == ds.test.labels).float().mean().item()
    assert acc > 0.8  # other sizes are resized to the training size first
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        load_classifier(run_dir)(torch.zeros(2, 3, 8, 8))


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


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_export_includes_preprocessing(run_dir, tmp_path, fmt, capsys):
    ds = load_dataset("digits")
    out = tmp_path / f"m.{fmt}"
    assert main(["export", str(run_dir), "--format", fmt, "--out", str(out), "--generation", "1"]) == 0
    loaded = torch.jit.load(str(out)) if fmt == "torchscript" else torch.export.load(str(out)).module()
    x = ds.test.images[:50].float() / 255
    want = load_classifier(run_dir, generation=1)(x)
    assert torch.allclose(loaded(x), want, atol=1e-4)


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
