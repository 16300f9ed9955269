"""Which experts get the redundant slots, and on which GPU: greedy by the cost model.

EPLB (and every load-only method) gives the extra slots to the hottest experts and spreads their
copies by load. Under the ``nearest-then-least-loaded`` replica policy a replica can do more: a
token uses the copy on its own GPU, or on a GPU it is sent to anyway, so a replica placed next to
an expert's *collaborators* (the experts its tokens also use) saves whole copies in the dispatch,
not only compute. :func:`add_replicas` fills ``r`` free slots per GPU one replica at a time; each
step adds the ``(expert, GPU)`` replica that most lowers the estimated layer time on the fit tokens:

1. **Estimate every candidate at once** (:func:`replica_effects`). For each (token, slot) served
   by GPU ``h`` that is not the token's own GPU and serves no other slot of that token (the copy
   to ``h`` exists only for this expert), a replica of the expert on a GPU ``g`` that the token
   starts on or already visits removes that copy: ``saved[e, h, g]`` sums its link seconds. The
   same slots, and the slots whose token starts on ``g``, move their compute from ``h`` to ``g``.
   From these ``[E, G, G]`` tables every candidate's receive and compute per GPU follow, and the
   surrogate ``2·max recv + max compute + 2·mean recv`` ranks them.
2. **Score the best few exactly** (:data:`EXACT_CANDIDATES`; the optimizer uses 3 above 128 experts): the replica policy re-assigns every
   fit token and the cost model (:func:`~routelens.placement.cost.placement_objective`) scores the
   result; the best candidate is added (a slot must be filled even when nothing improves).

Example: 2 GPUs, experts 0, 1 on GPU 0 and 2, 3 on GPU 1, one free slot each; tokens starting on
GPU 1 use experts {0, 2}, so every one of them is sent to GPU 0 for expert 0 alone. A replica of 0
on GPU 1 serves them at home and their copies disappear; the slot on GPU 0 goes to the expert whose
replica there saves the most.
"""

from __future__ import annotations

import time

import numpy as np
from scipy import sparse

from ..errors import PlanError
from .cost import CostModel, layer_traffic, placement_objective
from .traffic import DEFAULT_REPLICA_POLICY, assign_replicas, gpus_visited

EXACT_CANDIDATES = 6
"""Candidates per step scored with the full cost model (the estimate ranks all of them); the
optimizer passes fewer for large expert counts (:func:`~.optimizer.default_exact_candidates`)."""


def complete_table(table: np.ndarray) -> np.ndarray:
    """``[G, S]`` ``table`` with each free slot (``-1``) filled by an expert already on that GPU.

    The result has the same expert holders (``holders[e, g]``) as the partial table, so the replica
    policy and the cost model see exactly the placement made so far.

    Raises:
        PlanError: a GPU has no expert at all (its free slots cannot be padded).
    """
    table = np.array(table, dtype=np.int64, copy=True)
    for row in table:
        free = row < 0
        if free.all():
            raise PlanError("a GPU holds no expert yet: place every expert once before adding replicas")
        row[free] = row[~free][0]
    return table


