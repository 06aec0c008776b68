"""Does refinement pay off? The refinery against plain training, label smoothing and cleanlab, side by side.

Every method trains the same model with the same recipe (preset quick's optimiser, ``--epochs`` per
model) on the same training images (a stratified ``--train-size`` subset of Fashion-MNIST, 15% of it held
out for validation) for the same seeds; all figures are clean-test top-1 (%), mean ± sample std over seeds.

Noisy part, per ``--noise`` setting (injected into training and validation labels, test labels clean):

- plain cross-entropy R1: its best-validation epoch (the default) and its last epoch;
- label smoothing 0.1 (R1's recipe with ``--label-smoothing 0.1``);
- published noise-robust training (``--peers gce,sce,mixup,elr,coteaching,plc``; ``benchmarks/noise_peers.py``
  says what each is, with its source): robust losses GCE and SCE, mixup, ELR, co-teaching, PLC, each with the
  same model, recipe and split as plain R1;
- cleanlab: ``cleanlab.filter.find_label_issues`` on out-of-sample ``pred_probs`` from ``--folds``-fold
  cross-validation with the same model and epochs, then the model retrained on the images it keeps;
- the refinery (``refinery run``, ``--generations`` generations), per label variant (``--variants``):
  every generation, the best generation by validation, the ensemble of all generations;
- detection precision / recall / F1 against the known flips: cleanlab's issues and each refinery
  generation's "refined argmax differs from the given label"; corrected / harmed shares of the refinery.

Clean part (``--clean-seeds`` seeds, no noise): R1, label smoothing, an equal-compute R1 (one model
trained for the chain's total epochs), every generation, best by validation, the ensemble.

    .venv/bin/pip install cleanlab   # or: pip install 'labelrefinery[bench]'
    .venv/bin/python benchmarks/refinery_gain.py --out benchmarks/results/refinery-gain.json
    # --preset refine's recipe on clean labels, 5 seeds, against its controls:
    .venv/bin/python benchmarks/refinery_gain.py --preset refine --noise "" --clean-seeds 5 --epochs 16 \
        --clean-variants preset --out benchmarks/results/refinery-gain-refine-clean.json

``--preset`` sets the recipe every method shares (all runs here train without ``--controls``: this script
trains the label-smoothing and equal-compute models itself).

Wall time of each method is reported; run nothing else on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmeta import run_metadata
from noise_peers import PEERS, ROW_NAMES, fit_model, peer_method
from labelrefinery.batch import Pipeline
from labelrefinery.chain import run as run_chain
from labelrefinery.config import resolve_config
from labelrefinery.console import log
from labelrefinery.data import load_dataset, stratified_folds
from labelrefinery.device import cpu_features, resolve_precision, set_threads
from labelrefinery.inference import predict, top1_accuracy
from labelrefinery.protocol import load_run_dataset, seed_split, with_label_noise
from labelrefinery.noise.quality import suggested_labels, suggestion_precision
from labelrefinery.report.labelissues import own_labels, seeds_opinion, split_labels
from labelrefinery.report.tables import summarize_run
from labelrefinery.rundir import RunDir
from labelrefinery.seeding import derive_seed

VARIANTS = {  # name: extra run settings of the refinery's label variant, on top of --preset
    "preset": {},  # the preset's own label recipe (e.g. --preset refine's)
    "soft": {"label_form": "soft", "gt_weight": 0.0},
    "hard": {"label_form": "hard"},
    "soft-gt0.3": {"gt_weight": 0.3},
    "soft-cf4": {"cross_fit": 4},  # out-of-sample labels, 4 folds
    "soft-cf4-np0": {"cross_fit": 4, "noise_prior": "0"},  # ... as they are (for --preset noisy, whose prior needs R1)
    "hard-cf4": {"cross_fit": 4, "label_form": "hard"},
    "soft-npauto": {"noise_prior": "auto"},  # posterior with the given label, noise rate estimated from R1
    "soft-np0.4": {"noise_prior": "0.4"},  # ... with the rate given
    "soft-npclass": {"noise_prior": "classwise"},  # ... under a K x K noise matrix estimated from R1
    "soft-npevidence": {"noise_prior": "evidence"},  # ... auto or classwise, as R1's estimates favour
    "mixup": {"mixup": 1.0},  # every generation trained with mixup, alpha 1 (Zhang et al. 2018)
    "nomixup": {"mixup": 0.0},  # ... without (for a preset that sets it)
    "mixup-np0": {"mixup": 1.0, "noise_prior": "0"},  # ... with mixup, the refined labels as they are
    "mixup-np0-t0.65": {"mixup": 1.0, "noise_prior": "0", "temperature": 0.65},  # ... sharpened to about the
    # temperature that calibrates a mixup R1 on validation (0.65 on the 12,000-image subset)
    # 240 verified labels (2% of the default 12,000) as the validation split, the same 10,200 training images
    # (given labels) as the others: --preset noisy with --trusted 240
    "trusted-240": {"trusted": "240", "train_size": 10200},  # --preset noisy: --noise-prior evidence -> verified
    "trusted-240-classwise": {"trusted": "240", "train_size": 10200, "noise_prior": "classwise"},  # counted T
    "trusted-240-np0": {"trusted": "240", "train_size": 10200, "noise_prior": "0"},  # soft labels as they are
    "trusted-240-mixup": {"trusted": "240", "train_size": 10200, "mixup": 1.0},
    "trusted-240-nomixup": {"trusted": "240", "train_size": 10200, "mixup": 0.0},  # --preset noisy before mixup
    # per-crop refined labels (the paper's online labels) and adversarial jittering: for --augment crop or online
    "online": {"labels": "online"},
    "online-jitter": {"labels": "online", "adversarial_jitter": 0.5},
}


PLAIN = {"mixup": 0.0}  # the baselines (last epoch, label smoothing, peers, cleanlab, controls) train without mixup


def mean_std(values) -> dict:
    a = np.array([v for v in values if v is not None], dtype=float)
    return {"mean": float(a.mean()) if len(a) else None, "std": float(a.std(ddof=1)) if len(a) > 1 else None,
            "n": int(len(a)), "values": a.tolist()}


def detection(flagged: np.ndarray, flipped: np.ndarray) -> dict:
    tp = int((flagged & flipped).sum())
    p = tp / flagged.sum() if flagged.sum() else float("nan")
    r = tp / flipped.sum() if flipped.sum() else float("nan")
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r > 0 else float("nan")}


def _cell(v: dict | None, key: str = "") -> str:
    v = (v or {}).get(key) if key else v
    if not v or v.get("mean") is None:
        return ""
    scale = 100 if key else 1
    sd = "" if v.get("std") is None else f" ± {scale * v['std']:.2f}"
    return f"{scale * v['mean']:.2f}{sd}"


def markdown(results: dict) -> str:
    """The benchmark's tables: clean-test top-1 per method, detection and label figures, wall time."""
    out = []
    for noise, row in (results.get("noisy") or {}).items():
        out += [f"Noisy labels ({noise}): clean-test top-1 %, mean ± std over seeds; detection of flipped labels "
                "and label figures in % (mean over seeds)", "",
                "| method | test top-1 | corrected | harmed | detection precision | recall | F1 | wall s |",
                "|---|---|---|---|---|---|---|---|"]
        for name, v in row.items():
            labels, det = v.get("labels") or {}, v.get("detection") or {}
            out.append(f"| {name} | {_cell(v)} | {_cell(labels, 'corrected')} | {_cell(labels, 'harmed')} | "
                       f"{_cell(det, 'precision') or _cell(labels, 'detection_precision')} | "
                       f"{_cell(det, 'recall') or _cell(labels, 'detection_recall')} | "
                       f"{_cell(det, 'f1') or _cell(labels, 'detection_f1')} | "
                       f"{'' if v.get('wall_s') is None else round(v['wall_s'])} |")
        out.append("")
    if results.get("clean"):
        out += ["Clean labels: test top-1 %, mean ± std over seeds (gain over R1 paired per seed)", "",
                "| method | test top-1 | gain over R1 | wall s |", "|---|---|---|---|"]
        for name, v in results["clean"].items():
            g = v.get("gain_over_r1") or {}
            gain = "" if g.get("mean") is None else f"{g['mean']:+.2f}" + (
                "" if g.get("std") is None else f" ± {g['std']:.2f}")
            out.append(f"| {name} | {_cell(v)} | {gain} | {'' if v.get('wall_s') is None else round(v['wall_s'])} |")
        out.append("")
    return "\n".join(out)


