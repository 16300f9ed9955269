"""Hypergraph-partitioning baseline with Mt-KaHyPar (optional dependency ``mtkahypar``).

Experts are vertices and every token is a hyperedge over its top-k experts (identical hyperedges
are merged into one weighted edge). Partitioning the experts into ``G`` blocks minimising the
connectivity-minus-one objective ``km1 = Σ_tokens (λ(t) - 1)`` — ``λ(t)`` the number of blocks a
token touches — minimises exactly the extra GPUs per token, i.e. dispatch fan-out. It ignores
the straggler: blocks are balanced by expert count (``"unit"`` weights, exact slot counts) or by
load (``"load"`` weights, then repaired to exact slot counts), not by what each GPU receives.

References:
    Gottesbüren, Heuer, Maas, Sanders, Schlag, "Scalable High-Quality Hypergraph Partitioning",
    ACM TOPC 2024 (Mt-KaHyPar). https://github.com/kahypar/mt-kahypar
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..errors import InputError, RoutelensError
from ..graphs import coactivation_counts
from ..parallel import thread_budget
from .baselines import replica_counts, slots_per_gpu
from .replicas import fill_slots

INSTALL_HINT = "pip install 'routelens[partition]' (or pip install mtkahypar)"
KAHYPAR_MAX_TOKENS = 16384
"""Tokens Mt-KaHyPar partitions at most per layer (a seeded subsample above): its deterministic preset
takes seconds per layer beyond this (11 s for 32,768 tokens of top-8 over 128 experts, one thread)."""


class MissingDependencyError(RoutelensError):
    """An optional package a method needs is not installed."""


def mtkahypar_available() -> bool:
    try:
        import mtkahypar  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=1)
def _initializer():
    try:
        import mtkahypar
    except ImportError as exc:
        raise MissingDependencyError(f"the kahypar baseline needs Mt-KaHyPar: {INSTALL_HINT}") from exc
    # the deterministic preset partitions the same whatever the thread count, so a worker process
    # of a parallel run takes its share of the cores (routelens.parallel) and still equals a serial run
    return mtkahypar, mtkahypar.initialize(max(1, min(thread_budget(), 8)), False)


def token_hyperedges(topk_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct token expert-sets and how many tokens have each: ``(edges [U, k], counts [U])``.

    Rows are sorted; tokens with dropped slots (``-1``) keep their remaining experts (padded with
    ``-1``). Hyperedges of one expert cannot be cut and are left out.
    """
    ids = np.sort(np.asarray(topk_ids, dtype=np.int64), axis=1)
    edges, counts = np.unique(ids, axis=0, return_counts=True)
    pins = (edges >= 0).sum(1)
    keep = pins >= 2
    return edges[keep], counts[keep]


def kahypar_partition(topk_ids: np.ndarray, num_experts: int, block_sizes: np.ndarray,
                      node_weights: np.ndarray | None = None, epsilon: float = 0.03, seed: int = 0) -> np.ndarray:
    """``[E]`` block of each expert from Mt-KaHyPar (km1, deterministic preset).

    Args:
        topk_ids: ``[T, k]`` expert ids (fit tokens).
        block_sizes: ``[G]`` experts per block when ``node_weights`` is None (met exactly).
        node_weights: ``[E]`` positive integer weights (e.g. loads); blocks then balance weight
            within ``epsilon`` and sizes are not guaranteed.

    Raises:
        MissingDependencyError: mtkahypar is not installed.
    """
    mtk, init = _initializer()
    num_blocks = int(len(block_sizes))
    if num_blocks == 1:
        return np.zeros(num_experts, dtype=np.int64)
    edges, counts = token_hyperedges(topk_ids)
    hyperedges = [row[row >= 0].tolist() for row in edges]
    mtk.set_seed(int(seed))
    context = init.context_from_preset(mtk.PresetType.DETERMINISTIC)
    context.logging = False
    if node_weights is None:
        context.set_partitioning_parameters(num_blocks, 0.0, mtk.Objective.KM1)
        context.set_individual_target_block_weights([int(s) for s in block_sizes])
        weights = [1] * num_experts
    else:
        weights = np.maximum(np.round(np.asarray(node_weights, dtype=np.float64)), 1).astype(np.int64).tolist()
        context.set_partitioning_parameters(num_blocks, float(epsilon), mtk.Objective.KM1)
    if not hyperedges:  # no token uses two experts: any balanced split is optimal
        hyperedges, counts = [[0, 0]][:0], np.zeros(0, dtype=np.int64)
    graph = init.create_hypergraph(context, num_experts, len(hyperedges), hyperedges, weights,
                                   [int(c) for c in counts])
    partitioned = graph.partition(context)
    return np.array([partitioned.block_id(v) for v in range(num_experts)], dtype=np.int64)


