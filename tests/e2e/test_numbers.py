"""Every number the tool shows is the number a user gets.

Label statistics (``summary.json``, ``refinery inspect``, ``label-issues``) are recomputed here, independently,
from the rows ``labels.npz`` holds, for every storage form, with injected noise and exact ties between the
given label and another class (bf16 logits and float16 rows make them). Test top-1 is recomputed by every way a
user runs a saved model (``load_classifier``, ``refinery predict`` on image files, ``refinery evaluate``, a
TorchScript export): the same count of correct images, not a tolerance.
"""

import csv
import json

import numpy as np
import pytest
import torch

import labelrefinery.generation as generation_module
from labelrefinery import load_classifier
from labelrefinery.cli import main
from labelrefinery.data import load_dataset

from ..conftest import tiny_run


def _rows_as_stored(path):
    """``(indices, views, (M, K) float64 rows)`` decoded from a labels.npz without the package's code."""
    with np.load(path) as z:
        storage = str(z["storage"])
        if storage == "float32":
            rows = z["labels"].astype(np.float64)
        elif storage == "float16":
            rows = z["labels"].astype(np.float32)
            rows = (rows / rows.sum(1, keepdims=True)).astype(np.float64)
        else:
            top, values = z["topk_indices"], z["topk_values"].astype(np.float32)
            rows = np.zeros((len(top), len(z["classes"])), dtype=np.float32)
            np.put_along_axis(rows, top, values, axis=1)
            rows = (rows / rows.sum(1, keepdims=True)).astype(np.float64)
        return z["indices"], z["views"], rows


def _independent_statistics(rows, given, clean):
    """The definitions in words: disputed = another class strictly more probable than the given label; the
    suggested label is the argmax of a disputed row and the given label otherwise."""
    n = len(given)
    p_given = rows[np.arange(n), given]
    disputed = (rows > p_given[:, None]).any(1)
    suggested = np.where(disputed, rows.argmax(1), given)
    flipped = given != clean
    tp = int((disputed & flipped).sum())
    precision, recall = tp / int(disputed.sum()), tp / int(flipped.sum())
    logs = np.where(rows > 0, rows * np.log(np.where(rows > 0, rows, 1)), 0.0)
    return {"disputed": int(disputed.sum()) / n, "agreement": int((~disputed).sum()) / n,
            "flipped": int(flipped.sum()) / n,
            "corrected": int((flipped & (suggested == clean)).sum()) / int(flipped.sum()),
            "harmed": int((~flipped & disputed).sum()) / int((~flipped).sum()),
            "detection_precision": precision, "detection_recall": recall,
            "detection_f1": 2 * precision * recall / (precision + recall),
            "mean_entropy": float(-logs.sum(1).mean()), "ties": int(((rows.max(1) == p_given)
                                                                     & (rows.argmax(1) != given)).sum())}


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["float32", "float16", "topk:3"])
def test_label_statistics_are_those_of_the_stored_rows(tmp_path, monkeypatch, capsys, storage):
    real_predict = generation_module.predict

    def coarse_predict(*args, **kwargs):  # logits on a 0.5 grid: many exact ties, as bf16 logits give some
        return real_predict(*args, **kwargs).mul(2).round().div(2)

    monkeypatch.setattr(generation_module, "predict", coarse_predict)
    assert tiny_run(tmp_path, "r", "--label-noise", "symmetric:0.3", "--label-storage", storage) == 0
    run = tmp_path / "r"
    split = np.load(run / "seed-0/split.npz")
    assert main(["inspect", str(run), "--out", str(tmp_path / "page.html"), "--images", "1"]) == 0
    page = {s["generation"]: s for s in json.loads((tmp_path / "page.json").read_text())["runs"][0]["label_stats"]}
    ties = 0
    for g in (1, 2):
        indices, views, rows = _rows_as_stored(run / f"seed-0/gen-{g}/labels.npz")
        own = views == 0
        indices, rows = indices[own], rows[own]
        pos = np.searchsorted(split["train_indices"], indices)
        given, clean = split["train_labels"][pos].astype(np.int64), split["clean_train_labels"][pos].astype(np.int64)
        want = _independent_statistics(rows, given, clean)
        ties += want.pop("ties")
        summary = json.loads((run / f"seed-0/gen-{g}/summary.json").read_text())
        quality = summary["label_quality"]
        for key in ("disputed", "flipped", "corrected", "harmed", "detection_precision", "detection_recall",
                    "detection_f1"):
            assert quality[key] == want[key], (g, key)
            assert page[g][key] == want[key], (g, key)
        assert summary["refined_label_agreement"] == 100 * want["agreement"] and page[g]["agreement"] == want["agreement"]
        assert summary["refined_label_entropy"] == pytest.approx(want["mean_entropy"], rel=1e-9, abs=1e-12)
        assert main(["label-issues", str(run), "--generation", str(g),
                     "--out", str(tmp_path / f"issues-{g}.csv")]) == 0
        listed = list(csv.DictReader((tmp_path / f"issues-{g}.csv").open()))
        assert sum(r["split"] == "train" for r in listed) == round(want["disputed"] * len(given))
    assert ties > 0  # the rule for a given label tied with the top class was exercised
    results = json.loads((run / "results.json").read_text())
    assert results["generations"][0]["label_quality"]["harmed"] == pytest.approx(
        json.loads((run / "seed-0/gen-1/summary.json").read_text())["label_quality"]["harmed"])


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    """A 2-generation digits run whose training and refined labels ran under bf16 autocast."""
    d = tmp_path_factory.mktemp("bf16")
    argv = ["run", "--dataset", "digits", "--epochs", "2", "--generations", "2", "--no-progress", "--threads", "1",
            "--precision", "bf16", "--runs-dir", str(d), "--name", "r"]
    assert main(argv) == 0
    return d / "r"


