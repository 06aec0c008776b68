"""Process facts, read once from the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

A plain ``refinery run`` is world size 1, rank 0. Only the main process (rank 0)
prints (:mod:`labelrefinery.console`); training across several processes is not
implemented yet, so ``world_size`` and ``local_rank`` are read here for the code
that will use them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands: ``rank`` in ``[0, world_size)``, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True for the one process that writes files and prints."""
        return self.rank == 0


@lru_cache(maxsize=1)
def process_info() -> ProcessInfo:
    """This process's facts from torchrun's environment (world size 1 without it)."""
    env = os.environ
    return ProcessInfo(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def is_main_process() -> bool:
    """True on rank 0."""
    return process_info().is_main