def kahypar_table(topk_ids: np.ndarray, num_experts: int, num_gpus: int, redundant: int = 0,
                  weights: str = "unit", seed: int = 0) -> np.ndarray:
    """``[G, S]`` Mt-KaHyPar km1 placement of one layer.

    ``weights="unit"`` partitions experts into blocks of exactly ``E/G`` (pure min-cut);
    ``weights="load"`` balances load (tokens per expert) instead and then moves the experts least
    tied to their block until every GPU has its slot count. Redundant slots take replicas of
    the heaviest experts (EPLB's rule), placed by :func:`~routelens.placement.replicas.fill_slots`
    (least-loaded GPU with room that lacks the expert; one move makes room when none does).
    """
    if weights not in ("unit", "load"):
        raise InputError(f"kahypar weights must be 'unit' or 'load', got '{weights}'")
    ids = np.asarray(topk_ids, dtype=np.int64)
    slots = slots_per_gpu(num_experts, num_gpus, redundant)
    load = np.bincount(ids[ids >= 0], minlength=num_experts).astype(np.float64)
    counts = replica_counts(load, num_gpus * slots, max_replicas=num_gpus) if redundant else np.ones(num_experts, dtype=np.int64)
    sizes = np.full(num_gpus, num_experts // num_gpus)
    sizes[: num_experts % num_gpus] += 1
    node_weights = None if weights == "unit" else load * (num_experts / max(load.sum(), 1.0)) * 100
    block = kahypar_partition(ids, num_experts, sizes, node_weights, seed=seed)
    if not np.array_equal(np.bincount(block, minlength=num_gpus), sizes):
        block = repair_block_sizes(block, sizes, coactivation_counts(ids, num_experts))
    table = np.full((num_gpus, slots), -1, dtype=np.int64)
    for g in range(num_gpus):
        members = np.flatnonzero(block == g)
        table[g, : members.size] = members
    extra = np.repeat(np.arange(num_experts), counts - 1)
    return fill_slots(table, extra, load / counts) if extra.size else table


def repair_block_sizes(block: np.ndarray, sizes: np.ndarray, coact: np.ndarray) -> np.ndarray:
    """Move experts from over-full to under-full blocks until block ``g`` has ``sizes[g]`` experts.

    Each move takes, from the most over-full block, the expert with the least co-activation with
    the rest of its block and puts it into the under-full block it co-activates with most.

    Args:
        block: ``[E]`` block of each expert; sizes: ``[G]`` wanted sizes (sum ``E``);
        coact: ``[E, E]`` co-activation counts (diagonal ignored).
    """
    block = np.array(block, dtype=np.int64, copy=True)
    num_blocks = len(sizes)
    affinity = np.array(coact, dtype=np.float64, copy=True)
    np.fill_diagonal(affinity, 0)
    while True:
        have = np.bincount(block, minlength=num_blocks)
        over = have - sizes
        if not (over > 0).any():
            return block
        src = int(np.argmax(over))
        members = np.flatnonzero(block == src)
        to_block = np.stack([affinity[:, block == b].sum(1) for b in range(num_blocks)], axis=1)  # [E, G]
        e = members[int(np.argmin(to_block[members, src]))]
        room = np.flatnonzero(over < 0)
        dst = room[int(np.argmax(to_block[e, room]))]
        block[e] = dst
