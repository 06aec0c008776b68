"""What ``results.md`` says in words about wrong labels: the evidence (verified labels, or a noisy validation split)
and R1's noise estimates, read from a summarized run (:func:`labelrefinery.report.tables.summarize_run`)."""

from __future__ import annotations

from ..config import parse_noise_prior
from ..noise import CLASSWISE_CONCENTRATION


def evidence_lines(r: dict) -> list[str]:
    """What the labels look like, in words: the share that looks wrong with its interval and where it comes from;
    without verified labels, what a noisy validation split means and whether R1 fitted its labels."""
    e = r["generations"][0].get("noise_evidence") if r["generations"] else None
    if not e:
        return []
    span = f"{100 * e['rate']:.1f}% (95% interval {100 * e['low']:.1f}-{100 * e['high']:.1f}%)"
    classes = r.get("classes") or []
    if e["source"] == "trusted":
        pairs = [f"{classes[c] if c < len(classes) else c} given as {classes[y] if y < len(classes) else y} "
                 f"({100 * v:.0f}%)" for c, y, v in (e.get("largest") or [])[:3] if v]
        out = ["", f"**Wrong labels: {span} of the given labels**, counted on the {e['images']} verified labels "
               "(`--trusted`), which are also the validation split that chose epochs and generations"
               + (f"; the largest confusions: true {', '.join(pairs)}." if pairs else ".")]
        corrected = [g for g in r["generations"] if g.get("verified_correction")]
        if corrected:
            out += ["", "Each generation's labels were corrected on the verified labels before the next fitted them "
                    "(`--noise-prior verified`; left as they are where no correction did better): " + "; ".join(
                        f"R{g['generation'] - 1}'s labels agree with {g['verified_correction']['before']:.1f}% of the "
                        f"verified labels, corrected {g['verified_correction']['after']:.1f}%" for g in corrected)
                    + " (out of fold, mean over seeds). The same images chose the generation, so its validation "
                    "top-1 reads a little high; test top-1 is the figure to trust."]
        return out
    out = ["", f"**Validation is as noisy as training** (no `--trusted`): R1 disputes {span} of the held-out given "
           "labels. That counts R1's own errors as wrong labels and misses wrong labels R1 learned to predict "
           "(annotator-like noise, which depends on the image), so it is no estimate of the share of wrong labels; "
           "and validation top-1 measures agreement with possibly wrong labels, so the best-by-validation row "
           "may not be the best model. A few hundred verified labels (`--trusted FILE`) fix both."]
    if e["train_agreement"] - e["val_top1"] > 5.0:
        out += ["", f"R1 agrees with {e['train_agreement']:.1f}% of its training labels but {e['val_top1']:.1f}% of "
                "held-out ones: it fitted its labels, wrong ones included, so the estimates from its refined labels "
                "below read too low."]
    return out


def estimate_lines(r: dict) -> list[str]:
    """R1's noise estimates in words (mean over seeds): the symmetric one at R1's calibration temperature, and the
    class-by-class one when ``--noise-prior classwise`` uses it or it reads 5 points more, with what that suggests
    (wrong labels that depend on the true class, or spread over the classes as random noise is)."""
    r1 = r["generations"][0] if r["generations"] else {}
    lines: list[str] = []
    estimate = r1.get("symmetric_noise_estimate")
    if estimate is not None:
        at = r1.get("calibration_temperature")
        lines += ["", "R1's refined labels, calibrated on the validation images"
                  + (f" (temperature {at:.2f})" if at is not None else "")
                  + f", suggest about {100 * estimate:.0f}% of the given labels are wrong (symmetric-noise estimate, "
                  "mean over seeds; what `--noise-prior auto` uses)."]
    classwise, concentration = r1.get("classwise_noise_rate"), r1.get("classwise_noise_concentration")
    # shown when used, or when it reads 5 points more than the symmetric estimate: wrong labels that depend on
    # the true class (on clean labels it reads a few % of classes the model finds alike)
    model = parse_noise_prior(r["config"].get("noise_prior", "0")).model
    used = model == "classwise"
    if classwise is not None and (used or classwise >= (estimate or 0.0) + 0.05):
        above = classwise >= (estimate or 0.0) + 0.05
        spread = concentration is not None and concentration < CLASSWISE_CONCENTRATION  # as evidence reads it
        if not above:
            hint = ""
        elif spread:
            hint = (f" That is above the symmetric estimate, but only {100 * concentration:.0f}% of the wrong labels "
                    "go to their class's most frequent other class: they look spread over the classes, as random "
                    "noise is (R1's own confusions lift the class-by-class figure), so the symmetric model fits them.")
        else:
            hint = (" That is well above the symmetric estimate: the wrong labels seem to depend on the true class"
                    + ("." if used or model == "evidence" else "; try `--noise-prior classwise`."))
        cap = "; at its cap, the share of labels R1 disputes" if r1.get("classwise_noise_capped") else ""
        lines += ["", f"Class by class (`--noise-prior classwise`), they suggest {100 * classwise:.0f}% (mean over "
                  "seeds" + cap
                  + "; each seed's largest confusions: its R1 `summary.json`, `classwise_noise_estimate`)." + hint]
    return lines
