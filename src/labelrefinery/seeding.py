"""Named random streams: every random draw of a run comes from a seed derived here.

A stream's seed is a function of the run seed, the generation, the epoch and a
name, so a run resumed at any generation or epoch draws exactly what an
uninterrupted one draws, on any machine. The stream constants are part of the
results: changing one changes every number a fixed command gives.
"""

from __future__ import annotations

import numpy as np
import torch

# Stream names (integers mixed into the seed).
MODEL_INIT = 0x1417  # torch.manual_seed before a generation's model is built
STATIC_COPIES = 0x57A71C  # augment=static: the stored augmented copies
EPOCH_GLOBAL = 1  # per-epoch global torch RNG (dropout and any other global-RNG use)
CROSS_FIT = 0xC805F  # --cross-fit: fold assignment and the fold models of a generation
RANK_STREAM = 0x4A4E  # torchrun: each process's augmentation stream within an epoch
LABEL_NOISE = 0x401CE  # --label-noise: which labels flip and to what (the same for every run seed)
TRUSTED = 0x7257ED  # --trusted N: which training images have their labels verified (the same for every run seed)


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (e.g. run seed, generation, epoch), stable across runs and machines."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)[0] >> 1)


def seed_model_init(seed: int, generation: int, *more: int) -> None:
    """Seed torch's global RNG so that generation ``generation`` of run seed ``seed`` starts from fixed weights
    (``more`` keys name another model of that generation, e.g. a cross-fit fold's)."""
    torch.manual_seed(derive_seed(seed, generation, MODEL_INIT, *more))


def epoch_generator(fit_keys: tuple[int, ...], epoch: int) -> torch.Generator:
    """The CPU generator of one epoch (batch order, augmentation, jitter draws), also seeding the global RNG.

    Args:
        fit_keys: integers naming the fit (run seed, generation).
        epoch: 0-based epoch.
    """
    torch.manual_seed(derive_seed(*fit_keys, epoch, EPOCH_GLOBAL))
    return torch.Generator().manual_seed(derive_seed(*fit_keys, epoch))


def static_copy_generator(seed: int, copy: int) -> torch.Generator:
    """The generator of the ``copy``-th (1-based) stored augmented copy of run seed ``seed``."""
    return torch.Generator().manual_seed(derive_seed(seed, STATIC_COPIES, copy))


def label_noise_generator() -> torch.Generator:
    """The generator of injected label noise: one stream for the whole run, whatever the run seed."""
    return torch.Generator().manual_seed(derive_seed(LABEL_NOISE))


def trusted_generator() -> torch.Generator:
    """The generator that draws the images of ``--trusted N``: one stream for the whole run, whatever the run seed."""
    return torch.Generator().manual_seed(derive_seed(TRUSTED))


def rank_generator(generator: torch.Generator, rank: int) -> torch.Generator:
    """Process ``rank``'s own stream for an epoch under torchrun, seeded from one draw of the epoch's ``generator``
    (the same draw on every process): per-process augmentation differs, and a seed still decides it all."""
    base = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator().manual_seed(derive_seed(base, RANK_STREAM, rank))
