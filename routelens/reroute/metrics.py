"""What a routing choice costs under expert parallelism: fan-out, busiest GPU, expert imbalance.

All functions take one layer's choice ``ids [N, K]`` (``-1`` = dropped slot, ignored) for one
batch of ``N`` tokens (a torch tensor on any device, or a numpy array), and a placement
``gpu_table [G, S]`` (``Plan.gpu_experts[layer]``) where one is needed. They are a thin torch front
end to :mod:`routelens.placement.traffic`, the one definition of expert-parallel traffic: the
batch is one All-to-All, its tokens start evenly on the GPUs (token ``t`` of ``N`` on GPU
``t·G // N``), each slot is served by the GPU the plan's replica policy picks
(:func:`~routelens.placement.traffic.assign_replicas`), and a token is sent once to every distinct
GPU serving one of its experts (not once per expert). So on the same batch these numbers equal the
cost model's (:func:`routelens.placement.cost.score_table`) and the replay's bytes
(:mod:`routelens.runner`):

* ``gpus_per_token``: mean number of distinct GPUs serving a token (the All-to-All fan-out);
* ``gpu_recv [G]``: token copies each GPU receives from the other GPUs in the dispatch;
  ``busiest_gpu_recv`` is its max in units of ``N / G`` tokens (0: every token stays home;
  ``G - 1``: every token visits every GPU);
* ``load_max_over_mean``: max / mean tokens per expert, the expert-level straggler of the
  capacity-aware inference paper (arXiv:2503.05066).

With replicas, the GPUs a token visits are the ones its replica policy sends it to, which need not
be the fewest GPUs that hold its experts (see ``docs/reroute.md``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..placement.topology import Topology
from ..placement.traffic import DEFAULT_REPLICA_POLICY, gpus_visited as visited_from_dest, hit_matrix, route_tokens
from .scores import as_long_tensor


def _as_ids(ids) -> torch.Tensor:
    return as_long_tensor(ids)


def _as_numpy_ids(ids) -> np.ndarray:
    """``[N, K]`` int64 numpy copy of ``ids`` (a tensor on any device, or an array)."""
    if torch.is_tensor(ids):
        return ids.detach().to("cpu", torch.long).numpy()
    return np.asarray(ids, dtype=np.int64)


def expert_load(ids, num_experts: int) -> torch.Tensor:
    """``[E]`` tokens routed to each expert (dropped ``-1`` slots ignored)."""
    ids = _as_ids(ids).reshape(-1)
    return torch.bincount(ids[ids >= 0], minlength=num_experts)


def load_max_over_mean(ids, num_experts: int) -> float:
    """max / mean expert load of one batch (1.0 = perfectly balanced; 0 when nothing is routed)."""
    load = expert_load(ids, num_experts).double()
    mean = load.mean()
    return float(load.max() / mean) if mean > 0 else 0.0


def gpus_visited(ids, gpu_table, replica_policy: str = DEFAULT_REPLICA_POLICY,
                 topology: Topology | dict | None = None) -> torch.Tensor:
    """``[N, G]`` bool: the GPUs each token of the batch is served on (on ``ids``' device).

    Args:
        ids: ``[N, K]`` chosen experts (``-1`` ignored).
        gpu_table: ``[G, S]`` expert ids per GPU slot.
        replica_policy: how a token picks among replicas (the plan's ``replica_policy``).
        topology: the plan's nodes (:func:`~routelens.placement.traffic.plan_topology`); None = one node.

    Raises:
        PlanError: a chosen expert is on no GPU, or the policy is unknown.
    """
    table = np.asarray(gpu_table, dtype=np.int64)
    _, dest = route_tokens(_as_numpy_ids(ids), table, replica_policy, topology)
    visited = torch.from_numpy(visited_from_dest(dest, table.shape[0]))
    return visited.to(ids.device) if torch.is_tensor(ids) else visited


def _batch_hits(ids: np.ndarray, gpu_table, replica_policy: str, topology) -> np.ndarray:
    """``[G, G]`` tokens of the batch starting on GPU ``a`` that GPU ``b`` serves (``traffic.hit_matrix``)."""
    table = np.asarray(gpu_table, dtype=np.int64)
    source, dest = route_tokens(ids, table, replica_policy, topology)
    return hit_matrix(source, dest, table.shape[0])


def gpus_per_token(ids, gpu_table, replica_policy: str = DEFAULT_REPLICA_POLICY,
                   topology: Topology | dict | None = None) -> float:
    """Mean distinct GPUs a token is served on (the quantity C2R and GPU limits cut); 0 for no tokens.

    Arguments as :func:`gpus_visited`.
    """
    ids = _as_numpy_ids(ids)
    return float(_batch_hits(ids, gpu_table, replica_policy, topology).sum()) / ids.shape[0] if ids.shape[0] else 0.0


def gpu_recv(ids, gpu_table, replica_policy: str = DEFAULT_REPLICA_POLICY,
             topology: Topology | dict | None = None) -> torch.Tensor:
    """``[G]`` int64 token copies each GPU receives from the other GPUs in one batch's dispatch.

    Arguments as :func:`gpus_visited`.
    """
    hits = _batch_hits(_as_numpy_ids(ids), gpu_table, replica_policy, topology)
    return torch.from_numpy(hits.sum(0) - np.diag(hits))


def routing_stats(ids, num_experts: int, gpu_table=None, replica_policy: str = DEFAULT_REPLICA_POLICY,
                  topology: Topology | dict | None = None) -> dict[str, float]:
    """The costs of one layer's choice for one batch, as plain floats.

    Args:
        ids: ``[N, K]`` chosen experts (``-1`` = dropped).
        num_experts: ``E`` (for the load statistics).
        gpu_table: ``[G, S]`` placement of the layer, or None for the load statistics only.
        replica_policy, topology: the plan's replica policy and nodes (see :func:`gpus_visited`).

    Returns:
        ``load_max_over_mean``, ``dropped_fraction`` (slots ``-1``), and with a ``gpu_table``
        ``gpus_per_token``, ``busiest_gpu_recv`` and ``mean_gpu_recv`` (copies received from other
        GPUs, in units of ``N / G`` tokens) — the cost model's ``gpus_per_token`` and
        ``busiest_gpu_recv`` of the same batch.
    """
    ids_np = _as_numpy_ids(ids)
    stats = {
        "load_max_over_mean": load_max_over_mean(ids_np, num_experts),
        "dropped_fraction": float((ids_np < 0).mean()) if ids_np.size else 0.0,
    }
    if gpu_table is not None and ids_np.shape[0]:
        hits = _batch_hits(ids_np, gpu_table, replica_policy, topology)
        num_tokens, num_gpus = ids_np.shape[0], hits.shape[0]
        recv = (hits.sum(0) - np.diag(hits)) / (num_tokens / num_gpus)
        stats["gpus_per_token"] = float(hits.sum()) / num_tokens
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
