"""What every generation of a run shares (:class:`Experiment`), made once by :func:`labelrefinery.chain.prepare`."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .batch import Pipeline
from .checkpoint import preprocessing_record
from .config import RunConfig
from .console import ChainClock
from .data import Dataset
from .models import ModelSpec
from .noise import LabelNoise
from .rundir import RunDir
from .targets import LabelRecipe


@dataclass
class Experiment:
    """What every generation of a run shares.

    Attributes:
        cfg: the run's configuration.
        dataset: the loaded dataset.
        run_dir: where results go.
        pipeline: device, normalisation, precision and evaluation view.
        spec: the model every generation builds.
        augment: the batched training augmentation, or None.
        recipe: how refinery logits become targets.
        external: a ``--refinery-checkpoint`` model that labels generation 1's targets, or None.
        noise: the ``--label-noise`` injected into ``dataset``'s training labels, or None.
        clock: the epochs the run has left, for the ETA in its progress output (None: no ETA).
        corrections: ``(seed, generation) ->`` the record of the verified-label correction of the labels that
            generation trains on (``--noise-prior verified``; :meth:`~labelrefinery.noise.VerifiedCorrection.record`).
    """

    cfg: RunConfig
    dataset: Dataset
    run_dir: RunDir
    pipeline: Pipeline
    spec: ModelSpec
    augment: object | None
    recipe: LabelRecipe
    external: nn.Module | None = None
    noise: LabelNoise | None = None
    clock: ChainClock | None = None
    corrections: dict = field(default_factory=dict)  # (seed, generation) -> the verified correction it trained on

    @property
    def preprocessing(self) -> dict:
        """What every checkpoint of the run stores to be usable alone (:func:`~labelrefinery.checkpoint.preprocessing_record`)."""
        return preprocessing_record(self.dataset, self.cfg.data.augment)
