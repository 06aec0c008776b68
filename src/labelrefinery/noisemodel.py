"""The noise model a generation's targets are made under (``--noise-prior``), and what a run says of its labels' noise.

- :func:`noise_model`: which model ``--noise-prior`` means for a seed (``evidence`` resolved here);
- :func:`noise_transition`: its transition matrix T[c, y] = P(given y | true c) for the posterior
  (:func:`labelrefinery.noise.noisy_label_posterior`);
- :func:`verified_correction`: ``verified``, the refined labels corrected on the ``--trusted`` labels
  (:mod:`labelrefinery.noise.correct`);
- :func:`noise_evidence`: what R1's summary records of the share of wrong labels without trusting R1's fit of them.
"""

from __future__ import annotations

import torch
from torch import nn

from .console import log
from .errors import RunDirError
from .experiment import Experiment
from .inference import final_linear, predict_features
from .noise import (CLASSWISE_CONCENTRATION, estimate_noise_transition, fit_verified_correction, implied_noise_rate,
                    max_noise_rate, symmetric_transition, temperature_scaled, trusted_noise_estimate,
                    trusted_transition, wilson_interval)
from .protocol import SeedData


def verified_correction(exp: Experiment, data: SeedData, generation: int, refinery: nn.Module,
                        stored: torch.Tensor) -> torch.Tensor:
    """Generation ``generation - 1``'s refined labels ``stored`` ``(M, K)`` corrected on the verified labels: the
    correction (:func:`~labelrefinery.noise.fit_verified_correction`) is fitted on what ``refinery`` (that
    generation's model) says of the verified images (the validation split, which it never trained on), from its
    log-probabilities or its penultimate features (:func:`~labelrefinery.inference.predict_features`), whichever
    cross-validates better; logged, and recorded for generation ``generation``'s summary.

    Returns:
        ``(M, K) float32`` corrected rows on ``stored``'s device.
    """
    pipeline, num_classes = exp.pipeline, exp.dataset.train.num_classes
    logits, features = predict_features(refinery, data.val_images, pipeline, num_classes)  # one pass
    probs = exp.recipe.refine(logits)
    layer = final_linear(refinery, num_classes)
    correction = fit_verified_correction(probs, data.val_labels, features,
                                         None if layer is None else (layer.weight, layer.bias))
    exp.corrections[(data.seed, generation)] = correction.record()
    if correction.inputs == "none":
        log(f"[seed {data.seed} R{generation}] R{generation - 1}'s labels left as they are: they agree with "
            f"{correction.before:.1f}% of the {len(data.val_labels)} verified labels, and no correction fitted on "
            "them does better out of fold")
    else:
        log(f"[seed {data.seed} R{generation}] R{generation - 1}'s labels corrected on the {len(data.val_labels)} "
            f"verified labels, from its {correction.inputs}: they agree with {correction.before:.1f}% of them, "
            f"corrected {correction.after:.1f}% (out of fold; pull {correction.strength:g})")
    if correction.inputs == "features":
        return correction(stored, predict_features(refinery, data.images, pipeline, num_classes)[1])
    return correction(stored)


def noise_model(exp: Experiment, seed: int, generation: int) -> str:
    """The noise model ``--noise-prior`` means for ``seed``: ``none``, ``symmetric``, ``auto``, ``classwise`` or
    ``verified``; ``evidence`` resolved by :func:`_chosen_noise_model` (logged for each generation it serves)."""
    model = exp.cfg.refinement.prior.model
    return _chosen_noise_model(exp, seed, generation) if model == "evidence" else model


def noise_transition(exp: Experiment, data: SeedData, model: str,
                     r1_labels: torch.Tensor | None = None) -> torch.Tensor | None:
    """The ``(K, K) float32`` noise transition matrix T[c, y] = P(given y | true c) that ``--noise-prior`` sets
    for ``data.seed``, or None when it is off: symmetric with the share given, or with R1's estimate recorded
    in its summary (``auto``: ``symmetric_noise_estimate``), or estimated class by class from R1's refined
    labels at the temperature that calibrates R1 on validation (``classwise``: :func:`estimate_noise_transition` of
    :func:`~labelrefinery.noise.temperature_scaled` rows, the temperature R1's summary records as
    ``calibration_temperature``, 1 for a run an older version wrote; ``r1_labels`` are R1's ``(M, K)`` rows when in
    memory, else they are read back from the run directory). With verified labels (``--trusted``) both are
    counted on them instead (:func:`~labelrefinery.noise.trusted_transition`; ``auto``: its implied share as
    symmetric noise). An estimate of no noise at all (T = I) is None
    too: the refined labels are then used as they are, as with ``--noise-prior 0``.

    Raises:
        RunDirError: ``auto`` on a run whose R1 summary holds no estimate (written by an older version), or R1's
            labels missing or damaged.
    """
    prior, num_classes, trusted = exp.cfg.refinement.prior, exp.dataset.train.num_classes, exp.dataset.trusted
    if model in ("none", "verified"):
        return None
    if model == "symmetric":
        return symmetric_transition(num_classes, prior.rate)
    if trusted is not None:  # counted on the verified labels, not read from a refinery that fitted the noise
        transition = trusted_transition(trusted.given, trusted.verified, num_classes)
        if model == "auto":
            rate = min(implied_noise_rate(trusted.given, transition), 0.99 * max_noise_rate(num_classes))
            transition = symmetric_transition(num_classes, rate)
        return None if torch.allclose(transition, torch.eye(num_classes)) else transition
    if model == "classwise":
        if r1_labels is None:
            r1_labels = torch.from_numpy(exp.run_dir.load_labels(data.seed, 1, len(data.views.indices),
                                                                 num_classes)["labels"])
        originals = (data.views.views == 0).cpu()
        temperature = exp.run_dir.read_summary(data.seed, 1).get("calibration_temperature", 1.0)
        transition = estimate_noise_transition(data.views.labels.cpu()[originals],
                                               temperature_scaled(r1_labels.cpu()[originals], temperature))
        return None if torch.equal(transition, torch.eye(num_classes)) else transition
    estimate = exp.run_dir.read_summary(data.seed, 1).get("symmetric_noise_estimate")
    if estimate is None:
        raise RunDirError(f"seed {data.seed}'s R1 summary holds no symmetric_noise_estimate (an older version "
                          "wrote it); give --noise-prior P or start a new --name")
    return symmetric_transition(num_classes, float(estimate)) if estimate > 0 else None


