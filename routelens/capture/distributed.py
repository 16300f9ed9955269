"""Data-parallel capture under ``torchrun``: process group, and which windows each rank captures.

Rank ``r`` of ``W`` captures the ``r``-th contiguous block of windows into its own shards; rank 0
merges the per-rank part manifests (:func:`routelens.trace.merge_rank_parts`). Contiguous blocks
keep the merged trace in window order, token for token the same as a one-process capture.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np


@dataclasses.dataclass
class DistContext:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we created the process group, so we destroy it
    use_cuda: bool = False

    @property
    def device(self) -> str:
        """Where this process captures: ``cuda:LOCAL_RANK`` on GPUs, else ``cpu``."""
        return f"cuda:{self.local_rank}" if self.use_cuda else "cpu"

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False


def init_distributed(use_cuda: bool | None = None) -> DistContext:
    """Join the ``torchrun`` process group from its env vars (one process: nothing to join).

    Args:
        use_cuda: capture on GPUs, one per process (``cuda:LOCAL_RANK``) over NCCL; False: CPU over
            gloo. Default: when CUDA is present.

    Raises:
        InputError: more processes on this host than GPUs.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    import torch
    import torch.distributed as dist

    from ..errors import InputError

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda is None:
        use_cuda = torch.cuda.is_available()
    if dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=False, use_cuda=use_cuda)
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise InputError(
                f"torchrun started local process {local_rank}, but this host has {torch.cuda.device_count()} GPUs: "
                "use at most one process per GPU, or --device cpu"
            )
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True, use_cuda=use_cuda)


def rank_windows(num_windows: int, rank: int, world_size: int) -> np.ndarray:
    """Window indices rank ``rank`` captures: the ``rank``-th of ``world_size`` contiguous blocks."""
    return np.array_split(np.arange(num_windows), world_size)[rank]