def replica_effects(topk_ids: np.ndarray, source_gpu: np.ndarray, dest_gpu: np.ndarray, num_experts: int,
                    link_seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What a replica of expert ``e`` on GPU ``g`` would change, for every ``(e, g)`` at once.

    Args:
        topk_ids: ``[T, k]`` expert ids (``-1`` = dropped slot).
        source_gpu: ``[T]`` GPU each token starts on.
        dest_gpu: ``[T, k]`` GPU serving each slot now (the replica policy's choice).
        num_experts: ``E``.
        link_seconds: ``[G, G]`` seconds one token takes from GPU ``a`` to ``b`` (0 on the diagonal).

    Returns:
        ``(saved [E, G, G], moved [E, G, G])``: ``saved[e, h, g]`` the receive seconds GPU ``h``
        loses, ``moved[e, h, g]`` the token-expert pairs that leave ``h`` for ``g``.
    """
    ids = np.asarray(topk_ids, dtype=np.int64)
    dest = np.asarray(dest_gpu, dtype=np.int64)
    source = np.asarray(source_gpu, dtype=np.int64)
    num_tokens, _ = ids.shape
    num_gpus = link_seconds.shape[0]
    valid = ids >= 0
    remote = valid & (dest != source[:, None])
    sharing = (dest[:, :, None] == dest[:, None, :]) & valid[:, None, :]
    solo = remote & (sharing.sum(2) == 1)  # the copy to this GPU exists for this slot alone
    near = gpus_visited(dest, num_gpus)
    near[np.arange(num_tokens), source] = True  # [T, G] GPUs a replica would be free to use
    rows, cols = np.nonzero(solo)
    key = ids[rows, cols] * num_gpus + dest[rows, cols]
    seconds = link_seconds[source[rows], dest[rows, cols]]
    # saved[key] += near[token] * seconds, moved[key] += near[token], over the solo slots: as sparse
    # [E*G, T] matrices times near [T, G] (a dense [slots, G] gather would be 100+ MB at T = 32k)
    shape_kt = (num_experts * num_gpus, num_tokens)
    near_f = near.astype(np.float64)
    saved = np.asarray(sparse.csr_matrix((seconds, (key, rows)), shape=shape_kt) @ near_f)
    moved = np.asarray(sparse.csr_matrix((np.ones(key.size), (key, rows)), shape=shape_kt) @ near_f)
    # a slot sent elsewhere although other slots share that GPU still moves to a replica at home
    rows, cols = np.nonzero(remote & ~solo)
    key = ids[rows, cols] * num_gpus + dest[rows, cols]
    np.add.at(moved, (key, source[rows]), 1.0)
    shape = (num_experts, num_gpus, num_gpus)
    return saved.reshape(shape), moved.reshape(shape)


def add_replicas(table: np.ndarray, topk_ids: np.ndarray, cost: CostModel, policy: str = DEFAULT_REPLICA_POLICY,
                 source_gpu: np.ndarray | None = None, num_experts: int | None = None,
                 exact_candidates: int = EXACT_CANDIDATES, deadline: float | None = None) -> np.ndarray:
    """Fill the free slots (``-1``) of ``table`` with replicas, one at a time, greedily by the cost model.

    Args:
        table: ``[G, S]`` expert ids with ``-1`` for free slots; every expert on some GPU, none twice on one.
        topk_ids: ``[T, k]`` fit tokens' experts (``-1`` = dropped slot).
        cost: the cluster and token/expert sizes (``G`` GPUs).
        policy: the replica policy the plan will be served with.
        source_gpu: ``[T]`` where tokens start (default: evenly, like the cost model).
        num_experts: ``E`` (default: the largest id in ``table`` or ``topk_ids`` + 1).
        exact_candidates: candidates per step scored with the full cost model.
        deadline: ``time.perf_counter()`` value after which each step adds the estimate's best
            candidate without an exact score (the free slots must still be filled).

    Returns:
        ``[G, S]`` table without free slots; the experts already placed stay where they are.

    Raises:
        PlanError: a GPU holds no expert yet, or a free slot cannot take any expert (every expert
            already on that GPU).
    """
    from .traffic import token_source_gpu

    table = np.array(table, dtype=np.int64, copy=True)
    ids = np.asarray(topk_ids, dtype=np.int64)
    num_gpus = table.shape[0]
    if num_experts is None:
        num_experts = int(max(table.max(), ids.max(initial=-1))) + 1
    topo = cost.topology
    source = token_source_gpu(ids.shape[0], num_gpus) if source_gpu is None else np.asarray(source_gpu, dtype=np.int64)
    link_seconds = cost.token_bytes * topo.seconds_per_byte()[topo.link_class()]
    np.fill_diagonal(link_seconds, 0.0)
    pair_seconds = cost.expert_flops_per_token / (topo.gpu_tflops * 1e12)

    def evaluate(candidate: np.ndarray) -> tuple[float, np.ndarray]:
        dest = assign_replicas(ids, source, complete_table(candidate), policy, topo)
        traffic = layer_traffic(source, dest, topo, num_gpus)
        return placement_objective(traffic, cost), dest

    _, dest = evaluate(table)
    while (table < 0).any():
        holds = np.zeros((num_experts, num_gpus), dtype=bool)
        rows, _ = np.nonzero(table >= 0)
        holds[table[table >= 0], rows] = True
        room = (table < 0).any(1)
        allowed = ~holds & room[None, :]  # [E, G]
        if not allowed.any():
            raise PlanError("a free slot cannot take any expert: its GPU already holds every one")
        saved, moved = replica_effects(ids, source, dest, num_experts, link_seconds)
        estimate = _surrogate(ids, source, dest, num_experts, saved, moved, link_seconds, pair_seconds)
        estimate = np.where(allowed, estimate, np.inf)
        late = deadline is not None and time.perf_counter() > deadline
        order = np.argsort(estimate, axis=None, kind="stable")[: 1 if late else max(1, int(exact_candidates))]
        best = None
        for flat in order:
            e, g = divmod(int(flat), num_gpus)
            if not allowed[e, g]:
                continue
            candidate = table.copy()
            candidate[g, int(np.flatnonzero(candidate[g] < 0)[0])] = e
            value, candidate_dest = evaluate(candidate)
            if best is None or value < best[0] - 1e-15:
                best = (value, candidate, candidate_dest)
        table, dest = best[1], best[2]
    return table


def _surrogate(ids, source, dest, num_experts, saved, moved, link_seconds, pair_seconds) -> np.ndarray:
    """``[E, G]`` estimated ``2·max recv + max compute + 2·mean recv`` (seconds) after each candidate replica."""
    num_gpus = link_seconds.shape[0]
    valid = ids >= 0
    codes = source[:, None] * num_gpus + dest
    # one receive per (token, distinct remote GPU): dedupe each token's destinations
    key = np.where(valid & (dest != source[:, None]), codes, -1)
    key.sort(axis=1)
    first = key >= 0
    first[:, 1:] &= key[:, 1:] != key[:, :-1]
    hits = np.bincount(key[first], minlength=num_gpus * num_gpus).reshape(num_gpus, num_gpus)
    recv = (hits * link_seconds).sum(0)  # [G]
    compute = np.bincount(dest[valid], minlength=num_gpus) * pair_seconds
    new_recv = recv[None, None, :] - np.transpose(saved, (0, 2, 1))  # [E, g, h]
    shift = np.transpose(moved, (0, 2, 1)) * pair_seconds  # [E, g, h] pairs leaving h
    new_compute = compute[None, None, :] - shift
    gain = shift.sum(2)  # [E, g] pairs arriving on g
    index = np.arange(num_gpus)
    new_compute[:, index, index] += gain
    return 2 * new_recv.max(2) + new_compute.max(2) + 2 * new_recv.mean(2)