CLASSWISE_MARGIN = 0.03  # evidence: class by class when it reads this much more noise than the symmetric estimate


def _chosen_noise_model(exp: Experiment, seed: int, generation: int) -> str:
    """``--noise-prior evidence``: ``verified`` with verified labels (a correction fitted on them,
    :mod:`labelrefinery.noise.correct`); else ``classwise`` when R1's class-by-class estimate reads
    ``CLASSWISE_MARGIN`` more wrong labels than its symmetric one *and* those wrong labels concentrate on one
    other class per class (:func:`~labelrefinery.noise.noise_concentration` at least
    ``CLASSWISE_CONCENTRATION``: pair flips and swaps read near 1; symmetric noise near 1 / (K - 1), plus R1's
    own confusions, which alone would lift the class-by-class estimate above the symmetric one), else ``auto``.

    Raises:
        RunDirError: an R1 summary without the estimates (an older version wrote it).
    """
    if exp.dataset.trusted is not None:
        chosen, why = "verified", "corrected on the verified labels"
    else:
        r1 = exp.run_dir.read_summary(seed, 1)
        symmetric, classwise = r1.get("symmetric_noise_estimate"), (r1.get("classwise_noise_estimate") or {})
        if symmetric is None or classwise.get("rate") is None or classwise.get("concentration") is None:
            raise RunDirError(f"seed {seed}'s R1 summary holds no noise estimates (an older version wrote it); give "
                              "--noise-prior auto or classwise, or start a new --name")
        larger = classwise["rate"] >= symmetric + CLASSWISE_MARGIN
        concentrated = classwise["concentration"] >= CLASSWISE_CONCENTRATION
        chosen = "classwise" if larger and concentrated else "auto"
        why = (f"R1's class-by-class estimate ({100 * classwise['rate']:.1f}%) is "
               f"{100 * (classwise['rate'] - symmetric):.1f} points above its symmetric one ({100 * symmetric:.1f}%; "
               f"classwise needs {100 * CLASSWISE_MARGIN:.0f}), and {100 * classwise['concentration']:.0f}% of the "
               "wrong labels it reads go to their class's most frequent other class (classwise needs "
               f"{100 * CLASSWISE_CONCENTRATION:.0f}%)")
    log(f"[seed {seed} R{generation}] --noise-prior evidence: {chosen} ({why})")
    return chosen


MEMORISED_GAP_POINTS = 5.0  # R1 agreeing with this many points more of its training labels than of held-out ones


def noise_evidence(exp: Experiment, val_images: int, val_top1: float) -> dict:
    """What R1's run can say of the share of wrong labels without trusting R1's fit of them: from verified labels
    (``--trusted``: :func:`~labelrefinery.noise.trusted_noise_estimate`), else the share of held-out given labels
    R1 disputes (``source: held-out``, 1 - validation top-1, with its 95% Wilson interval): out of sample, so not
    read down by memorisation, but it counts R1's own errors as wrong labels and misses noise R1 learned to
    predict (noise that depends on the image), so it bounds nothing; the log and ``results.md`` say so.

    Args:
        val_images: the validation images (V).
        val_top1: R1's validation top-1 (%) against their labels.
    """
    trusted = exp.dataset.trusted
    if trusted is not None:
        return trusted_noise_estimate(trusted.given, trusted.verified, exp.dataset.train.num_classes)
    wrong = round((1 - val_top1 / 100) * val_images)
    low, high = wilson_interval(wrong, val_images)
    return {"source": "held-out", "rate": wrong / max(val_images, 1), "low": low, "high": high, "images": val_images}


def noise_records(exp: Experiment, seed: int, generation: int, val_images: int, val_top1: float) -> dict:
    """What a generation's summary records about noise: R1's ``noise_evidence`` (:func:`noise_evidence`), and
    ``verified_correction`` for a generation that trained on corrected labels (:func:`verified_correction`)."""
    out = {"noise_evidence": noise_evidence(exp, val_images, val_top1)} if generation == 1 else {}
    if (seed, generation) in exp.corrections:
        out["verified_correction"] = exp.corrections[(seed, generation)]
    return out
