"""Label noise, in one package: injecting it, reading it from a refinery's labels, correcting for it, and
scoring refined labels against the given and the true labels.

Functions are shaped like cleanlab's: the given labels ``(N,) int64`` first, a refinery's refined labels
(cleanlab's ``pred_probs``) ``(N, K)`` second.

- :mod:`~labelrefinery.noise.inject`: ``--label-noise symmetric:P | pairflip:P | swap:P | idn:P``
  (:func:`inject_label_noise`).
- :mod:`~labelrefinery.noise.estimate`: the share of wrong labels (:func:`estimate_symmetric_noise`), the
  class-by-class transition matrix (:func:`estimate_noise_transition`) and the posterior of the true class
  under it (:func:`noisy_label_posterior`); from verified labels (``--trusted``) the share with its interval
  (:func:`trusted_noise_estimate`) and the matrix (:func:`trusted_transition`).
- :mod:`~labelrefinery.noise.calibrate`: the temperature that calibrates a refinery on held-out images
  (:func:`fit_temperature`), which the estimates read its rows at (:func:`temperature_scaled`).
- :mod:`~labelrefinery.noise.correct`: refined labels corrected on verified labels
  (:func:`fit_verified_correction`, ``--noise-prior verified``). **T[c, y] = P(given label y | true class c)**: cleanlab's
  ``noise_matrix`` transposed.
- :mod:`~labelrefinery.noise.quality`: which label the refined labels suggest (:func:`suggested_labels`) and
  every statistic reported about them (:func:`label_statistics`), label issues ranked (:func:`rank_label_issues`).
"""

from .calibrate import fit_temperature, temperature_scaled
from .correct import VerifiedCorrection, fit_verified_correction
from .estimate import (CLASSWISE_CONCENTRATION, classwise_summary, disputes, estimate_noise_transition,
                       estimate_symmetric_noise, implied_noise_rate, largest_transitions, noise_concentration,
                       noisy_label_posterior, symmetric_transition, trusted_noise_estimate, trusted_transition,
                       wilson_interval)
from .inject import LabelNoise, inject_label_noise, max_noise_rate
from .quality import (entropy, generation_label_stats, given_label_scores, label_statistics, rank_label_issues,
                      suggested_labels)

__all__ = [
    "CLASSWISE_CONCENTRATION", "LabelNoise", "VerifiedCorrection", "classwise_summary", "disputes", "entropy",
    "estimate_noise_transition",
    "estimate_symmetric_noise", "fit_temperature", "fit_verified_correction", "generation_label_stats",
    "given_label_scores",
    "implied_noise_rate", "inject_label_noise", "label_statistics", "largest_transitions", "max_noise_rate",
    "noise_concentration",
    "noisy_label_posterior", "rank_label_issues", "suggested_labels", "symmetric_transition",
    "temperature_scaled", "trusted_noise_estimate", "trusted_transition", "wilson_interval",
]
