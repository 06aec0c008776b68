"""Results tables: rows R1..Rn, columns per run (dataset x augment ...), cells mean +- std test top-1 (%).

The standard deviation is the sample standard deviation over seeds (ddof = 1); with one seed only the mean is
shown. A generation that collapsed in any seed (validation accuracy near chance, or more than 10 points below the
previous generation's) is marked with ``!`` and listed under the table.

Besides R1..Rn the table has the ensembles of generations (``ensemble.json``), the controls and the **best
generation by validation**: per seed, the generation with the highest validation top-1 (the earliest on a tie),
reported on test, so a chain can be judged by what a user who selects on validation would get. Gains over R1 are
paired per seed (the mean and std of each seed's difference). A second table describes the refined labels each
generation made: the share of training images whose refined argmax disputes the given label and, with
``--label-noise``, the shares of flipped labels corrected and clean labels harmed and the F1 of "disputed" as a
detector of flipped labels (see :func:`labelrefinery.noise.label_statistics`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import RESUMABLE_CHANGES, leaf_names, looks_for_wrong_labels
from .noisewords import estimate_lines, evidence_lines
from ..rundir import RunDir


def summarize_run(run_dir: Path) -> dict:
    """Collect every finished generation (and control) of a run directory.

    Returns:
        ``{"run_dir", "config" (flat, by field name), "per_seed": {seed: [summary per generation]},
        "generations": [{"generation", "test_top1_mean", "test_top1_std", "val_top1_mean", "n_seeds",
        "collapsed_seeds", "gain_over_r1", "label_quality", and for R1 "symmetric_noise_estimate" and
        "classwise_noise_rate" when its summaries hold them}], "best_by_validation": {...},
        "ensemble": [...], "controls": {name: {...}}, "external_refinery": None or {"per_seed",
        "test_top1_mean", "test_top1_std"}}`` (the ``--refinery-checkpoint`` model's own top-1); gains are ``{"mean", "std", "n_seeds"}`` in points.

    Raises:
        RunDirError: ``run_dir`` is not a run directory, or its configuration cannot be read.
    """
    rd = RunDir(run_dir)
    cfg = rd.read_config().flat()
    per_seed: dict[str, list[dict]] = {}
    for seed in rd.seeds():
        gens = [rd.read_summary(seed, g) for g in rd.finished_generations(seed)]
        if gens:
            per_seed[str(seed)] = gens
    n_gen = max((len(v) for v in per_seed.values()), default=0)
    ensembles = rd.read_ensembles()
    for e in ensembles:
        e["gain_over_r1"] = _paired_gain(per_seed, lambda gens, e=e: e["per_seed"].get(str(gens[0]["seed"])))
    classes = (rd.read_run_info().get("dataset") or {}).get("classes") if any(
        g.get("noise_evidence", {}).get("largest") for gens in per_seed.values() for g in gens[:1]) else None
    return {"run_dir": str(run_dir), "config": cfg, "per_seed": per_seed, "classes": classes,
            "generations": [_generation_row(per_seed, g) for g in range(1, n_gen + 1)],
            "best_by_validation": _best_row(per_seed), "ensemble": ensembles,
            "controls": _control_rows(rd, per_seed), "external_refinery": _external_row(rd, per_seed)}


def _generation_row(per_seed: dict[str, list[dict]], g: int) -> dict:
    """Generation ``g`` over the seeds that finished it: mean ± std top-1, gain over R1, label quality."""
    rows = [v[g - 1] for v in per_seed.values() if len(v) >= g]
    test = np.array([r["test_top1"] for r in rows])
    return {
        "generation": g,
        "test_top1_mean": float(test.mean()),
        "test_top1_std": float(test.std(ddof=1)) if len(test) > 1 else None,
        "val_top1_mean": float(np.mean([r["val_top1"] for r in rows])),
        "n_seeds": len(rows),
        "collapsed_seeds": [r["seed"] for r in rows if r.get("collapsed")],
        "gain_over_r1": _paired_gain(per_seed, lambda gens: gens[g - 1]["test_top1"] if len(gens) >= g else None),
        "label_quality": _mean_quality([r.get("label_quality") or {} for r in rows]),
        **_mean_of(rows, "symmetric_noise_estimate"),
        **_mean_of([{"classwise_noise_rate": (r.get("classwise_noise_estimate") or {}).get("rate")} for r in rows],
                   "classwise_noise_rate"),
        **_mean_of([{"classwise_noise_concentration": (r.get("classwise_noise_estimate") or {}).get("concentration")}
                    for r in rows], "classwise_noise_concentration"),
        **_mean_of(rows, "calibration_temperature"),
        "classwise_noise_capped": all((r.get("classwise_noise_estimate") or {}).get("capped") for r in rows),
        **_evidence(rows),
        **_correction(rows),
    }


def _correction(rows: list[dict]) -> dict:
    """The verified-label correction its labels had (mean over seeds of the out-of-fold top-1 before and after)."""
    found = [r["verified_correction"] for r in rows if r.get("verified_correction")]
    if not found:
        return {}
    return {"verified_correction": {"before": float(np.mean([c["verified_top1_before"] for c in found])),
                                    "after": float(np.mean([c["verified_top1_after"] for c in found]))}}


def _evidence(rows: list[dict]) -> dict:
    """R1's ``noise_evidence`` over the seeds (:func:`labelrefinery.generation.noise_evidence`): its source, the
    mean share and interval, the mean agreement with the training labels and with held-out ones (top-1, %)."""
    found = [r for r in rows if r.get("noise_evidence")]
    if not found:
        return {}
    e = [r["noise_evidence"] for r in found]
    return {"noise_evidence": {
        "source": e[0]["source"], "images": e[0]["images"], **{k: float(np.mean([x[k] for x in e]))
                                                               for k in ("rate", "low", "high")},
        "largest": e[0].get("largest"), "train_agreement": float(np.mean([r["refined_label_agreement"] for r in found])),
        "val_top1": float(np.mean([r["val_top1"] for r in found]))}}


def _best_row(per_seed: dict[str, list[dict]]) -> dict:
    """Each seed's generation with the highest validation top-1, scored on test."""
    best = {seed: best_of(gens) for seed, gens in per_seed.items()}
    best_test = np.array([b["test_top1"] for b in best.values()])
    return {
        "per_seed": {seed: {"generation": b["generation"], "val_top1": b["val_top1"], "test_top1": b["test_top1"]}
                     for seed, b in best.items()},
        "test_top1_mean": float(best_test.mean()) if len(best_test) else None,
        "test_top1_std": float(best_test.std(ddof=1)) if len(best_test) > 1 else None,
        "gain_over_r1": _paired_gain(per_seed, lambda gens: best_of(gens)["test_top1"]),
    }


def _control_rows(rd: RunDir, per_seed: dict[str, list[dict]]) -> dict:
    """The finished controls (``--controls``) by name, with their gain over R1 paired per seed."""
    controls: dict[str, dict] = {}
    for seed in per_seed:
        for name in rd.finished_controls(int(seed)):
            controls.setdefault(name, {})[seed] = rd.read_summary(int(seed), name)
    rows = {}
    for name, by_seed in sorted(controls.items()):
        test = np.array([c["test_top1"] for c in by_seed.values()])
        rows[name] = {
            "per_seed": {seed: {"test_top1": c["test_top1"], "val_top1": c["val_top1"],
                                "epochs_run": c["epochs_run"]} for seed, c in by_seed.items()},
            "test_top1_mean": float(test.mean()), "test_top1_std": float(test.std(ddof=1)) if len(test) > 1 else None,
            "gain_over_r1": _paired_gain(per_seed, lambda gens, b=by_seed: b[str(gens[0]["seed"])]["test_top1"]
                                         if str(gens[0]["seed"]) in b else None),
        }
    return rows


def _external_row(rd: RunDir, per_seed: dict[str, list[dict]]) -> dict | None:
    """The ``--refinery-checkpoint`` model's own top-1 per seed, or None without one."""
    teacher = {seed: t for seed in per_seed if (t := rd.read_external_refinery(int(seed))) is not None}
    if not teacher:
        return None
    teacher_test = np.array([t["test_top1"] for t in teacher.values()])
    return {"per_seed": {seed: {"val_top1": t["val_top1"], "test_top1": t["test_top1"]} for seed, t in teacher.items()},
            "test_top1_mean": float(teacher_test.mean()),
            "test_top1_std": float(teacher_test.std(ddof=1)) if len(teacher_test) > 1 else None}


def best_of(gens: list[dict]) -> dict:
    """The summary with the highest validation top-1 among one seed's generations (the earliest on a tie)."""
    return max(gens, key=lambda r: (r["val_top1"], -r["generation"]))


def _paired_gain(per_seed: dict[str, list[dict]], value) -> dict | None:
    """Mean and sample std over seeds of ``value(generations of a seed) - that seed's R1 test top-1`` (points)."""
    diffs = []
    for gens in per_seed.values():
        v = value(gens) if gens and gens[0]["generation"] == 1 else None
        if v is not None:
            diffs.append(v - gens[0]["test_top1"])
    if not diffs:
        return None
    d = np.array(diffs)
    return {"mean": float(d.mean()), "std": float(d.std(ddof=1)) if len(d) > 1 else None, "n_seeds": len(d)}


def _mean_quality(rows: list[dict]) -> dict[str, float]:
    """Per key, the mean over seeds of the label-quality shares that are defined."""
    keys = {k for r in rows for k in r}
    out = {}
    for k in sorted(keys):
        values = [r[k] for r in rows if r.get(k) is not None]
        if values:
            out[k] = float(np.mean(values))
    return out


def _fmt(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


QUALITY_COLUMNS = (("disputed", "disputed"), ("corrected", "flipped corrected"), ("harmed", "clean harmed"),
                   ("detection_precision", "detection precision"), ("detection_recall", "detection recall"),
                   ("detection_f1", "detection F1"))


def _mean_of(rows: list[dict], key: str) -> dict:
    """``{key: mean over the rows that hold it}``, or ``{}`` when none does."""
    values = [r[key] for r in rows if r.get(key) is not None]
    return {key: float(np.mean(values))} if values else {}


def _label_table(r: dict, name: str) -> list[str]:
    """The refined-label table of one run: per generation, mean over seeds of each label-quality share (%)."""
    gens = [g for g in r["generations"] if g.get("label_quality")]
    if not gens:
        return []
    cols = [(k, title) for k, title in QUALITY_COLUMNS if any(k in g["label_quality"] for g in gens)]
    scored = r.get("per_seed") and next(iter(r["per_seed"].values()))[0].get("true_labels_scored")
    lines = [f"Refined labels made by each generation, {name} (% of training images, mean over seeds; disputed: "
             "refined argmax differs from the given label" + (
                 f"; flipped, corrected, harmed and detection on the {scored} training images with --true-labels"
                 if scored else "") + "):", "",
             "| generation | " + " | ".join(t for _, t in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for g in gens:
        q = g["label_quality"]
        lines.append(f"| R{g['generation']} | " + " | ".join(
            "" if q.get(k) is None else f"{100 * q[k]:.1f}" for k, _ in cols) + " |")
    if not looks_for_wrong_labels(r["config"]):  # a plain run: no words on noise it did not ask about
        return [*lines, ""]
    lines += evidence_lines(r) + estimate_lines(r)
    return [*lines, ""]


def next_label_file(dataset: str) -> str:
    """The label file name to suggest for ``--write-labels`` on a run of ``dataset``: ``fixed.csv``, or for a run
    already trained on ``csv:...fixed.csv`` (or ``fixed-N.csv``), ``fixed-<N+1>.csv``."""
    name = Path(dataset[4:]).name if dataset.startswith("csv:") else ""
    if name == "fixed.csv":
        return "fixed-2.csv"
    if name.startswith("fixed-") and name[6:-4].isdigit() and name.endswith(".csv"):
        return f"fixed-{int(name[6:-4]) + 1}.csv"
    return "fixed.csv"


def _control_beats(r: dict) -> str:
    """A sentence when a control (``--controls``) scored higher on test than the best generation by validation
    (means over the seeds both finished), else ``""``: refinement did not pay there, and the reader should know."""
    best = (r.get("best_by_validation") or {}).get("test_top1_mean")
    beats = [(name, c["test_top1_mean"]) for name, c in (r.get("controls") or {}).items()
             if best is not None and c["test_top1_mean"] > best + 0.1]
    if not beats:
        return ""
    name, score = max(beats, key=lambda b: b[1])
    what = {"label-smoothing": "R1's recipe with label smoothing",
            "equal-compute": "one model trained as long as the whole chain",
            "no-mixup": "R1's recipe without mixup"}.get(name, f"the {name} control")
    return (f" But {what} scored higher on test ({score:.2f}% against {best:.2f}%, mean over seeds): on this data "
            f"that simpler model is the better choice (`{r['run_dir']}/seed-0/control-{name}/model.safetensors`).")


def _next_lines(r: dict) -> list[str]:
    """For a run that looks for wrong labels (``--label-issues``, ``--preset noisy``): which model to use, in
    words, and the next commands."""
    best = (r.get("best_by_validation") or {}).get("per_seed", {}).get("0")
    if best is None:
        return []
    run, g = r["run_dir"], best["generation"]
    fixed = next_label_file(str(r["config"].get("dataset", "")))
    r1 = r["per_seed"]["0"][0]["test_top1"]
    plain = ((r.get("controls") or {}).get("no-mixup") or {}).get("per_seed", {}).get("0")  # R1 used mixup
    over = f"{best['test_top1'] - r1:+.2f} points over " + ("plain training, R1" if plain is None else f"R1, "
            f"{best['test_top1'] - plain['test_top1']:+.2f} over plain training (R1's recipe without mixup)")
    out = [f"**Which model to use:** seed 0's R{g}, its best generation by validation (validation "
           f"{best['val_top1']:.2f}%, test {best['test_top1']:.2f}%, {over}): "
           f"`{run}/seed-0/gen-{g}/model.safetensors`, the one `refinery predict {run}` and "
           f"`load_classifier(\"{run}\")` load." + _control_beats(r), "",
           "**Next:** `label_issues.csv` lists the disputed labels, most disputed first. Review them" + (
               f", then `refinery label-issues {run}{' --all-seeds' if len(r['per_seed']) > 1 else ''} "
               f"--write-labels {fixed}` writes the label file with the "
               f"suggested labels applied and `refinery run --dataset csv:{fixed} --preset noisy` retrains on it."
               if str(r["config"].get("dataset", "")).startswith(("folder:", "csv:")) else
               " and fix them where the data lives (this dataset has no files to write a label file for).")]
    e = r["generations"][0].get("noise_evidence") or {}
    if e.get("source") == "held-out":
        out[-1] += (" Without verified labels the refinery cannot see wrong labels that follow what the images look "
                    "like (an annotator's confusions): check a few hundred labels by hand, write them as a CSV of "
                    "`image,label`, and rerun with `--trusted verified.csv`.")
    return out


def column_names(results: list[dict]) -> list[str]:
    """A header per run: for one run, its dataset and augmentation; for several, each run directory's name
    (with its parent's where two names are alike), the settings that tell them apart listed by
    :func:`differing_settings` under the table."""
    if len(results) == 1:
        c = results[0]["config"]
        return [f"{c['dataset']} aug={c['augment']}"]
    names = [Path(r["run_dir"]).name for r in results]
    if len(set(names)) < len(names):
        names = [f"{Path(r['run_dir']).parent.name}/{Path(r['run_dir']).name}" for r in results]
    if len(set(names)) < len(names):
        names = [str(r["run_dir"]) for r in results]
    return names


def differing_settings(results: list[dict]) -> list[str]:
    """Per run, ``name=value`` of every setting (dataset and augment always) whose value differs between the
    runs, other than those a run may extend (seeds, generations, execution)."""
    keys = ["dataset", "augment"] + [k for k in leaf_names() if k not in ("dataset", "augment")
                                     and k not in RESUMABLE_CHANGES
                                     and len({str(r["config"].get(k)) for r in results}) > 1]
    return [" ".join(f"{k}={r['config'].get(k)}" for k in keys) for r in results]


def _gain(g: dict | None) -> str:
    if not g:
        return ""
    sd = "" if g.get("std") is None else f" ± {g['std']:.2f}"
    return f" ({g['mean']:+.2f}{sd})"


def format_table(results: list[dict]) -> str:
    """Markdown: the mean ± std table (with paired gains over R1), per-seed tables, refined-label tables,
    then collapse warnings."""
    names = column_names(results)
    seeds_text = ", ".join(f"{len(r['per_seed'])} seed(s)" for r in results)
    out = ["Test top-1 accuracy (%), mean ± sample std over seeds (" + seeds_text + "); in brackets the gain over "
           "R1 in points, paired per seed. Best by validation: each seed's generation with the highest validation "
           "top-1, scored on test.", "", *_summary_lines(results, names), ""]
    for r, name in zip(results, names):
        out += _below_r1_lines(r, name if len(results) > 1 else "")
    if len(results) > 1:
        out += ["Runs: " + "; ".join(f"{n}: {d}" for n, d in zip(names, differing_settings(results))), ""]
    for r, name in zip(results, names):
        out += _per_seed_lines(r, name)
    for r, name in zip(results, names):
        out += _label_table(r, name)
    if len(results) == 1 and results[0]["config"].get("label_issues"):
        out += _next_lines(results[0])
    collapsed = [(name, s["generation"], s["collapsed_seeds"]) for r, name in zip(results, names)
                 for s in r["generations"] if s["collapsed_seeds"]]
    if collapsed:
        out.append("! collapsed (validation near chance or > 10 points below the previous generation): "
                   + "; ".join(f"{n} R{g} seeds {c}" for n, g, c in collapsed))
        out.append("")
    return "\n".join(out)


def _below_r1_lines(r: dict, name: str) -> list[str]:
    """Why later generations end below R1, where they do on labels the run does not treat as noisy, and the
    commands of the recipes where refinement paid (docs/results.md): no table shows an unexplained loss."""
    if looks_for_wrong_labels(r["config"]):
        return []
    below = [(g["generation"], g["gain_over_r1"]["mean"]) for g in r["generations"][1:]
             if (g.get("gain_over_r1") or {}).get("mean") is not None and g["gain_over_r1"]["mean"] < -0.1]
    if not below:
        return []
    ens = [e for e in r.get("ensemble", []) if (e.get("gain_over_r1") or {}).get("mean") is not None]
    best = max(ens, key=lambda e: e["gain_over_r1"]["mean"], default=None)
    use = (f"the ensemble of {'+'.join(f'R{g}' for g in best['generations'])} "
           f"({best['gain_over_r1']['mean']:+.2f})" if best and best["gain_over_r1"]["mean"] > 0 else "R1")
    return [f"{name + ': ' if name else ''}" + ", ".join(f"R{g} ({d:+.2f})" for g, d in below) + " end below R1. "
            f"That is what short generations on labels that are mostly right do: each student learns from a teacher "
            f"no better than itself, in as few epochs (measured in docs/results.md); use {use}. Refinement paid "
            "where generations are patient (`refinery run --preset refine`: the ensemble of R1-R3 +0.80 over R1 on "
            "5 seeds) and where labels are wrong (`refinery run --preset noisy`).", ""]


def _summary_lines(results: list[dict], names: list[str]) -> list[str]:
    """The main table: R1..Rn, best by validation, the external refinery, the controls, the ensembles."""
    n_gen = max((len(r["generations"]) for r in results), default=0)
    lines = ["| generation | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for g in range(n_gen):
        cells = []
        for r in results:
            s = r["generations"][g] if g < len(r["generations"]) else None
            cells.append("" if s is None else _fmt(s["test_top1_mean"], s["test_top1_std"])
                         + (_gain(s.get("gain_over_r1")) if g else "") + (" !" if s["collapsed_seeds"] else ""))
        lines.append(f"| R{g + 1} | " + " | ".join(cells) + " |")
    if n_gen > 1:
        cells = []
        for r in results:
            b = r.get("best_by_validation") or {}
            cells.append("" if b.get("test_top1_mean") is None else
                         _fmt(b["test_top1_mean"], b["test_top1_std"]) + _gain(b.get("gain_over_r1")))
        lines.append("| best by validation | " + " | ".join(cells) + " |")
    if any(r.get("external_refinery") for r in results):
        cells = [_fmt(e["test_top1_mean"], e["test_top1_std"]) if (e := r.get("external_refinery")) else ""
                 for r in results]
        lines.insert(2, "| external refinery (--refinery-checkpoint) | " + " | ".join(cells) + " |")
    for control in sorted({c for r in results for c in r.get("controls", {})}):
        cells = []
        for r in results:
            c = r.get("controls", {}).get(control)
            n, total = (len(c["per_seed"]), len(r["per_seed"])) if c is not None else (0, 0)
            cells.append("" if c is None else _fmt(c["test_top1_mean"], c["test_top1_std"]) + _gain(c.get("gain_over_r1"))
                         + (f" [{n} of {total} seeds]" if n < total else ""))
        lines.append(f"| {control} control | " + " | ".join(cells) + " |")
    for r, name in zip(results, names):
        for e in r.get("ensemble", []):
            label = "+".join(f"R{g}" for g in e["generations"])
            lines.append(f"| ensemble {label} ({name}) | " + " | ".join(
                _fmt(e["test_top1_mean"], e.get("test_top1_std")) + _gain(e.get("gain_over_r1")) if rr is r else ""
                for rr in results) + " |")
    return lines


def _per_seed_lines(r: dict, name: str) -> list[str]:
    """One run's per-seed table: test top-1 with validation in brackets, ``!`` on a collapsed generation."""
    if not r["per_seed"]:
        return []
    seeds = list(r["per_seed"])
    out = [f"Per seed, {name} (test top-1 %, validation in brackets):", "",
           "| generation | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---" * (len(seeds) + 1) + "|"]
    for g in range(len(r["generations"])):
        row = []
        for s in seeds:
            gens = r["per_seed"][s]
            row.append(f"{gens[g]['test_top1']:.2f} ({gens[g]['val_top1']:.2f})" + (" !" if gens[g].get("collapsed") else "")
                       if g < len(gens) else "")
        out.append(f"| R{g + 1} | " + " | ".join(row) + " |")
    return out + [""]
