"""What the policies are fitted on: co-activation counts and a placement, from calibration routing.

C2R takes its collaborator groups from the co-activation analysis of a calibration run, and the
GPU-limited policy and every GPU metric need a placement. Both come from the other stages of
routelens when they are installed (``routelens.graphs.coactivation_counts``, the
``routelens.placement`` optimizer); the small stand-ins here keep re-routing usable on its own and
are used only when those are missing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import InputError
from ..plan import Plan


def coactivation_counts(topk_ids: np.ndarray, num_experts: int) -> np.ndarray:
    """``[E, E]`` int64: tokens that chose both ``i`` and ``j`` (diagonal: tokens that chose ``i``).

    Uses ``routelens.graphs.coactivation_counts`` when available; ``-1`` (dropped) slots are ignored.
    """
    ids = np.asarray(topk_ids).astype(np.int64)
    try:
        from ..graphs import coactivation_counts as graphs_counts  # type: ignore[attr-defined]
    except ImportError:
        graphs_counts = None
    if graphs_counts is not None and not (ids < 0).any():
        return np.asarray(graphs_counts(ids, num_experts), dtype=np.int64)
    member = np.zeros((ids.shape[0], num_experts), dtype=np.float64)
    rows = np.repeat(np.arange(ids.shape[0]), ids.shape[1])
    flat = ids.reshape(-1)
    keep = flat >= 0
    member[rows[keep], flat[keep]] = 1.0
    return np.rint(member.T @ member).astype(np.int64)


def fit_plan(topk_ids: Mapping[str, np.ndarray], num_experts: int, num_gpus: int, seed: int = 0) -> Plan:
    """A placement of each layer's experts on ``num_gpus`` GPUs from calibration routing.

    Uses the routelens placement optimizer (``routelens.placement``) when it is installed;
    otherwise :func:`coactivation_partition`, a balanced min-cut of the co-activation graph.

    Args:
        topk_ids: layer -> ``[T, K]`` experts chosen on calibration tokens.
    """
    if num_experts % num_gpus:
        raise InputError(f"{num_experts} experts cannot be split evenly over --gpus {num_gpus}")
    plan = _placement_optimizer_plan(topk_ids, num_experts, num_gpus, seed)
    if plan is not None:
        return plan
    tables = {}
    for layer, ids in topk_ids.items():
        counts = coactivation_counts(ids, num_experts)
        tables[layer] = coactivation_partition(counts, num_gpus, seed=seed)
    return Plan(tables, num_experts, method="coactivation-mincut", meta={"note": "routelens.reroute stand-in placement"})


def _placement_optimizer_plan(topk_ids, num_experts, num_gpus, seed) -> Plan | None:
    try:
        from .. import placement  # noqa: F401
        from ..placement import optimize  # type: ignore[attr-defined]
    except ImportError:
        return None
    from ..trace import write_trace

    layers = list(topk_ids)
    num_tokens = next(iter(topk_ids.values())).shape[0]
    top_k = next(iter(topk_ids.values())).shape[1]
    header = {"model": {"id": "calibration", "family": "", "config": {}}, "layers": layers,
              "num_experts": num_experts, "top_k": top_k, "has_logits": False, "settings": {}}
    weights = [np.full(ids.shape, 1.0 / top_k, np.float32) for ids in topk_ids.values()]
    with tempfile.TemporaryDirectory(prefix="routelens-calib-") as tmp:
        trace = write_trace(Path(tmp) / "calib", header, np.zeros(num_tokens, np.int32), np.zeros(num_tokens, np.int32),
                            np.arange(num_tokens, dtype=np.int32), [np.asarray(a) for a in topk_ids.values()], weights)
        return optimize(trace, num_gpus=num_gpus, seed=seed)


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