@pytest.mark.slow
def test_the_saved_model_scores_what_the_run_recorded_every_way_it_is_used(bf16_run, tmp_path, capsys):
    from PIL import Image

    from labelrefinery.classifier import export_classifier

    ds = load_dataset("digits")
    images, labels = ds.test.images, ds.test.labels
    folder = tmp_path / "test-images"
    folder.mkdir()
    for i, img in enumerate(images):  # PNG is lossless: the files hold the stored test images
        Image.fromarray(img[0].numpy()).save(folder / f"{i:05d}.png")
    info = json.loads((bf16_run / "run.json").read_text())
    assert info["precision"] == "bfloat16" and "fp32" in info["scored_as"]
    capsys.readouterr()
    assert main(["evaluate", str(bf16_run), "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    for g in (1, 2):
        summary = json.loads((bf16_run / f"seed-0/gen-{g}/summary.json").read_text())
        recorded = round(summary["test_top1"] * len(labels) / 100)
        assert 100 * recorded / len(labels) == summary["test_top1"]
        classifier = load_classifier(bf16_run, generation=g)
        assert int((classifier.predict_proba(images).argmax(1) == labels).sum()) == recorded
        assert f"| 0 | R{g} | {summary['test_top1']:.2f} |" in table
        out = tmp_path / f"pred-{g}.csv"
        assert main(["predict", str(bf16_run), str(folder), "--generation", str(g), "--device", "cpu",
                     "--top-k", "1", "--out", str(out)]) == 0
        predicted = [ds.classes.index(r["label_1"]) for r in csv.DictReader(out.open())]
        assert int((torch.tensor(predicted) == labels).sum()) == recorded
        script = torch.jit.load(str(export_classifier(classifier, tmp_path / f"m{g}.pt", "torchscript")))
        with torch.inference_mode():
            unit = images.float() / 255  # an export takes [0, 1] floats (its documented input)
            top = torch.cat([script(unit[i: i + 256]).argmax(1) for i in range(0, len(images), 256)])
        assert int((top == labels).sum()) == recorded
