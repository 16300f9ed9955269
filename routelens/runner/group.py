"""Joining the process group ``torchrun`` set up, and the group the replay communicates over."""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

from ..errors import InputError


@dataclass(frozen=True)
class RankContext:
    """What a rank learns when it joins the process group (facts of the run, not configuration).

    Attributes:
        rank, world: this process's rank and the number of ranks.
        device: ``torch.device`` it computes on (``cuda:<local rank>`` with NCCL, ``cpu`` with gloo).
        backend: the back-end torch really uses (``nccl`` / ``gloo``).
        group: the process group the replay communicates over (None: the default group).
        comm_priority: ``high`` when ``group`` has high-priority NCCL streams, else ``default``.
    """

    rank: int
    world: int
    device: Any
    backend: str
    group: Any = None
    comm_priority: str = "default"


def join_group(backend: str | None, comm_priority: str = "default", timeout_s: float | None = None) -> RankContext:
    """Join torchrun's process group (:func:`init_from_env`) and make the replay's group (:func:`comm_group`)."""
    import torch.distributed as dist

    rank, world, device = init_from_env(backend, timeout_s)
    group, priority = comm_group(comm_priority)
    return RankContext(rank, world, device, dist.get_backend(), group, priority)


def init_from_env(backend: str | None, timeout_s: float | None = None):
    """Join the process group torchrun set up (or make a world of one); returns ``(rank, world, device)``.

    ``timeout_s`` bounds how long a collective waits for a peer that died (default: torch's).
    """
    import datetime

    import torch
    import torch.distributed as dist

    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast stays off on shared hosts
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise InputError("backend nccl needs CUDA GPUs; use --backend gloo on CPU")
        if local_rank >= torch.cuda.device_count():
            raise InputError(f"local rank {local_rank} has no GPU (this node has {torch.cuda.device_count()})")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        kwargs = {"timeout": datetime.timedelta(seconds=timeout_s)} if timeout_s else {}
        dist.init_process_group(backend, **kwargs)
    return dist.get_rank(), dist.get_world_size(), device


def comm_group(priority: str):
    """The process group the replay communicates over: the default one, or (``priority="high"``, NCCL)
    a new group of all ranks whose NCCL streams run at high CUDA priority, so communication kernels
    are scheduled ahead of queued compute blocks when both are in flight (overlap). Returns
    ``(group, priority really used)``."""
    import torch.distributed as dist

    if priority != "high" or dist.get_backend() != "nccl":
        return None, "default"
    options_cls = getattr(getattr(dist, "ProcessGroupNCCL", None), "Options", None)
    if options_cls is None:
        return None, "default"
    try:
        options = options_cls()
        options.is_high_priority_stream = True
        return dist.new_group(backend="nccl", pg_options=options), "high"
    except Exception as exc:  # an older or newer torch without these options: measure with the default
        print(f"routelens: warning: no high-priority NCCL group ({exc}); using the default", file=sys.stderr)
        return None, "default"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