def save(path: Path | None, results: dict) -> None:
    """Write what is measured so far (after every part), so a late failure loses nothing."""
    if path is not None:
        path.write_text(json.dumps(results, indent=2, default=float) + "\n")


PRESET = "quick"  # the recipe every method shares (--preset)


def r1_estimates(res: dict) -> dict:
    """R1's noise figures over the seeds (rates in [0, 1]): the evidence ``results.md`` states (held-out
    disagreement, or the verified count with ``--trusted``) and the symmetric and class-wise estimates from its
    refined labels."""
    r1 = [gens[0] for gens in res["per_seed"].values()]
    return {"evidence": mean_std((g.get("noise_evidence") or {}).get("rate") for g in r1),
            "evidence_source": sorted({(g.get("noise_evidence") or {}).get("source", "") for g in r1}),
            "symmetric": mean_std(g.get("symmetric_noise_estimate") for g in r1),
            "classwise": mean_std((g.get("classwise_noise_estimate") or {}).get("rate") for g in r1),
            "concentration": mean_std((g.get("classwise_noise_estimate") or {}).get("concentration") for g in r1)}


def suggestions(run_dir: Path, res: dict, top: int = 12) -> list[dict]:
    """The relabellings each seed's best generation by validation suggests on its training images, pair by pair
    (:func:`~labelrefinery.noise.quality.suggestion_precision`), pooled over the seeds: the ``top`` most
    suggested (given, suggested) pairs with their images over all seeds, pooled precision and per-seed
    precisions (%)."""
    rd, pooled = RunDir(run_dir), {}
    for seed, best in res["best_by_validation"]["per_seed"].items():
        indices, probs, _, _ = own_labels(rd, int(seed), best["generation"])
        given, clean = split_labels(rd.read_split(int(seed)), indices)
        for r in suggestion_precision(given, probs, clean):
            p = pooled.setdefault((r["given"], r["suggested"]), {"count": 0, "right": 0.0, "per_seed": []})
            p["count"] += r["count"]
            p["right"] += r["precision"] * r["count"]
            p["per_seed"].append(round(100 * r["precision"], 1))
    rows = [{"given": y, "suggested": c, "count": p["count"], "precision": 100 * p["right"] / p["count"],
             "per_seed": p["per_seed"]} for (y, c), p in pooled.items()]
    return sorted(rows, key=lambda r: -r["count"])[:top]


