"""Several processes (``dist``): the share of rows each process takes. Runs with torchrun are in
tests/e2e/test_distributed.py."""

import pytest
import torch

from labelrefinery import dist


@pytest.fixture
def world(monkeypatch):
    """Set torchrun's environment (``world(rank, size)``; nothing for a plain run) and re-read it."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)

    def set_world(rank=None, size=None):
        if size is not None:
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", str(size))
        dist.process_info.cache_clear()
        return dist.process_info()

    yield set_world
    monkeypatch.undo()
    dist.process_info.cache_clear()


def test_shard_gives_each_process_its_contiguous_rows(world):
    info = world()
    assert (info.rank, info.world_size, info.is_main) == (0, 1, True)
    assert dist.shard(10) == (0, 10) and dist.shard(0) == (0, 0)  # one process: every row
    rows = torch.arange(6).view(3, 2)
    assert dist.gather_rows(rows, 3) is rows and not dist.distributed()
    shares = []
    for rank in range(3):  # 10 rows over 3 processes: sizes differ by at most one, in rank order
        world(rank, 3)
        shares.append(dist.shard(10))
    assert shares == [(0, 4), (4, 7), (7, 10)]
