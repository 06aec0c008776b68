"""Label issues a user can act on: rows mapped to files, validation images checked, label files as datasets,
fixes fed back into training; folder images at their own size; predict and export for files."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from labelrefinery.cli import main
from labelrefinery.data import load_dataset

RUN = ["run", "--epochs", "3", "--generations", "1", "--no-progress", "--threads", "1", "--batch-size", "32"]


def _stripes(root, per_class=(40, 10), side=12, seed=0):
    """Three classes told apart by a bright vertical band; ``train/`` and ``val/`` class folders of PNGs."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), per_class):
        for ci, c in enumerate("abc"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 60, (side, side, 3), dtype=np.uint8)
                a[:, ci * side // 3:(ci + 1) * side // 3] += 150
                Image.fromarray(a).save(root / split / c / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def moved_run(tmp_path_factory):
    """A folder with 9 training files moved into a wrong class folder, and a finished run on it."""
    tmp = tmp_path_factory.mktemp("moved")
    root = _stripes(tmp / "imgs")
    moved = []
    for i in range(3):
        for src, dst in (("a", "b"), ("b", "c"), ("c", "a")):
            target = root / "train" / dst / f"moved-{src}{i}.png"
            (root / "train" / src / f"{i:03d}.png").rename(target)
            moved.append(str(target))
    argv = [*RUN, "--dataset", f"folder:{root}", "--runs-dir", str(tmp / "runs"), "--name", "r", "--cache-dir",
            str(tmp / "cache")]
    assert main(argv) == 0
    return tmp, root, moved


def test_rows_name_files_and_validation_images_are_checked_out_of_sample(moved_run, capsys):
    tmp, root, moved = moved_run
    run, out = tmp / "runs" / "r", tmp / "issues.csv"
    capsys.readouterr()
    assert main(["label-issues", str(run), "--all", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "by seed 0's R1, the best by validation" in said and "validation)" in said
    rows = list(csv.DictReader(out.open()))
    split = np.load(run / "seed-0" / "split.npz")
    assert sorted(int(r["index"]) for r in rows) == sorted([*split["train_indices"], *split["val_indices"]])
    assert sum(r["split"] == "val" for r in rows) == len(split["val_indices"])
    by_file = {r["source"]: r for r in rows}
    assert all(f.startswith(str(root / "train")) for f in by_file) and len(by_file) == len(rows)
    assert all(float(by_file[f]["margin"]) < 0 for f in moved)  # every moved file found, held out or not
    # validation rows are the saved model's own predictions on those files
    from labelrefinery import load_classifier

    clf = load_classifier(run)
    val = [r for r in rows if r["split"] == "val"]
    images = torch.stack([torch.from_numpy(np.array(Image.open(r["source"]))).permute(2, 0, 1) for r in val])
    probs = clf.predict_proba(images)
    for r, p in zip(val, probs):
        assert float(r["p_given"]) == pytest.approx(float(p[clf.classes.index(r["given_label"])]), abs=1e-4)


def test_fixed_labels_round_trip_through_a_csv_dataset(moved_run, capsys):
    tmp, root, moved = moved_run
    run, fixed = tmp / "runs" / "r", tmp / "fixed.csv"
    assert main(["label-issues", str(run), "--out", str(tmp / "i.csv"), "--write-labels", str(fixed)]) == 0
    rows = list(csv.DictReader(fixed.open()))
    files = sorted(str(p) for p in root.rglob("*.png"))
    assert sorted(r["path"] for r in rows) == files  # every image once: none lost, none twice
    label = {r["path"]: r["label"] for r in rows}
    true = {f: f.split("moved-")[1][0] for f in moved}
    assert all(label[f] == true[f] for f in moved)  # the moved files get their own class back
    assert {r["split"] for r in rows} == {"train", "test"}
    capsys.readouterr()
    assert main([*RUN, "--dataset", f"csv:{fixed}", "--runs-dir", str(tmp / "runs"), "--name", "fixed",
                 "--cache-dir", str(tmp / "cache")]) == 0
    summary = json.loads((tmp / "runs" / "fixed" / "seed-0" / "gen-1" / "summary.json").read_text())
    assert summary["label_quality"]["disputed"] < 0.05
    before, listed = fixed.read_bytes(), sorted(tmp.iterdir())
    capsys.readouterr()  # the retrained run's own label file is never rewritten under it
    assert main(["label-issues", str(tmp / "runs" / "fixed"), "--write-labels", str(fixed)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is the label file this run trained on" in err and "--write-labels fixed-2.csv" in err
    assert fixed.read_bytes() == before and sorted(tmp.iterdir()) == listed
    assert not (tmp / "runs" / "fixed" / "label_issues.csv").exists()  # refused before anything is written


@pytest.mark.parametrize("rows,message", [
    ("path,label\nnope.png,a\n", "does not exist"),
    ("path,label\nimgs/train/a/000.png,a\nimgs/train/a/000.png,b\n", "listed twice"),
    ("path,label,split\nimgs/train/a/000.png,a,holdout\n", "split 'holdout'"),
    ("path,label\nimgs/train/a/000.png,\n", "empty label"),
    ("file,class\nimgs/train/a/000.png,a\n", "header"),
])
def test_a_bad_label_file_is_one_line_and_nothing_is_written(tmp_path, capsys, rows, message):
    _stripes(tmp_path / "imgs", per_class=(2, 1))
    (tmp_path / "labels.csv").write_text(rows)
    assert main([*RUN, "--dataset", f"csv:{tmp_path / 'labels.csv'}", "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "labels.csv" in err[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("names,message", [
    ("a\nb\n", "label 'c' is not in --classes"),
    ("a\nb\na\nc\n", "names 'a' twice"),
    ("\n\n", "names no class"),
])
def test_a_classes_file_sets_the_classes_and_refuses_what_it_does_not_name(tmp_path, capsys, names, message):
    root = _stripes(tmp_path / "imgs", per_class=(2, 1))
    rows = "path,label,split\n" + "".join(f"imgs/{split}/{c}/{i:03d}.png,{c},{split}\n" for split, n in
                                            (("train", 2), ("val", 1)) for c in "abc" for i in range(n))
    (tmp_path / "labels.csv").write_text(rows)
    (tmp_path / "classes.txt").write_text("c\nb\na\n")
    ds = load_dataset(f"csv:{tmp_path / 'labels.csv'}", classes=str(tmp_path / "classes.txt"),
                      cache_dir=tmp_path / "cache", progress=False)
    assert ds.classes == ["c", "b", "a"] and ds.train.labels[ds.train.sources.index(str(root / "train/a/000.png"))] == 2
    (tmp_path / "classes.txt").write_text(names)
    capsys.readouterr()
    assert main([*RUN, "--dataset", f"csv:{tmp_path / 'labels.csv'}", "--classes", str(tmp_path / "classes.txt"),
                 "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not (tmp_path / "runs").exists()


def test_a_label_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    (tmp_path / "labels.csv").write_bytes("path,label\nbild.png,Käfer\n".encode("latin-1"))
    assert main([*RUN, "--dataset", f"csv:{tmp_path / 'labels.csv'}", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_folder_images_keep_their_own_size_and_an_edited_folder_is_read_again(tmp_path, capsys):
    root = _stripes(tmp_path / "imgs", per_class=(4, 2))
    ds = load_dataset(f"folder:{root}", cache_dir=tmp_path / "cache", in_memory="yes", progress=False)
    assert ds.train.images.shape[-1] == 12 and "12 x 12 px, the most common shorter side" in capsys.readouterr().err
    assert load_dataset(f"folder:{root}", image_size=16, cache_dir=tmp_path / "cache",
                        progress=False).train.images.shape[-1] == 16
    first = ds.train.sources.index(str(root / "train" / "a" / "000.png"))
    Image.fromarray(np.full((12, 12, 3), 255, dtype=np.uint8)).save(root / "train" / "a" / "000.png")
    again = load_dataset(f"folder:{root}", cache_dir=tmp_path / "cache", in_memory="yes", progress=False)
    assert int(again.train.images[first].min()) == 255  # the cache was not reused for the edited file


def test_report_names_columns_by_run_directory(moved_run, capsys):
    tmp, root, _ = moved_run
    other = tmp / "runs" / "other"
    assert main([*RUN, "--dataset", f"folder:{root}", "--runs-dir", str(tmp / "runs"), "--name", "other",
                 "--epochs", "2", "--cache-dir", str(tmp / "cache")]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp / "runs" / "r"), str(other), "--out", str(tmp / "rep")]) == 0
    text = capsys.readouterr().out
    assert "| generation | r | other |" in text and "r: dataset=folder:" in text and "epochs=3" in text


def test_predict_skips_unreadable_files_and_exports_carry_class_names(moved_run, tmp_path, capsys):
    tmp, root, _ = moved_run
    run = tmp / "runs" / "r"
    (tmp_path / "x").mkdir()
    Image.open(root / "val" / "a" / "000.png").save(tmp_path / "x" / "good.png")
    (tmp_path / "x" / "bad.png").write_bytes(b"not an image")
    assert main(["predict", str(run), str(tmp_path / "x")]) == 2
    assert "--skip-bad-images" in capsys.readouterr().err
    assert main(["predict", str(run), str(tmp_path / "x"), "--skip-bad-images", "--top-k", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 2 and "good.png" in captured.out and "bad.png" in captured.err
    assert main(["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 0
    extra = {"classes.json": "", "preprocessing.json": ""}
    torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    assert json.loads(extra["classes.json"]) == ["a", "b", "c"]
    assert json.loads(extra["preprocessing.json"])["stored_size"] == 12


def test_verified_labels_name_images_by_their_files(tmp_path):
    """--trusted FILE / --true-labels FILE rows by file path (relative to the CSV's folder) reach the right
    training images of a CSV dataset; a file the dataset does not list is refused naming the line."""
    from labelrefinery.config import resolve_config
    from labelrefinery.data import DataError
    from labelrefinery.protocol import load_run_dataset, with_given_labels

    _stripes(tmp_path / "imgs", per_class=(6, 2))
    rows = "path,label,split\n" + "".join(f"imgs/{split}/{c}/{i:03d}.png,{c},{split}\n" for split, n in
                                          (("train", 6), ("val", 2)) for c in "abc" for i in range(n))
    (tmp_path / "labels.csv").write_text(rows)
    (tmp_path / "v").mkdir()
    verified = tmp_path / "v" / "verified.csv"
    listed = [("a", 0, "b"), ("a", 1, "a"), ("b", 0, "b"), ("b", 1, "c"), ("c", 0, "c"), ("c", 1, "a")]
    verified.write_text("image,label\n" + "".join(f"../imgs/train/{c}/{i:03d}.png,{y}\n" for c, i, y in listed))
    cfg = resolve_config("quick", {"dataset": f"csv:{tmp_path / 'labels.csv'}", "trusted": str(verified),
                                   "cache_dir": str(tmp_path / "cache"), "progress": False})
    ds, _ = with_given_labels(load_run_dataset(cfg), cfg)
    by_file = {Path(f).relative_to(tmp_path / "imgs/train").as_posix(): i for i, f in enumerate(ds.train.sources)}
    for c, i, y in listed:
        index = by_file[f"{c}/{i:03d}.png"]
        assert index in ds.trusted.indices.tolist() and ds.classes[int(ds.train.labels[index])] == y
    given = {int(i): ds.classes[int(g)] for i, g in zip(ds.trusted.indices, ds.trusted.given)}
    assert all(given[by_file[f"{c}/{i:03d}.png"]] == c for c, i, _ in listed)  # what the dataset said
    verified.write_text("image,label\n../imgs/val/a/000.png,a\n")
    with pytest.raises(DataError, match="line 2: ../imgs/val/a/000.png is not a training image"):
        with_given_labels(load_run_dataset(cfg), cfg)
