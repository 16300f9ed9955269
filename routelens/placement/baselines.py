"""Baseline placements, one function each, for one MoE layer: ``[G, S]`` tables of expert ids.

A table has ``G`` rows (GPUs) of ``S`` slots; ``G·S = E + R`` with ``R`` redundant slots holding
extra replicas. No GPU holds the same expert twice.

- :func:`contiguous_table` — physical slot ``p`` holds expert ``p mod E``: experts
  ``[g·S, (g+1)·S)`` on GPU ``g``, redundant slots wrapping around. The layout SGLang and vLLM
  start from (their "trivial" expert location).
- :func:`random_table` — a seeded random permutation of the same physical experts.
- :func:`greedy_table` — load-balanced greedy packing: replicas to the heaviest experts, then
  heaviest first into the least-loaded GPU (longest-processing-time rule).
- :func:`eplb_table` — DeepSeek EPLB (:mod:`.eplb`), hierarchical or global.
- :func:`kahypar_table` — Mt-KaHyPar hypergraph partition (:mod:`.hypergraph`).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..plan import Plan
from .eplb import rebalance_experts, replicate_experts
from .replicas import fill_slots


def slots_per_gpu(num_experts: int, num_gpus: int, redundant: int = 0) -> int:
    """``S = (E + R) / G``; raises InputError when that is not a whole number or too small."""
    if num_gpus < 1:
        raise InputError(f"need at least one GPU, got {num_gpus}")
    if redundant < 0:
        raise InputError(f"redundant experts must be >= 0, got {redundant}")
    physical = num_experts + redundant
    if physical % num_gpus:
        lo = (-num_experts) % num_gpus
        raise InputError(f"{num_experts} experts + {redundant} redundant cannot fill {num_gpus} GPUs evenly "
                         f"(use --redundant {lo} or {lo + num_gpus}, ...)")
    slots = physical // num_gpus
    if redundant and slots > num_experts:
        raise InputError(f"{slots} slots per GPU but only {num_experts} experts: a GPU would hold one twice")
    return slots


def contiguous_table(num_experts: int, num_gpus: int, redundant: int = 0) -> np.ndarray:
    """``[G, S]`` physical slot ``p = g·S + s`` holds expert ``p mod E``.

    Example:
        >>> contiguous_table(4, 2).tolist()
        [[0, 1], [2, 3]]
        >>> contiguous_table(4, 3, redundant=2).tolist()
        [[0, 1], [2, 3], [0, 1]]
    """
    slots = slots_per_gpu(num_experts, num_gpus, redundant)
    return (np.arange(num_gpus * slots, dtype=np.int64) % num_experts).reshape(num_gpus, slots)


def random_table(num_experts: int, num_gpus: int, redundant: int = 0, seed: int = 0) -> np.ndarray:
    """``[G, S]`` the contiguous physical experts in a seeded random order (duplicates separated)."""
    rng = np.random.default_rng(seed)
    table = rng.permutation(contiguous_table(num_experts, num_gpus, redundant).ravel()).reshape(num_gpus, -1)
    return separate_duplicates(table, np.ones(num_experts))


def replica_counts(load: np.ndarray, num_physical: int, max_replicas: int | None = None) -> np.ndarray:
    """``[E]`` replicas per expert: EPLB's rule (each extra replica to the highest load per replica).

    ``max_replicas`` (the number of GPUs) caps an expert's replicas so that no GPU needs two.
    """
    load = np.asarray(load, dtype=np.float64)
    if max_replicas is None:
        return replicate_experts(load[None, :], num_physical)[2][0]
    if num_physical > load.size * max_replicas:
        raise InputError(f"{num_physical} slots cannot hold {load.size} experts at most {max_replicas} times each")
    counts = np.ones(load.size, dtype=np.int64)
    for _ in range(num_physical - load.size):
        per_replica = np.where(counts < max_replicas, load / counts, -np.inf)
        counts[int(np.argmax(per_replica))] += 1
    return counts


def greedy_table(load: np.ndarray, num_gpus: int, redundant: int = 0) -> np.ndarray:
    """``[G, S]`` load-balanced greedy packing (co-activation blind).

    Replicas go to the experts with the highest load per replica; then physical experts, heaviest
    first (load / replicas), each into the least-loaded GPU with a free slot that does not already
    hold that expert (:func:`~routelens.placement.replicas.fill_slots`).

    Args:
        load: ``[E]`` tokens routed to each expert (fit tokens).
    """
    load = np.asarray(load, dtype=np.float64)
    num_experts = load.size
    slots = slots_per_gpu(num_experts, num_gpus, redundant)
    counts = replica_counts(load, num_gpus * slots, max_replicas=num_gpus)
    empty = np.full((num_gpus, slots), -1, dtype=np.int64)
    return fill_slots(empty, np.repeat(np.arange(num_experts), counts), load / counts)


def eplb_table(load: np.ndarray, num_gpus: int, redundant: int = 0, num_nodes: int = 1,
               num_groups: int = 1) -> np.ndarray:
    """``[G, S]`` DeepSeek EPLB: hierarchical when ``num_groups % num_nodes == 0``, else global.

    An expert gets at most ``G`` replicas (EPLB itself has no cap), so a table with no expert
    twice on a GPU exists. EPLB may still put two replicas of one expert on one GPU; those are
    swapped apart afterwards (:func:`separate_duplicates`).
    """
    load = np.asarray(load, dtype=np.float64)
    num_experts = load.size
    slots = slots_per_gpu(num_experts, num_gpus, redundant)
    if num_gpus % num_nodes:
        raise InputError(f"{num_gpus} GPUs cannot be split evenly over {num_nodes} nodes")
    phy2log, _, logcnt = rebalance_experts(load[None, :], num_gpus * slots, num_groups, num_nodes, num_gpus,
                                          max_replicas=num_gpus)
    table = phy2log[0].reshape(num_gpus, slots)
    return separate_duplicates(table, load / logcnt[0])


def separate_duplicates(table: np.ndarray, replica_weight: np.ndarray) -> np.ndarray:
    """Move replicas so that no GPU holds the same expert twice.

    The second and later copies of an expert on one GPU are taken out and put back by
    :func:`~routelens.placement.replicas.fill_slots`: their GPU keeps the free slots, so each copy
    trades places with an expert of another GPU, the trade that leaves the busier of the two GPUs
    least loaded. This always succeeds when no expert has more copies than there are GPUs.

    Args:
        table: ``[G, S]`` expert ids, possibly with an expert twice in a row.
        replica_weight: ``[E]`` load of one replica of each expert.

    Returns:
        A ``[G, S]`` table with the same copies of each expert, none twice on a GPU.

    Raises:
        PlanError: an expert has more copies than there are GPUs.
    """
    table = np.array(table, dtype=np.int64, copy=True)
    moved: list[int] = []
    for row in table:
        seen: set[int] = set()
        for s, e in enumerate(row.tolist()):
            if e in seen:
                moved.append(e)
                row[s] = -1
            seen.add(e)
    if not moved:
        return table
    return fill_slots(table, np.asarray(moved, dtype=np.int64), replica_weight)


def contiguous_plan(layers: list[str], num_experts: int, num_gpus: int, redundant: int = 0,
                    topology=None) -> Plan:
    """The contiguous baseline as a :class:`~routelens.plan.Plan` (what the runner compares against)."""
    table = contiguous_table(num_experts, num_gpus, redundant)
    meta = {"topology": topology.to_json()} if topology is not None else {}
    return Plan(gpu_experts={layer: table.copy() for layer in layers}, num_experts=num_experts,
                num_nodes=topology.num_nodes if topology is not None else 1,
                replica_policy="nearest-then-least-loaded" if redundant else "first", method="contiguous", meta=meta)