def mean_opinion(run_dir: Path, seeds: list[str]) -> dict:
    """What ``refinery label-issues RUN --all-seeds`` suggests (each image's probabilities averaged over the seeds'
    best generations, training and validation images): precision and recall (%) of its suggestions as a detector
    of the flipped labels, and the ``top`` pairs as in :func:`suggestions` (precision %)."""
    rd = RunDir(run_dir)
    _, probs, given, clean, *_ = seeds_opinion(rd, {int(s): None for s in seeds}, load_run_dataset(rd.read_config()))
    disputed, flipped = suggested_labels(given, probs) != given, given != clean
    return {"images": int(len(given)), "suggested": int(disputed.sum()),
            "precision": 100 * float(flipped[disputed].mean()), "recall": 100 * float(disputed[flipped].mean()),
            "pairs": [{**r, "precision": 100 * r["precision"]} for r in suggestion_precision(given, probs, clean)[:12]]}


def refinery_runs(base: dict, runs_dir: Path, name: str) -> tuple[dict, float]:
    cfg = resolve_config(PRESET, base)
    start = time.perf_counter()
    run_chain(cfg, runs_dir / name)
    return summarize_run(runs_dir / name), time.perf_counter() - start


def cleanlab_method(ds, cfg, pipe, seed: int, folds: int) -> dict:
    """Out-of-sample pred_probs by K-fold cross-validation, cleanlab's issues, retrain on the kept images."""
    from cleanlab.filter import find_label_issues

    start = time.perf_counter()
    train_idx, val_idx = seed_split(ds, cfg, seed)
    given = ds.train.labels
    pred_probs = np.zeros((len(train_idx), ds.train.num_classes), dtype=np.float32)
    fold_of = stratified_folds(given[train_idx], folds, derive_seed(seed, 77))
    for f in range(folds):
        inside = (fold_of != f).nonzero().squeeze(1)
        out = (fold_of == f).nonzero().squeeze(1)
        model = fit_model(ds, (train_idx[inside], val_idx), given, cfg, pipe, (seed, 100 + f))
        pred_probs[out.numpy()] = predict(model, ds.train.images[train_idx[out]], pipe).softmax(1).numpy()
    issues = find_label_issues(given[train_idx].numpy(), pred_probs)
    keep = train_idx[torch.from_numpy(~issues)]
    model = fit_model(ds, (keep, val_idx), given, cfg, pipe, (seed, 200))
    test = top1_accuracy(predict(model, ds.test.images, pipe), ds.test.labels)
    return {"test_top1": test, "issues": issues, "train_idx": train_idx.numpy(), "wall_s": time.perf_counter() - start}


