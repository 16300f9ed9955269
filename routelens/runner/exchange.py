"""The All-to-All exchanges of expert parallelism, behind two functions.

``torch.distributed.all_to_all_single`` with uneven splits works on NCCL (GPU) and on gloo (CPU;
checked on torch 2.11 and 2.13), so both back-ends share this one code path: first the per-peer row
counts (an even exchange of ``G`` integers), then the rows themselves (uneven splits along dim 0).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def exchange_counts(send_counts: torch.Tensor, group=None) -> torch.Tensor:
    """``[G]`` rows each peer will send this rank, given ``send_counts[G]`` rows this rank sends each peer."""
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=group)
    return recv_counts


def all_to_all_rows(rows: torch.Tensor, send_counts: list[int], recv_counts: list[int], group=None,
                    async_op: bool = False):
    """Send ``rows[sum(send_counts[:p]) : ...]`` to peer ``p``; receive ``recv_counts[p]`` rows from each.

    Args:
        rows: ``[sum(send_counts), ...]``, grouped by destination rank in rank order.
        async_op: return ``(out, work)`` without waiting (for overlap); else ``(out, None)``.

    Returns:
        ``[sum(recv_counts), ...]`` rows grouped by source rank, and the pending work handle or None.
    """
    out = torch.empty((sum(recv_counts), *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    work = dist.all_to_all_single(out, rows.contiguous(), output_split_sizes=list(recv_counts),
                                  input_split_sizes=list(send_counts), group=group, async_op=async_op)
    return out, work


def sync_peers(device: torch.device, group=None) -> None:
    """A barrier that keeps one phase's skew out of the next phase's timing.

    On CUDA an ``all_reduce`` of one element orders the current stream after every peer reached
    this point (a host ``barrier`` would not order the streams); on CPU a plain barrier.
    """
    if device.type == "cuda":
        flag = torch.ones(1, device=device)
        dist.all_reduce(flag, group=group)
    else:
        dist.barrier(group=group)
