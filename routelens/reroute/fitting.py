"""What the policies are fitted on: co-activation counts and a placement, from calibration routing.

C2R takes its collaborator groups from the co-activation analysis of a calibration run
(``routelens.graphs``), and the GPU policies and every GPU metric need a placement: the routelens
placement optimizer (``routelens.placement``) when it is installed, else the balanced min-cut
stand-in :func:`coactivation_partition` here.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..errors import InputError
from ..plan import Plan


def coactivation_counts(topk_ids: np.ndarray, num_experts: int) -> np.ndarray:
    """``[E, E]`` int64 C2R collaboration matrix of one layer (``routelens.graphs.coactivation_counts``).

    ``counts[i, j]``: tokens that chose both ``i`` and ``j``; the diagonal holds the load; ``-1``
    (dropped) slots are ignored.
    """
    from ..graphs import coactivation_counts as graphs_counts

    return np.asarray(graphs_counts(np.asarray(topk_ids).astype(np.int64), num_experts), dtype=np.int64)


def fit_plan(topk_ids: Mapping[str, np.ndarray], num_experts: int, num_gpus: int, seed: int = 0,
             config: Mapping[str, Any] | None = None) -> Plan:
    """A placement of each layer's experts on ``num_gpus`` GPUs (one node) from calibration routing.

    Uses the routelens placement optimizer (``routelens.placement.optimizer.optimize_layer``: the
    cost model's dispatch + compute bottleneck, co-activation aware) when it is installed; otherwise
    :func:`coactivation_partition`, a balanced min-cut of the co-activation graph.

    Args:
        topk_ids: layer -> ``[T, K]`` experts chosen on calibration tokens.
        config: the model's config summary (``hidden_size``, ``moe_intermediate_size``) for the cost model.
    """
    if num_experts % num_gpus:
        raise InputError(f"{num_experts} experts cannot be split evenly over --gpus {num_gpus}")
    try:
        from ..placement.cost import CostModel
        from ..placement.optimizer import optimize_layer
        from ..placement.topology import make_topology
    except ImportError:
        optimize_layer = None
    if optimize_layer is not None:
        topology = make_topology(num_gpus=num_gpus)
        cost = CostModel.for_model(dict(config or {}), topology)
        tables = {layer: optimize_layer(np.asarray(ids), num_experts, num_gpus, cost, seed=seed).table
                  for layer, ids in topk_ids.items()}
        return Plan(tables, num_experts, method="routelens", meta={"seed": seed, "fit": "reroute calibration"})
    tables = {layer: coactivation_partition(coactivation_counts(ids, num_experts), num_gpus, seed=seed)
              for layer, ids in topk_ids.items()}
    return Plan(tables, num_experts, method="coactivation-mincut", meta={"note": "routelens.reroute stand-in placement"})


def contiguous_table(num_experts: int, num_gpus: int) -> np.ndarray:
    """``[G, E/G]``: expert ``e`` on GPU ``e // (E/G)``, the layout serving engines use by default."""
    return np.arange(num_experts, dtype=np.int64).reshape(num_gpus, num_experts // num_gpus)


def coactivation_partition(counts: np.ndarray, num_gpus: int, seed: int = 0, sweeps: int = 20) -> np.ndarray:
    """``[G, E/G]`` balanced partition of experts that keeps co-activated experts together.

    Maximises the co-activation weight inside GPUs (equivalently, minimises the cut, which is what a
    token's extra GPU visits cost) under equal GPU sizes, then evens the expert load across GPUs:
    greedy seeding (heaviest pair first) followed by pairwise swap refinement (Kernighan-Lin style)
    until no swap improves. A stand-in for the routelens placement optimizer.
    """
    counts = np.asarray(counts, dtype=np.float64)
    num_experts = counts.shape[0]
    per_gpu = num_experts // num_gpus
    weight = counts.copy()
    np.fill_diagonal(weight, 0.0)
    load = np.diag(counts).copy()
    rng = np.random.default_rng(seed)
    # seed: experts by load, each to the open GPU it co-activates with most (ties: the lightest GPU)
    gpu_of = np.full(num_experts, -1)
    size = np.zeros(num_gpus, dtype=int)
    gpu_load = np.zeros(num_gpus)
    for e in np.argsort(-load, kind="stable"):
        affinity = np.array([weight[e, gpu_of == g].sum() for g in range(num_gpus)])
        affinity[size >= per_gpu] = -np.inf
        best = np.flatnonzero(affinity == affinity.max())
        g = best[np.argmin(gpu_load[best])]
        gpu_of[e], size[g], gpu_load[g] = g, size[g] + 1, gpu_load[g] + load[e]
    # refine: swap two experts of different GPUs when it raises the weight kept inside GPUs
    for _ in range(sweeps):
        improved = False
        for a in rng.permutation(num_experts):
            member = np.eye(num_gpus, dtype=np.float64)[gpu_of]  # [E, G]
            to_gpu = weight @ member  # [E, G] weight from each expert to each GPU
            ga = gpu_of[a]
            gb = gpu_of
            # gain of swapping a with every b: a moves to gb, b moves to ga
            gain = (to_gpu[a, gb] - to_gpu[a, ga]) + (to_gpu[np.arange(num_experts), ga] - to_gpu[np.arange(num_experts), gb]) - 2 * weight[a]
            gain[gb == ga] = -np.inf
            b = int(np.argmax(gain))
            if gain[b] > 1e-9:
                gpu_of[a], gpu_of[b] = gpu_of[b], ga
                improved = True
        if not improved:
            break
    table = np.stack([np.sort(np.flatnonzero(gpu_of == g)) for g in range(num_gpus)])
    return table.astype(np.int64)
