"""Filling free expert slots with copies of experts so that no GPU holds an expert twice.

Every placement method ends with the same step: some copies of experts (all of them for a packing
baseline, the extra replicas for a partition, the duplicates EPLB left on one GPU) still need a
GPU. :func:`fill_slots` is that step, once for all methods. Its rule:

1. Copies go heaviest first (``copy_weight``, stable on ties).
2. A copy goes to the least-loaded GPU that has a free slot and does not hold its expert
   (lowest index on ties) — the longest-processing-time rule with EPLB's no-twice constraint.
3. Near the end every GPU with a free slot may already hold the expert (say ``e``). Then one
   move makes room: an expert ``f`` leaves a full GPU ``g`` that lacks ``e`` for a GPU ``h`` with
   a free slot that lacks ``f``, and ``e`` takes ``f``'s slot on ``g``. Among all such moves the
   one with the lowest resulting load on the busier of ``g`` and ``h`` wins (then lowest ``g``,
   slot, ``h``).

Step 3 always finds a move when every expert has at most ``G`` copies, so the rule never fails:
``e`` has fewer than ``G`` copies placed, so some GPU ``g`` lacks it, and that GPU is full (else
step 2 would have used it); a GPU ``h`` with a free slot holds ``e`` and at most ``S - 2``
other experts, so at least two of ``g``'s ``S`` distinct experts are missing from ``h``.

Example (3 GPUs of 2 slots; GPU 2 has the only free slot and already holds expert 0):
    >>> fill_slots(np.array([[1, 2], [3, 4], [0, -1]]), np.array([0]), np.ones(5)).tolist()
    [[0, 2], [3, 4], [0, 1]]
"""

from __future__ import annotations

import numpy as np

from ..errors import PlanError


def fill_slots(table: np.ndarray, copies: np.ndarray, copy_weight: np.ndarray) -> np.ndarray:
    """Put ``copies`` into the free (``-1``) slots of ``table`` by the module's rule.

    Args:
        table: ``[G, S]`` expert ids, ``-1`` for a free slot; no expert twice on a GPU.
        copies: ``[n]`` expert ids to place, ``n`` = number of free slots.
        copy_weight: ``[E]`` load of one copy of each expert (GPU load = sum over its slots).

    Returns:
        A new ``[G, S]`` table with no free slot and no expert twice on a GPU; the experts already
        placed stay, except those step 3 moves to another GPU.

    Raises:
        PlanError: the copies do not match the free slots, the table already holds an expert twice
            on a GPU, or an expert would have more than ``G`` copies (no valid table exists).
    """
    table = np.array(table, dtype=np.int64, copy=True)
    copies = np.asarray(copies, dtype=np.int64).ravel()
    weight = np.asarray(copy_weight, dtype=np.float64)
    num_gpus, slots = table.shape
    free = int((table < 0).sum())
    if copies.size != free:
        raise PlanError(f"{copies.size} expert copies for {free} free slots")
    placed = table[table >= 0]
    total = np.bincount(np.r_[placed, copies], minlength=weight.size)
    if total.max(initial=0) > num_gpus:
        e = int(np.argmax(total))
        raise PlanError(f"expert {e} has {total[e]} copies but there are only {num_gpus} GPUs")
    holds = np.zeros((weight.size, num_gpus), dtype=bool)
    rows, _ = np.nonzero(table >= 0)
    holds[placed, rows] = True
    if holds.sum() != placed.size:
        raise PlanError("a GPU already holds an expert twice")
    gpu_load = np.where(table >= 0, weight[np.maximum(table, 0)], 0.0).sum(1)
    for e in copies[np.argsort(-weight[copies], kind="stable")]:
        room = (table < 0).any(1)
        key = np.where(room & ~holds[e], gpu_load, np.inf)
        g = int(np.argmin(key))
        if not np.isfinite(key[g]):
            g = _make_room(table, holds, gpu_load, int(e), weight)
        s = int(np.flatnonzero(table[g] < 0)[0])
        table[g, s] = e
        holds[e, g] = True
        gpu_load[g] += weight[e]
    return table


def _make_room(table: np.ndarray, holds: np.ndarray, gpu_load: np.ndarray, e: int, weight: np.ndarray) -> int:
    """Step 3: move one expert ``f`` from a full GPU ``g`` lacking ``e`` to a GPU with room; return ``g``.

    Updates ``table``, ``holds`` and ``gpu_load`` in place and leaves a free slot on ``g``.
    """
    room = np.flatnonzero((table < 0).any(1))
    lacking = np.flatnonzero(~holds[e])
    best: tuple | None = None
    for g in lacking:
        for s, f in enumerate(table[g].tolist()):
            for h in room:
                if holds[f, h]:
                    continue
                peak = max(gpu_load[g] - weight[f] + weight[e], gpu_load[h] + weight[f])
                key = (peak, int(g), s, int(h))
                if best is None or key < best:
                    best = key
    if best is None:  # impossible while every expert has at most G copies (module docstring)
        raise PlanError(f"no GPU can take a copy of expert {e}")
    _, g, s, h = best
    f = int(table[g, s])
    table[h, int(np.flatnonzero(table[h] < 0)[0])] = f
    table[g, s] = -1
    holds[f, g], holds[f, h] = False, True
    gpu_load[g] -= weight[f]
    gpu_load[h] += weight[f]
    return g
