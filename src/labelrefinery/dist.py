"""Several processes (``torchrun``): the process facts, read once, and the few collectives the refinery needs.

A plain ``refinery run`` is world size 1, rank 0, and every function here is then a no-op
that returns its input: single-process runs take the same code path as multi-process ones.
Under ``torchrun --nproc_per_node N -m labelrefinery run ...`` (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` set by torchrun) :func:`start` joins the process group
(NCCL on CUDA, gloo on the CPU); the training engine then wraps the student in
``DistributedDataParallel``, gives each process its share of every global batch, shards
prediction and gathers it back (:func:`gather_rows`), and keeps BatchNorm statistics equal
on every process (:func:`broadcast_buffers`). Only the main process (rank 0) prints
(:mod:`labelrefinery.console`) and writes files (:class:`labelrefinery.rundir.RunDir`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class ProcessInfo:
    """Where this process stands: ``rank`` in ``[0, world_size)``; ``local_rank`` in ``[0, local_world_size)``
    on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """True for the one process that writes files and prints."""
        return self.rank == 0


@lru_cache(maxsize=1)
def process_info() -> ProcessInfo:
    """This process's facts from torchrun's environment (world size 1 without it)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", 1))
    return ProcessInfo(int(env.get("RANK", 0)), world, int(env.get("LOCAL_RANK", 0)),
                       int(env.get("LOCAL_WORLD_SIZE", world)))


def cores_per_process() -> int:
    """The CPU cores this process may use, shared out among the processes torchrun started on this machine (>= 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // process_info().local_world_size)


def is_main_process() -> bool:
    """True on rank 0."""
    return process_info().is_main


def distributed() -> bool:
    """True when this process is one of several in a started process group."""
    return process_info().world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def start(device: torch.device) -> None:
    """Join the process group when torchrun started several processes (NCCL for CUDA, gloo otherwise); a no-op at
    world size 1 or when already joined."""
    info = process_info()
    if info.world_size == 1 or torch.distributed.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    _joined.append(True)


_joined: list[bool] = []  # whether this process joined a group (it may have left it since)


def joined() -> bool:
    """True once this process has joined a process group of several (also after it left it)."""
    return bool(_joined)


def stop() -> None:
    """Leave the process group (at the end of a run)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (e.g. until rank 0 has written a file the others will read)."""
    if distributed():
        torch.distributed.barrier()


def _shard_sizes(n: int) -> list[int]:
    """Rows of each rank's :func:`shard` of ``n``, in rank order: sizes differ by at most one."""
    base, extra = divmod(n, process_info().world_size)
    return [base + (1 if r < extra else 0) for r in range(process_info().world_size)]


def shard(n: int) -> tuple[int, int]:
    """This process's contiguous share ``[start, end)`` of ``n`` rows: sizes differ by at most one, rank order."""
    sizes, rank = _shard_sizes(n), process_info().rank
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """The rows of every process's :func:`shard` of ``n`` in rank order: ``(n, ...)`` on every process.

    Args:
        local: ``(end - start, ...)`` rows of this process's shard (any dtype; on the CPU for gloo, on the
            process's CUDA device for NCCL).

    Returns:
        ``(n, ...)`` with no padding rows and no duplicates, the same on every process.
    """
    if not distributed():
        return local
    sizes = _shard_sizes(n)
    width = max(sizes)
    padded = local.new_zeros((width, *local.shape[1:]))
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    torch.distributed.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over every process (in place; returned)."""
    if distributed():
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Every buffer of ``module`` (BatchNorm running statistics) set to rank 0's, so all processes hold equal ones."""
    if distributed():
        for buf in module.buffers():
            torch.distributed.broadcast(buf.data, src=0)


def wrap(model: torch.nn.Module, device: torch.device, sync_bn: bool = False) -> torch.nn.Module:
    """The student as trained: ``DistributedDataParallel(model)`` when distributed (its gradients averaged over
    processes at every step; ``sync_bn``: BatchNorm over the global batch), else ``model`` itself.

    Only the student is wrapped: a frozen refinery has no trainable parameters (recent PyTorch refuses to wrap
    such a module) and stays in eval mode on every process.
    """
    if not distributed():
        return model
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
