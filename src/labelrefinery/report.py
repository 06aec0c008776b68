"""Results tables: rows R1..Rn, columns per run (dataset x augment ...), cells mean +- std test top-1 (%).

The standard deviation is the sample standard deviation over seeds (ddof = 1);
with one seed only the mean is shown. A generation that collapsed in any seed
(validation accuracy near chance, or more than 10 points below the previous
generation's) is marked with ``!`` and listed under the table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import RESUMABLE_CHANGES, leaf_names
from .rundir import RunDir


def summarize_run(run_dir: Path) -> dict:
    """Collect every finished generation of a run directory.

    Returns:
        ``{"run_dir", "config" (flat, by field name), "per_seed": {seed: [summary per generation]},
        "generations": [{"generation", "test_top1_mean", "test_top1_std", "val_top1_mean", "n_seeds",
        "collapsed_seeds"}], "ensemble": [...]}``.

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
    generations = []
    for g in range(1, n_gen + 1):
        rows = [v[g - 1] for v in per_seed.values() if len(v) >= g]
        test = np.array([r["test_top1"] for r in rows])
        generations.append({
            "generation": g,
            "test_top1_mean": float(test.mean()),
            "test_top1_std": float(test.std(ddof=1)) if len(test) > 1 else None,
            "val_top1_mean": float(np.mean([r["val_top1"] for r in rows])),
            "n_seeds": len(rows),
            "collapsed_seeds": [r["seed"] for r in rows if r.get("collapsed")],
        })
    return {"run_dir": str(run_dir), "config": cfg, "per_seed": per_seed, "generations": generations,
            "ensemble": rd.read_ensembles()}


def _fmt(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def column_names(results: list[dict]) -> list[str]:
    """A header per run: dataset and augment always, plus every other setting that differs between the runs."""
    keys = ["dataset", "augment"]
    for key in leaf_names():
        if key in keys or key in RESUMABLE_CHANGES:
            continue
        values = {str(r["config"].get(key)) for r in results}
        if len(values) > 1:
            keys.append(key)
    names = []
    for r in results:
        parts = [f"{r['config']['dataset']}", f"aug={r['config']['augment']}"]
        parts += [f"{k}={r['config'].get(k)}" for k in keys[2:]]
        names.append(" ".join(parts))
    # Runs that differ only in what a column does not show (seeds, generations) get their directory's name.
    if len(set(names)) < len(names):
        names = [f"{n} ({Path(r['run_dir']).name})" for n, r in zip(names, results)]
    return names


def format_table(results: list[dict]) -> str:
    """Markdown: the mean ± std table, then per-seed tables, then collapse warnings."""
    names = column_names(results)
    n_gen = max((len(r["generations"]) for r in results), default=0)
    lines = ["| generation | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for g in range(n_gen):
        cells = []
        for r in results:
            if g < len(r["generations"]):
                s = r["generations"][g]
                cells.append(_fmt(s["test_top1_mean"], s["test_top1_std"]) + (" !" if s["collapsed_seeds"] else ""))
            else:
                cells.append("")
        lines.append(f"| R{g + 1} | " + " | ".join(cells) + " |")
    for r, name in zip(results, names):
        for e in r.get("ensemble", []):
            lines.append(f"| ensemble {e['generations']} ({name}) | " + " | ".join(
                _fmt(e["test_top1_mean"], e.get("test_top1_std")) if rr is r else "" for rr in results) + " |")
    seeds_text = ", ".join(f"{len(r['per_seed'])} seed(s)" for r in results)
    out = ["Test top-1 accuracy (%), mean ± sample std over seeds (" + seeds_text + ").", "", *lines, ""]
    for r, name in zip(results, names):
        if not r["per_seed"]:
            continue
        seeds = list(r["per_seed"])
        out += [f"Per seed, {name} (test top-1 %, validation in brackets):", "",
                "| generation | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                "|---" * (len(seeds) + 1) + "|"]
        for g in range(len(r["generations"])):
            row = []
            for s in seeds:
                gens = r["per_seed"][s]
                row.append(f"{gens[g]['test_top1']:.2f} ({gens[g]['val_top1']:.2f})" + (" !" if gens[g].get("collapsed") else "")
                           if g < len(gens) else "")
            out.append(f"| R{g + 1} | " + " | ".join(row) + " |")
        out.append("")
    collapsed = [(name, s["generation"], s["collapsed_seeds"]) for r, name in zip(results, names)
                 for s in r["generations"] if s["collapsed_seeds"]]
    if collapsed:
        out.append("! collapsed (validation near chance or > 10 points below the previous generation): "
                   + "; ".join(f"{n} R{g} seeds {c}" for n, g, c in collapsed))
        out.append("")
    return "\n".join(out)
