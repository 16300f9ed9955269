"""What a routing choice costs under expert parallelism: fan-out, busiest GPU, expert imbalance.

All functions take one layer's choice ``ids [N, K]`` (``-1`` = dropped slot, ignored) for one
batch of ``N`` tokens, and a placement ``gpu_table [G, S]`` (``Plan.gpu_experts[layer]``) where one
is needed. Under expert parallelism a token is sent once to every GPU that holds one of its experts
(not once per expert), so:

* ``gpus_per_token``: mean number of distinct GPUs a token visits (the All-to-All fan-out);
* ``gpu_recv [G]``: token copies each GPU receives from the other GPUs in the dispatch, with the
  batch's tokens starting evenly on the GPUs (token ``t`` of ``N`` on GPU ``t * G // N``, as the
  placement cost model ``routelens.placement.cost`` has it); ``busiest_gpu_recv`` is its max in
  units of ``N / G`` tokens (0: every token stays home; ``G - 1``: every token visits every GPU);
* ``load_max_over_mean``: max / mean tokens per expert, the expert-level straggler of the
  capacity-aware inference paper (arXiv:2503.05066).

With replicas a token visits the fewest GPUs that cover its experts (greedy cover, the GPU holding
most of its remaining experts first, lower GPU id on ties).
"""

from __future__ import annotations

import torch

from .scores import as_long_tensor


def _as_ids(ids) -> torch.Tensor:
    return as_long_tensor(ids)


def expert_load(ids, num_experts: int) -> torch.Tensor:
    """``[E]`` tokens routed to each expert (dropped ``-1`` slots ignored)."""
    ids = _as_ids(ids).reshape(-1)
    return torch.bincount(ids[ids >= 0], minlength=num_experts)


def load_max_over_mean(ids, num_experts: int) -> float:
    """max / mean expert load of one batch (1.0 = perfectly balanced; 0 when nothing is routed)."""
    load = expert_load(ids, num_experts).double()
    mean = load.mean()
    return float(load.max() / mean) if mean > 0 else 0.0


def gpus_visited(ids, gpu_table) -> torch.Tensor:
    """``[N, G]`` bool: the GPUs each token is sent to.

    Args:
        ids: ``[N, K]`` chosen experts (``-1`` ignored).
        gpu_table: ``[G, S]`` expert ids per GPU slot.
    """
    ids = _as_ids(ids)
    table = as_long_tensor(gpu_table, ids.device)
    num_gpus = table.shape[0]
    num_experts = int(max(int(table.max()), int(ids.max()) if ids.numel() else 0)) + 1
    holds = torch.zeros(num_gpus, num_experts, dtype=torch.bool, device=ids.device)
    holds.scatter_(1, table, True)
    valid = ids >= 0
    replicas = holds.sum(0)
    if int(replicas.max()) <= 1:  # one GPU per expert: a token visits its experts' GPUs
        owner = holds.float().argmax(dim=0)  # [E]
        visited = torch.zeros(ids.shape[0], num_gpus, dtype=torch.bool, device=ids.device)
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(ids)
        visited[rows[valid], owner[ids[valid]]] = True
        return visited
    remaining = torch.zeros(ids.shape[0], num_experts, dtype=torch.bool, device=ids.device)
    remaining.scatter_(1, ids.clamp_min(0), valid)
    remaining &= valid.any(1, keepdim=True)
    visited = torch.zeros(ids.shape[0], num_gpus, dtype=torch.bool, device=ids.device)
    holds_f = holds.float()
    for _ in range(ids.shape[1]):
        cover = remaining.float() @ holds_f.T  # [N, G] experts still to serve on each GPU
        best_cover, best = cover.max(dim=1)
        active = best_cover > 0
        if not active.any():
            break
        visited[active, best[active]] = True
        remaining[active] &= ~holds[best[active]]
    return visited


def gpus_per_token(ids, gpu_table) -> float:
    """Mean distinct GPUs a token's experts live on (the quantity C2R and GPU limits cut)."""
    visited = gpus_visited(ids, gpu_table)
    return float(visited.sum(1).double().mean()) if visited.shape[0] else 0.0


def gpu_recv(ids, gpu_table) -> torch.Tensor:
    """``[G]`` token copies each GPU receives from the other GPUs in the dispatch of one batch."""
    visited = gpus_visited(ids, gpu_table)
    num_tokens, num_gpus = visited.shape
    source = torch.arange(num_tokens, device=visited.device) * num_gpus // max(num_tokens, 1)
    visited[torch.arange(num_tokens, device=visited.device), source] = False  # a token's own GPU costs nothing
    return visited.sum(0)


def routing_stats(ids, num_experts: int, gpu_table=None) -> dict[str, float]:
    """The costs of one layer's choice for one batch, as plain floats.

    Keys: ``load_max_over_mean``, ``dropped_fraction`` (slots ``-1``), and with a ``gpu_table``
    ``gpus_per_token``, ``busiest_gpu_recv`` and ``mean_gpu_recv`` (copies received from other GPUs,
    in units of ``N / G`` tokens).
    """
    ids = _as_ids(ids)
    stats = {
        "load_max_over_mean": load_max_over_mean(ids, num_experts),
        "dropped_fraction": float((ids < 0).double().mean()) if ids.numel() else 0.0,
    }
    if gpu_table is not None and ids.shape[0]:
        visited = gpus_visited(ids, gpu_table)
        num_tokens, num_gpus = visited.shape
        stats["gpus_per_token"] = float(visited.sum(1).double().mean())
        source = torch.arange(num_tokens, device=visited.device) * num_gpus // num_tokens
        visited[torch.arange(num_tokens, device=visited.device), source] = False
        recv = visited.sum(0).double() / (num_tokens / num_gpus)
        stats["busiest_gpu_recv"] = float(recv.max())
        stats["mean_gpu_recv"] = float(recv.mean())
    return stats


def changed_fraction(old_ids, new_ids) -> float:
    """Share of a token's expert slots whose expert differs between two choices (as sets per token)."""
    old, new = _as_ids(old_ids), _as_ids(new_ids)
    if old.numel() == 0:
        return 0.0
    same = (old[:, :, None] == new[:, None, :]) & (old[:, :, None] >= 0)
    return float(1.0 - same.any(2).double().sum() / (old >= 0).sum().clamp_min(1))
