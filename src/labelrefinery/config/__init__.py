"""Typed run configuration: four sections composed into :class:`RunConfig`, presets, resume rules.

A run is defined by the model, the chain's length (generations x seeds) and
four sections, each a dataclass checked on construction:

- :class:`DataConfig`: the dataset and its protocol (validation share, subsets, augmentation);
- :class:`TrainConfig`: how one generation is fitted (epochs, batch size, optimizer, schedule);
- :class:`RefineConfig`: how refined labels are made (offline/online, temperature, form, ground-truth weight);
- :class:`ExecConfig`: how it executes (device, precision, threads), never what a result means.

Every leaf field has a unique name, which is also its command-line flag
(``batch_size`` -> ``--batch-size``) and its key in the flat form
(:meth:`RunConfig.flat`). The resolved configuration is saved as
``config.yaml`` with one mapping per section and lists as YAML lists;
:meth:`RunConfig.from_dict` also reads the flat layout with comma strings that
older run directories hold. The package imports nothing from the rest of labelrefinery but its errors:
:mod:`~.values` (choices, ranges, parsers), :mod:`~.sections`, :mod:`~.run` (:class:`RunConfig`,
resume rules), :mod:`~.presets` (presets, ``--config`` files, :func:`resolve_config`).
"""

from .presets import PRESETS, config_file_values, resolve_config
from .run import (PATH_SETTINGS, RESUMABLE_CHANGES, SECTIONS, RunConfig, absolute_paths, config_difference, leaf_fields,
                  looks_for_wrong_labels,
                  leaf_names)
from .sections import DataConfig, ExecConfig, RefineConfig, TrainConfig
from .values import (AUGMENTS, ESTIMATED_NOISE_PRIORS, IMAGENET_MEAN, IMAGENET_STD, IN_MEMORY_CHOICES, LABEL_MODES,
                     LABEL_STORAGES, LR_SCHEDULES, MAX_BATCH, MAX_CHAIN, MAX_EPOCHS, MAX_IMAGE_PX, MAX_LR,
                     MAX_STATIC_COPIES, MAX_TEMPERATURE, MAX_THREADS, MAX_WORKERS, NOISE_KINDS, OPTIMIZERS,
                     PRECISIONS, NoisePrior, check_device_name, flag_name, merged_seeds, parse_int_list,
                     parse_label_form, parse_label_noise, parse_noise_prior, parse_normalization, parse_seeds)

__all__ = [
    "AUGMENTS", "DataConfig", "ESTIMATED_NOISE_PRIORS", "ExecConfig", "IMAGENET_MEAN", "IMAGENET_STD",
    "IN_MEMORY_CHOICES", "LABEL_MODES", "LABEL_STORAGES", "LR_SCHEDULES", "MAX_BATCH", "MAX_CHAIN", "MAX_EPOCHS",
    "MAX_IMAGE_PX", "MAX_LR", "MAX_STATIC_COPIES", "MAX_TEMPERATURE", "MAX_THREADS", "MAX_WORKERS", "NOISE_KINDS",
    "NoisePrior", "OPTIMIZERS", "PATH_SETTINGS", "PRECISIONS", "PRESETS", "RESUMABLE_CHANGES", "RefineConfig",
    "RunConfig", "SECTIONS", "TrainConfig", "absolute_paths", "looks_for_wrong_labels", "check_device_name", "config_difference",
    "config_file_values", "flag_name", "leaf_fields", "leaf_names", "merged_seeds", "parse_int_list",
    "parse_label_form", "parse_label_noise", "parse_noise_prior", "parse_normalization", "parse_seeds",
    "resolve_config",
]
