"""``refinery inspect``: what the refinery did to the labels, as one HTML page plus the data behind it.

:func:`inspect_runs` reads finished run directories only (no training; old runs
too: what they did not save, such as label statistics, is computed from their
refined labels) and writes, atomically:

- ``report.html`` (``RUN_DIR/report.html`` for one run, else ``--out``): the page
  (:mod:`labelrefinery.report.html`): results, what the labels became, Figure 4
  for real images, label issues, run facts;
- ``report.json`` beside it: every number on the page (images left out);
- ``report_label_stats.csv``: per run and generation, the refined labels' mean
  entropy, agreement with the given labels, share whose suggested label changed, and the
  label-quality shares;
- ``report_images.csv``: every image shown, its group, given (and clean) label
  and top-3 refined labels per generation.

Image grids show one seed (``--seed``, default the first with a finished
generation; seed 0 normally). The dataset is loaded for the pictures; where it
cannot be, the page says so and shows the labels without pictures.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..augment import input_size, make_augment
from ..batch import Pipeline
from ..console import interactive
from ..data import read_all
from ..errors import ConfigError, RunDirError, UserError
from .html import render
from ..noise import given_label_scores
from .labelissues import checked_images, issue_columns, issue_rows, own_labels, split_labels
from .labelstats import class_overlap, confusion, crop_disagreement, pick_images, top_k
from ..noise import generation_label_stats, suggested_labels
from ..protocol import load_run_dataset, with_given_labels
from .tables import best_of, format_table, summarize_run
from ..rundir import RunDir, write_report_files

ISSUE_ROWS = 25  # label issues listed on the page (the CSV of `refinery label-issues` has them all)
CROPS_SHOWN = 6  # crops of the one image in the per-crop view
CROP_CANDIDATES = 48  # images whose crops are labelled to find the most disagreeing one
CROP_SURVEY = 256  # random training images, one crop each, for the share of crops that name another class


def _seed_to_show(rd: RunDir, wanted: int | None) -> int:
    finished = [s for s in rd.seeds() if rd.finished_generations(s)]
    if not finished:
        raise RunDirError(f"{rd.root} has no finished generation yet; run `refinery run` until R1 finishes, then "
                          "inspect it")
    if wanted is None:
        return finished[0]
    if wanted not in finished:
        raise ConfigError(f"--seed {wanted} has no finished generation in {rd.root}; seeds with one: {finished}")
    return wanted


def _load_dataset(cfg, notes: list[str]):
    try:
        dataset = load_run_dataset(cfg)
        return with_given_labels(dataset, cfg)[0]
    except UserError as e:
        notes.append(f"Images are not shown: the dataset could not be loaded here ({e}).")
        return None


def _card(pos: int, indices, given, clean, label_sets, classes, dataset) -> dict:
    index = int(indices[pos])
    top3 = []
    for probs in label_sets:
        ks, ps = top_k(probs[pos : pos + 1])
        top3.append([[classes[k], float(p)] for k, p in zip(ks[0], ps[0])])
    sources = None if dataset is None else dataset.train.sources
    return {"index": index, "given": classes[given[pos]], "clean": None if clean is None else classes[clean[pos]],
            "image": None if dataset is None else dataset.train.images[index].numpy(), "top3": top3,
            "source": "" if sources is None else sources[index]}


def _crop_view(rd: RunDir, cfg, seed: int, gens: list[int], dataset, pool: tuple[np.ndarray, list[str]],
               classes: list[str], survey: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict | None:
    """What the refinery says of the random crops a run with a crop augmentation trains on: a survey of one crop
    of each ``survey`` image (``(indices, given labels, generation 1's suggested labels on the whole image)``):
    the share whose generation-1 argmax names another class than the image's label, against the whole images'
    share, and the most confident such crops (the paper's Figure 4: a crop showing only part of the scene);
    for ``labels=online`` also the crops of the one image of ``pool`` (``(candidates, their given labels' names)``)
    they disagree most on."""
    candidates, given_names = pool
    d = cfg.data
    side = dataset.image_shape[1]
    augment = make_augment(d.augment, dataset.hflip_keeps_class, side)
    if augment is None or len(candidates) == 0:
        return None
    pipeline = Pipeline.create(torch.device("cpu"), dataset.mean, dataset.std)
    generator = torch.Generator().manual_seed(seed)
    models = [rd.load_model(seed, g, pipeline.device)[0] for g in gens]

    def label(crops: torch.Tensor) -> list[np.ndarray]:
        with torch.inference_mode():
            return [m(pipeline.normalize(crops)).float().softmax(1).numpy() for m in models]

    def card(pixels: np.ndarray, probs: list[np.ndarray], row: int, index: int, given: str, caption: str) -> dict:
        top3 = []
        for p in probs:
            ks, ps = top_k(p[row:row + 1])
            top3.append([[classes[k], float(v)] for k, v in zip(ks[0], ps[0])])
        return {"index": index, "given": given, "image": pixels[row], "top3": top3, "caption": caption}

    size = f"input {input_size(d.augment, side)} px"
    indices, given, whole = survey
    crops = augment(pipeline.to_unit(read_all(dataset.train.images[torch.from_numpy(indices)])), generator)
    probs = label(crops)
    named = suggested_labels(given, probs[0])  # the one rule of every disputed-label figure
    other = np.flatnonzero(named != given)
    order = other[np.argsort(-probs[0][other, named[other]], kind="stable")][:CROPS_SHOWN]
    pixels = crops[torch.from_numpy(order)].mul(255).round().clamp(0, 255).to(torch.uint8).numpy()
    out = {"generations": gens, "surveyed": len(indices),
           "crop_other_share": float(len(other) / max(len(indices), 1)),
           "whole_other_share": float((whole != given).mean()) if len(indices) else 0.0,
           "others": [card(pixels, [p[order] for p in probs], i, int(indices[r]), classes[given[r]],
                           f"a crop of image #{indices[r]} ({size})") for i, r in enumerate(order)]}
    if cfg.refinement.labels != "online":
        return out
    crops_per_image = 8
    x = pipeline.to_unit(read_all(dataset.train.images[torch.from_numpy(candidates)])).repeat_interleave(
        crops_per_image, 0)
    crops = augment(x, generator)  # (n * 8, C, h, w) in [0, 1]
    probs = label(crops)
    first = probs[0].reshape(len(candidates), crops_per_image, -1)
    best = int(np.argmax(crop_disagreement(first)))
    rows = slice(best * crops_per_image, best * crops_per_image + CROPS_SHOWN)
    pixels = crops[rows].mul(255).round().clamp(0, 255).to(torch.uint8).numpy()
    items = [card(pixels, [p[rows] for p in probs], c, int(candidates[best]), given_names[best],
                  f"crop {c + 1} ({size})") for c in range(CROPS_SHOWN)]
    return {**out, "index": int(candidates[best]), "given": given_names[best], "items": items}


def _timing(rd: RunDir, results: dict, epochs: list[dict]) -> list[list]:
    rows = []
    for seed, gens in results["per_seed"].items():
        for s in gens:
            rates = [r["images_per_s"] for r in epochs if str(r["seed"]) == seed
                     and r["generation"] == s["generation"] and "images_per_s" in r]
            rows.append([seed, f"R{s['generation']}", f"{s.get('train_time_s', float('nan')):.1f}", s["epochs_run"],
                         f"{np.median(rates):.0f}" if rates else ""])
    return rows


def _facts(rd: RunDir, results: dict, seed: int, n_train: int, dataset) -> dict:
    info = rd.read_run_info()
    wall = sum(s.get("train_time_s", 0.0) for gens in results["per_seed"].values() for s in gens)
    facts = {"run directory": str(rd.root.resolve()), "code version": info.get("code_version", "?"),
             "torch": info.get("torch", "?"), "device": info.get("device", "?"),
             "precision": info.get("precision_reason", info.get("precision", "?")),
             "CPU": f"{info.get('cpu', '?')}, features: {' '.join(info.get('cpu_features', [])) or '?'}",
             "threads": info.get("threads", "?"), "dataset": results["config"]["dataset"],
             "training images (seed shown, after the validation split)": n_train,
             "seeds with a finished generation": ", ".join(results["per_seed"]),
             "seed shown in the image grids": seed,
             "wall time of all finished generations": f"{wall:.0f} s"}
    if dataset is not None:
        facts["classes"] = ", ".join(dataset.train.classes)
    return facts


STEPS_PER_RUN = 4  # progress steps of inspect_run: labels, image grids, per-crop labels, label issues


def inspect_run(run_dir: Path, images: int = 8, seed: int | None = None,
                step: Callable[[], None] = lambda: None) -> dict:
    """Everything the page shows about one run directory (a *view* of :func:`labelrefinery.report.html.render`).

    Args:
        images: images per group of the image grids (>= 1).
        seed: whose chain the label sections show (default: the first seed with a finished generation).
        step: called after each of its :data:`STEPS_PER_RUN` phases (for a progress bar).

    Raises:
        RunDirError: not a run directory, no finished generation, or a damaged file.
        ConfigError: a seed without finished generations.
    """
    rd = RunDir(run_dir)
    if not rd.is_run():
        raise RunDirError(f"{run_dir} is not a run directory (no config.yaml); give a directory `refinery run` made")
    seed = _seed_to_show(rd, seed)
    cfg = rd.read_config()
    results = summarize_run(rd.root)
    notes: list[str] = []
    epochs = [r for r in rd.read_metrics() if r.get("kind") == "epoch" and isinstance(r.get("generation"), int)]
    dataset = _load_dataset(cfg, notes)
    gens = rd.finished_generations(seed)
    loaded = [own_labels(rd, seed, g) for g in gens]
    indices, classes = loaded[0][0], loaded[0][2]
    if any(not np.array_equal(ix, indices) for ix, _, _, _ in loaded):
        raise RunDirError(f"the refined labels of seed {seed} in {run_dir} cover different images in different "
                          "generations; delete the later generations' directories to retrain them")
    label_sets = [p.astype(np.float64) for _, p, _, _ in loaded]
    given, clean = split_labels(rd.read_split(seed), indices)
    if given is None:  # a split.npz of an older version: the given labels come from the dataset itself
        if dataset is None:
            raise RunDirError(f"{rd.seed_dir(seed) / 'split.npz'} predates stored training labels and the dataset "
                              "cannot be loaded here to recover them; inspect the run where its dataset is")
        given = dataset.train.labels[torch.from_numpy(indices)].numpy().astype(np.int64)
    if not all(own for *_, own in loaded) and cfg.refinement.gt_weight:
        notes.append("This run's labels.npz files predate storing the refinery's own labels: they hold the labels "
                     "after the --gt-weight mix, so agreement with the given labels is inflated.")
    stats = generation_label_stats(given, label_sets, clean)
    for g, s in zip(gens, stats):
        s["generation"] = g
    step()
    k = len(classes)
    shown = sorted({gens[0], gens[-1]})
    rng = np.random.default_rng(seed)
    best = best_of([rd.read_summary(seed, g) for g in gens])["generation"]
    picks = pick_images(label_sets, given, images, rng, clean, judge=gens.index(best))
    groups = {name: [_card(int(p), indices, given, clean, label_sets, classes, dataset) for p in positions]
              for name, positions in picks.items()}
    step()
    crops = None
    if dataset is not None:
        pool = np.unique(np.concatenate([picks["disputed"], picks["changed"], picks["random"]]))[:CROP_CANDIDATES]
        sample = np.sort(rng.permutation(len(indices))[:CROP_SURVEY])
        survey = (indices[sample], given[sample], suggested_labels(given[sample], label_sets[0][sample]))
        crops = _crop_view(rd, cfg, seed, gens, dataset, (indices[pool], [classes[given[p]] for p in pool]), classes,
                           survey)
    step()
    issues = _issues_view(rd, seed, best, dataset, (indices, label_sets[gens.index(best)], given, clean), classes)
    step()
    return {
        "title": str(run_dir), "notes": notes, "results": results, "epochs": epochs, "seed": seed,
        "classes": classes, "label_stats": stats,
        "overlap": {g: _finite_or_none(class_overlap(label_sets[gens.index(g)], given, k)) for g in shown},
        "confusion": {gens[-1]: confusion(given, suggested_labels(given, label_sets[-1]), k).tolist()},
        "groups": groups, "crops": crops,
        "issues": issues,
        "facts": _facts(rd, results, seed, len(given), dataset), "config": results["config"],
        "timing": _timing(rd, results, epochs),
    }


def _finite_or_none(m: np.ndarray) -> list:
    """A matrix as nested lists, NaN (a class with no images) as None, so the JSON stays standard."""
    return [[None if not np.isfinite(x) else float(x) for x in row] for row in m]


def _without_images(view: dict) -> dict:
    def strip(items):
        return [{k: v for k, v in it.items() if k != "image"} for it in items]

    out = {k: v for k, v in view.items() if k not in ("groups", "crops", "epochs")}
    out["groups"] = {name: strip(items) for name, items in view["groups"].items()}
    if view["crops"]:
        out["crops"] = {**view["crops"], **{key: strip(view["crops"][key]) for key in ("items", "others")
                                             if key in view["crops"]}}
    return out


def _csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _stats_csv(views: list[dict]) -> str:
    keys = ["mean_entropy", "agreement", "changed", "disputed", "flipped", "corrected", "harmed",
            "detection_precision", "detection_recall", "detection_f1"]
    rows = [[v["title"], v["seed"], s["generation"]] + ["" if s.get(k) is None else f"{s[k]:.6f}" for k in keys]
            for v in views for s in v["label_stats"]]
    return _csv(["run_dir", "seed", "generation"] + keys, rows)


def _images_csv(views: list[dict]) -> str:
    rows = []
    for v in views:
        gens = [s["generation"] for s in v["label_stats"]]
        for group, items in v["groups"].items():
            for it in items:
                for g, top3 in zip(gens, it["top3"]):
                    rows.append([v["title"], v["seed"], group, it["index"], it.get("source", ""), it["given"],
                                 it.get("clean") or "", g]
                                + [x for name, p in top3 for x in (name, f"{p:.4f}")])
    header = ["run_dir", "seed", "group", "index", "source", "given_label", "clean_label", "generation",
              "top1", "p_top1", "top2", "p_top2", "top3", "p_top3"]
    return _csv(header, rows)


def _issues_view(rd: RunDir, seed: int, best: int, dataset, own: tuple, classes: list[str]) -> dict:
    """The rows of ``refinery label-issues`` for generation ``best`` (validation images too where the data
    loads); ``own`` is ``(indices, refined labels, given, clean)`` of the training images, used alone for a split
    of an older version (its given labels recovered from the dataset)."""
    if "train_labels" in rd.read_split(seed):
        indices, probs, given, clean, splits, _ = checked_images(rd, seed, best, dataset)
    else:
        indices, probs, given, clean = own
        splits = np.array(["train"] * len(indices))
    columns = issue_columns(splits, None if dataset is None else dataset.train.sources, indices)
    rows = issue_rows(probs, given, indices, classes, clean, limit=ISSUE_ROWS, columns=columns)
    disputed = int((given_label_scores(given, probs)[1] < 0).sum())
    return {"generation": best, "disputed": disputed, "total": len(given), "rows": rows}


def inspect_runs(run_dirs: list[Path], out: Path | None = None, images: int = 8,
                 seed: int | None = None) -> tuple[Path, float]:
    """Write the report of ``run_dirs`` (see the module docstring).

    Args:
        out: the page's path (``.html``); default ``RUN_DIR/report.html`` for one run, ``report.html`` in the
            working directory for several.
        images: images per group in the grids (>= 1).
        seed: the seed whose chain the label sections show.

    Returns:
        ``(path of the page, seconds taken)``.

    Raises:
        ConfigError: ``images`` < 1, an ``out`` that is not an ``.html`` path or lies in a seed directory.
        RunDirError: a directory that is not a run or has no finished generation, or a damaged file.
    """
    start = time.perf_counter()
    if images < 1:
        raise ConfigError(f"--images {images} must be at least 1 (images per group in the grids)")
    run_dirs = [Path(d) for d in run_dirs]
    for d in run_dirs:
        if not d.exists():
            raise RunDirError(f"{d} does not exist; give a directory `refinery run` made")
        if not RunDir(d).is_run():
            raise RunDirError(f"{d} is not a run directory (no config.yaml); give a directory `refinery run` made")
    twice = sorted({str(d) for d in run_dirs if sum(x.resolve() == d.resolve() for x in run_dirs) > 1})
    if twice:
        raise ConfigError(f"{', '.join(twice)} given more than once; give each run directory once")
    if out is None:
        out = RunDir(run_dirs[0]).report_path if len(run_dirs) == 1 else Path("report.html")
    out = Path(out)
    for d in run_dirs:
        RunDir(d).check_output_path(out, ".html", beside="report.json and report_*.csv go beside it")
    views = []
    with tqdm(total=STEPS_PER_RUN * len(run_dirs) + 1, desc="inspect", unit="step", leave=False,
              disable=not interactive()) as bar:
        for d in run_dirs:
            views.append(inspect_run(d, images, seed, lambda: bar.update(1)))
        markdown = format_table([v["results"] for v in views])
        page = render(views, markdown)
        bar.update(1)
    data = {"results_markdown": markdown, "runs": [_without_images(v) for v in views]}
    write_report_files(out, page, json.dumps(data, indent=1, default=float) + "\n", _stats_csv(views),
                       _images_csv(views))  # the page last: it appears only with its data files beside it
    return out, time.perf_counter() - start