def peers_method(ds, cfg, pipe, seeds: int, name: str, noise) -> dict:
    """Peer ``name`` (:data:`noise_peers.PEERS`) for every seed: its row (test top-1 over seeds, wall time)."""
    rate = 0.0 if noise is None else float(noise.flipped.float().mean())
    found = [peer_method(ds, cfg, pipe, s, name, rate) for s in range(seeds)]
    extra = {"corrected_per_round": [f["corrected"] for f in found]} if name == "plc" else \
        {"labelled_per_division": [f["labelled"] for f in found]} if name == "dividemix" else {}
    return {**mean_std(f["test_top1"] for f in found), "wall_s": sum(f["wall_s"] for f in found), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick", help="the recipe every method shares (optimiser, augmentation, "
                        "and the label recipe of the 'preset' variant): quick or refine")
    parser.add_argument("--dataset", default="fashion-mnist", help="the dataset every method trains on (digits: "
                        "a seconds-long smoke run)")
    parser.add_argument("--train-size", type=int, default=12000, help="training images before validation split")
    parser.add_argument("--augment", default="none", help="the augmentation every method trains with (crop: "
                        "random resized crops, where per-crop labels, variants online and online-jitter, apply; the cleanlab and "
                        "robust-loss rows train without it)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of every model")
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of each noisy setting")
    parser.add_argument("--clean-seeds", type=int, default=5, help="seeds of the clean part (0: skip it)")
    parser.add_argument("--noise", default="symmetric:0.4", help="comma-separated --label-noise settings")
    parser.add_argument("--variants", default="soft,hard", help="refinery label variants of the noisy part: "
                        + ", ".join(VARIANTS))
    parser.add_argument("--clean-variants", default="soft,soft-gt0.3", help="refinery label variants of the clean part")
    parser.add_argument("--folds", type=int, default=4, help="cleanlab's cross-validation folds")
    parser.add_argument("--no-cleanlab", action="store_true")
    parser.add_argument("--no-last-epoch", action="store_true", help="skip plain R1 scored at its last epoch")
    parser.add_argument("--no-label-smoothing", action="store_true", help="skip the label-smoothing models")
    parser.add_argument("--no-equal-compute", action="store_true", help="skip the clean part's equal-compute model")
    parser.add_argument("--peers", default="", help="comma-separated published noise-robust methods to train "
                        "beside plain R1 (benchmarks/noise_peers.py): " + ", ".join(PEERS))
    parser.add_argument("--robust-losses", default="", help="the same as --peers (its older name)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    parser.add_argument("--keep-runs", type=Path, default=None, help="keep the run directories here (default: a "
                        "temporary directory, deleted at the end), e.g. for benchmarks/overlap_crops.py")
    parser.add_argument("--table", type=Path, default=None, help="print the Markdown tables of a saved JSON and exit")
    args = parser.parse_args()
    peers = [n for n in f"{args.peers},{args.robust_losses}".split(",") if n]
    if set(peers) - set(PEERS):
        parser.error(f"--peers {','.join(sorted(set(peers) - set(PEERS)))}: unknown; choose from {', '.join(PEERS)}")
    if args.table:
        print(markdown(json.loads(args.table.read_text())))
        return
    global PRESET
    PRESET = args.preset
    set_threads(0)
    cpu = torch.device("cpu")
    amp = resolve_precision("auto", cpu)
    facts = {"cpu_features": cpu_features(), "precision": str(amp), "torch": torch.__version__,
             "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""), "command": " ".join(sys.argv),
             "train_size": args.train_size, "epochs": args.epochs, "generations": args.generations,
             "augment": args.augment,
             "preset": args.preset}
    log(json.dumps(facts))
    common = {"dataset": args.dataset, "train_size": args.train_size, "epochs": args.epochs, "augment": args.augment,
              "generations": 1, "progress": False, "controls": False}  # this script trains the controls itself
    results: dict = {"meta": run_metadata(), "facts": facts, "noisy": {}, "clean": None}
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.keep_runs or Path(tmp)
        for noise in [n for n in args.noise.split(",") if n]:
            seeds = {**common, "seeds": args.seeds, "label_noise": noise}
            row: dict = results["noisy"].setdefault(noise, {})  # saved after every method: a crash loses one
            if not args.no_last_epoch:
                last, t = refinery_runs({**seeds, **PLAIN, "restore_best": False}, runs, f"last-{noise}")
                row["R1 (last epoch)"] = {**mean_std(g[0]["test_top1"] for g in last["per_seed"].values()),
                                          "wall_s": t}
            if not args.no_label_smoothing:
                ls, t = refinery_runs({**seeds, **PLAIN, "label_smoothing": 0.1, "noise_prior": "0"}, runs,
                                      f"ls-{noise}")
                row["label smoothing 0.1"] = {**mean_std(g[0]["test_top1"] for g in ls["per_seed"].values()),
                                              "wall_s": t}
            for name in peers:
                ds, noise_info = with_label_noise(load_dataset(args.dataset), noise)
                cfg = resolve_config(PRESET, {**seeds, **PLAIN})
                pipe = Pipeline.create(cpu, ds.mean, ds.std, amp)
                row[ROW_NAMES[name]] = peers_method(ds, cfg, pipe, args.seeds, name, noise_info)
                save(args.out, results)
            if not args.no_cleanlab:
                ds, noise_info = with_label_noise(load_dataset(args.dataset), noise)
                cfg = resolve_config(PRESET, {**seeds, **PLAIN})
                pipe = Pipeline.create(cpu, ds.mean, ds.std, amp)
                found = [cleanlab_method(ds, cfg, pipe, s, args.folds) for s in range(args.seeds)]
                dets = [detection(f["issues"], noise_info.flipped.numpy()[f["train_idx"]]) for f in found]
                row["cleanlab (retrained on kept)"] = {
                    **mean_std(f["test_top1"] for f in found), "wall_s": sum(f["wall_s"] for f in found),
                    "detection": {k: mean_std(d[k] for d in dets) for k in ("precision", "recall", "f1")}}
                save(args.out, results)
            for i, variant in enumerate(v for v in args.variants.split(",") if v):
                res, t = refinery_runs({**seeds, **VARIANTS[variant], "generations": args.generations}, runs,
                                       f"refinery-{variant}-{noise}")
                if i == 0:  # every variant's R1 is the same model: plain cross-entropy, best-validation epoch
                    row["R1 (best val epoch)"] = mean_std(g[0]["test_top1"] for g in res["per_seed"].values())
                for g in res["generations"]:
                    q = [s[g["generation"] - 1].get("label_quality", {}) for s in res["per_seed"].values()]
                    row[f"refinery {variant} R{g['generation']}"] = {
                        **mean_std(s[g["generation"] - 1]["test_top1"] for s in res["per_seed"].values()),
                        "labels": {k: mean_std(x.get(k) for x in q) for k in ("corrected", "harmed",
                                   "detection_precision", "detection_recall", "detection_f1")}}
                row[f"refinery {variant} best by validation"] = mean_std(
                    b["test_top1"] for b in res["best_by_validation"]["per_seed"].values())
                ens = next((e for e in res["ensemble"] if e["generations"] == list(range(1, args.generations + 1))),
                           None)  # none with --generations 1
                if ens:
                    row[f"refinery {variant} ensemble"] = mean_std(ens["per_seed"].values())
                row[f"refinery {variant} (whole chain)"] = {"wall_s": t, "r1_noise_estimates": r1_estimates(res),
                                                            "suggestions": suggestions(runs / f"refinery-{variant}-{noise}",
                                                                                       res),
                                                            "mean_opinion": mean_opinion(runs / f"refinery-{variant}-{noise}",
                                                                                         list(res["per_seed"]))}
                save(args.out, results)
            log(json.dumps({noise: {k: (v.get("mean"), v.get("std")) for k, v in row.items()}}))
        if args.clean_seeds:
            clean = {**common, "seeds": args.clean_seeds}
            row = results["clean"] = {}
            if not args.no_label_smoothing:
                ls, t = refinery_runs({**clean, **PLAIN, "label_smoothing": 0.1, "noise_prior": "0"}, runs,
                                      "clean-ls")
                row["label smoothing 0.1"] = {**mean_std(g[0]["test_top1"] for g in ls["per_seed"].values()),
                                              "wall_s": t}
            if not args.no_equal_compute:
                eq, t = refinery_runs({**clean, **PLAIN, "epochs": args.epochs * args.generations}, runs,
                                      "clean-equal")
                row["R1, equal compute"] = {**mean_std(g[0]["test_top1"] for g in eq["per_seed"].values()),
                                            "wall_s": t}
            for i, variant in enumerate(args.clean_variants.split(",")):
                res, t = refinery_runs({**clean, **VARIANTS[variant], "generations": args.generations}, runs,
                                       f"clean-{variant}")
                for g in res["generations"]:
                    if i == 0 and g["generation"] == 1:
                        row["R1"] = mean_std(s[0]["test_top1"] for s in res["per_seed"].values())
                    row[f"refinery {variant} R{g['generation']}"] = mean_std(
                        s[g["generation"] - 1]["test_top1"] for s in res["per_seed"].values())
                row[f"refinery {variant} best by validation"] = {
                    **mean_std(b["test_top1"] for b in res["best_by_validation"]["per_seed"].values()),
                    "gain_over_r1": res["best_by_validation"]["gain_over_r1"]}
                ens = next((e for e in res["ensemble"] if e["generations"] == list(range(1, args.generations + 1))),
                           None)
                if ens:
                    row[f"refinery {variant} ensemble"] = {**mean_std(ens["per_seed"].values()),
                                                           "gain_over_r1": ens["gain_over_r1"]}
                row[f"refinery {variant} (whole chain)"] = {"wall_s": t, "r1_noise_estimates": r1_estimates(res)}
                save(args.out, results)
            log(json.dumps({"clean": {k: (v.get("mean"), v.get("std")) for k, v in row.items()}}))
    save(args.out, results)
    print(markdown(results))


if __name__ == "__main__":
    main()
