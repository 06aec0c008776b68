"""`refinery inspect` on a real tiny run: the numbers behind each section, bad input, old runs, and the page in a
real browser."""

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from labelrefinery.cli import main

pytestmark = pytest.mark.slow


RUN = ["run", "--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--no-progress", "--generations", "2",
       "--label-noise", "symmetric:0.2", "--augment", "online", "--labels", "online"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("inspect")
    assert main([*RUN, "--runs-dir", str(d), "--name", "r"]) == 0
    return d / "r"


@pytest.fixture(scope="module")
def report(run_dir):
    assert main(["inspect", str(run_dir), "--images", "4"]) == 0
    return run_dir / "report.html"


def _own_labels(run_dir: Path, g: int):
    z = np.load(run_dir / f"seed-0/gen-{g}/labels.npz")
    own = z["views"] == 0
    order = np.argsort(z["indices"][own])
    return z["indices"][own][order], z["labels"][own][order].astype(np.float64)


def test_inspect_writes_page_and_data(run_dir, report, capsys):
    assert report.is_file()
    data = json.loads((run_dir / "report.json").read_text())
    (view,) = data["runs"]
    split = np.load(run_dir / "seed-0/split.npz")
    for stats in view["label_stats"]:
        g = stats["generation"]
        indices, probs = _own_labels(run_dir, g)
        pos = np.searchsorted(split["train_indices"], indices)  # train_indices are ascending
        given, clean = split["train_labels"][pos], split["clean_train_labels"][pos]
        p_given = probs[np.arange(len(given)), given]  # a given label tied with the top class stands
        top = np.where((probs > p_given[:, None]).any(1), probs.argmax(1), given)
        summary = json.loads((run_dir / f"seed-0/gen-{g}/summary.json").read_text())
        p = np.clip(probs, 1e-30, 1)
        assert stats["mean_entropy"] == pytest.approx(float(-(probs * np.log(p)).sum(1).mean()), abs=1e-6)
        assert 100 * stats["agreement"] == pytest.approx(summary["refined_label_agreement"], abs=1e-4)
        flipped = given != clean
        assert stats["corrected"] == pytest.approx((top[flipped] == clean[flipped]).mean())
        assert stats["harmed"] == pytest.approx((top[~flipped] != given[~flipped]).mean())
        assert stats["disputed"] == pytest.approx(summary["label_quality"]["disputed"])
    k = len(view["classes"])
    last = view["label_stats"][-1]["generation"]
    matrix = np.array(view["confusion"][str(last)])
    assert matrix.shape == (k, k) and matrix.sum() == len(split["train_indices"])
    assert np.diag(matrix).sum() == pytest.approx(view["label_stats"][-1]["agreement"] * matrix.sum())
    for g, overlap in view["overlap"].items():
        assert np.allclose(np.array(overlap, dtype=float).sum(1), 1.0, atol=1e-5)
    # the grids: 4 images per group, disputed ones in ascending refined probability of the given label
    disputed = view["groups"]["disputed"]
    assert len(disputed) == 4
    judged = [s["generation"] for s in view["label_stats"]].index(view["issues"]["generation"])  # best by val
    p_given = [dict(map(tuple, it["top3"][judged])).get(it["given"], 0.0) for it in disputed]
    assert p_given == sorted(p_given)
    assert {"flipped_corrected", "flipped_missed", "clean_harmed"} <= set(view["groups"])
    # per-crop labels (labels=online): six crops of one image, labelled by every generation
    crops = view["crops"]
    assert len(crops["items"]) == 6 and {it["index"] for it in crops["items"]} == {crops["index"]}
    assert all(len(it["top3"]) == 2 for it in crops["items"])
    # the survey: one random crop of each of up to 256 training images; the crops shown name another class
    assert crops["surveyed"] == min(256, len(split["train_indices"]))
    assert 0 <= crops["crop_other_share"] <= 1 and 0 <= crops["whole_other_share"] <= 1
    assert all(it["top3"][0][0][0] != it["given"] for it in crops["others"])
    assert len(crops["others"]) == min(6, round(crops["crop_other_share"] * crops["surveyed"]))
    # the label-issue rows are those of `refinery label-issues` for the same generation
    assert main(["label-issues", str(run_dir), "--generation", str(view["issues"]["generation"])]) == 0
    rows = list(csv.DictReader((run_dir / "label_issues.csv").open()))
    assert [r["index"] for r in rows[: len(view["issues"]["rows"])]] == [str(r["index"]) for r in view["issues"]["rows"]]
    assert view["issues"]["disputed"] == len(rows)
    # the CSVs
    stats_rows = list(csv.DictReader((run_dir / "report_label_stats.csv").open()))
    assert [int(r["generation"]) for r in stats_rows] == [1, 2]
    image_rows = list(csv.DictReader((run_dir / "report_images.csv").open()))
    assert {r["group"] for r in image_rows} >= {"disputed", "changed", "random"}
    html = report.read_text()
    assert html.count("<img ") == html.count('src="data:image/png;base64,')
    assert "Figure 4" in html and "Label issues" in html and "Run facts" in html and "http" not in html.split("<main>")[1]


def test_inspect_bad_input(run_dir, tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(run_dir / "config.yaml", empty / "config.yaml")
    assert main(["inspect", str(empty)]) == 2
    assert "no finished generation" in capsys.readouterr().err
    for args in (["--images", "0"], ["--seed", "4"], ["--out", str(tmp_path / "r.txt")],
                 ["--out", str(run_dir / "seed-0" / "r.html")]):
        assert main(["inspect", str(run_dir), *args]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("refinery: error:")
    assert not list(tmp_path.rglob("*.html")) and not (empty / "report.html").exists()
    assert not (run_dir / "seed-0" / "r.html").exists()


def test_inspect_old_run_without_stored_labels(run_dir, tmp_path, capsys):
    """A split.npz of an older version (no given labels): the report recovers them from the dataset."""
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    z = dict(np.load(old / "seed-0/split.npz"))
    given = z.pop("train_labels")
    for key in ("clean_train_labels", "clean_val_labels", "train_flipped", "val_flipped", "sha256"):
        z.pop(key)  # older versions stored neither the given labels nor the split's checksum
    np.savez(old / "seed-0/split.npz", **z)
    out = tmp_path / "out" / "old.html"
    assert main(["inspect", str(old), "--out", str(out), "--images", "2"]) == 0
    view = json.loads((tmp_path / "out" / "old.json").read_text())["runs"][0]
    indices, probs = _own_labels(run_dir, 1)
    assert view["label_stats"][0]["agreement"] == pytest.approx((probs.argmax(1) == given).mean())
    assert "corrected" not in view["label_stats"][0]  # no clean labels stored: no noise figures
    assert (tmp_path / "out" / "old_images.csv").is_file()


def test_inspect_several_runs(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "copy"
    shutil.copytree(run_dir, other)
    assert main(["inspect", str(run_dir), str(other), "--images", "1"]) == 0
    data = json.loads((tmp_path / "report.json").read_text())
    assert len(data["runs"]) == 2 and (tmp_path / "report.html").is_file()
    assert main(["inspect", str(run_dir), str(run_dir)]) == 2  # the same run twice
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def _browser():
    """A headless Debian Chromium driven by chromedriver, or a skip that says what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (the test extra)")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no Chromium here: the README's test command installs Debian's chromium and chromium-driver; "
                    "where apt-get cannot, this test is skipped")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1366,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))


@pytest.mark.browser
def test_report_in_headless_chromium(report, tmp_path):
    from PIL import Image

    browser = _browser()
    try:
        browser.get(report.resolve().as_uri())
        state = browser.execute_script(
            "return {ready: document.readyState, images: Array.from(document.images).map(i => [i.complete, "
            "i.naturalWidth]), overflow: document.documentElement.scrollWidth - window.innerWidth, "
            "text: document.body.innerText}")
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        shot = browser.get_screenshot_as_png()
    finally:
        browser.quit()
    assert state["ready"] == "complete"
    assert len(state["images"]) > 20
    assert all(done and width > 0 for done, width in state["images"])  # every image decoded
    assert errors == []
    assert state["overflow"] <= 0  # readable at a laptop's width: no sideways scrolling
    assert "Crops the first refinery names differently from their image's label" in state["text"]
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=np.float64)
    assert pixels.std() > 10  # not blank
