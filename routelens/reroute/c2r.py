"""Collaboration-constrained routing (C2R).

Zhang, Li, Peng, Qiu, Chen, "Advancing MoE Efficiency: A Collaboration-Constrained Routing (C2R)
Strategy for Better Expert Parallelism Design", NAACL 2025, arXiv:2504.01337 (code:
github.com/UNITES-Lab/c2r-moe). The paper's definition, which this module follows:

1. *Expert profiling.* Run the model on calibration text and count, per layer, how often experts
   ``i`` and ``j`` are chosen for the same token: the collaboration matrix ``M [E, E]``. ``Top-T(i)``
   is the ``T`` experts with the largest ``M[i, j]``, ``j != i`` (the paper sorts ``argsort(-M)``
   with the diagonal set to ``-1``).
2. *Routing.* Each token takes its top-1 expert ``i`` as usual, then its other ``K - 1`` experts are
   the best-scoring among ``Top-T(i)`` only. Weights are the model's own scores of the chosen
   experts, renormalised when the model renormalises.

The paper applies it during (continual) training; at inference on a model trained without it, it
is a constraint with a quality cost, which ``routelens reroute-eval`` measures.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from .scores import DROPPED, as_long_tensor, rule_scores, weigh


def collaborators(counts: np.ndarray, top_t: int) -> np.ndarray:
    """``Top-T(i)`` for every expert: ``[E, T]`` int64, most collaborative first.

    Args:
        counts: ``[E, E]`` co-activation counts of one layer (``counts[i, j]``: tokens that chose
            both ``i`` and ``j``; the diagonal is ignored), e.g. from
            ``routelens.graphs.coactivation_counts``.
        top_t: ``T``, collaborators kept per expert (``1 <= T <= E - 1``).

    Ties are broken by the lower expert id (a stable sort), so the result is deterministic.

    Raises:
        InputError: ``T`` out of range, or ``counts`` not square.

    Example:
        >>> counts = np.array([[0, 5, 1], [5, 0, 2], [1, 2, 0]])
        >>> collaborators(counts, 1).tolist()
        [[1], [0], [1]]
    """
    from ..graphs import top_t_partners

    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise InputError(f"co-activation counts must be a square [E, E] matrix, got shape {counts.shape}")
    num_experts = counts.shape[0]
    if not 1 <= top_t <= num_experts - 1:
        raise InputError(f"C2R group size T={top_t} must lie in [1, {num_experts - 1}] for {num_experts} experts")
    # the paper's profiling.py: argsort(-M) with the diagonal at -1, so an expert is never its own collaborator
    return top_t_partners(counts, top_t)


def c2r_choose(logits: torch.Tensor, rule, collaborator_ids: torch.Tensor,
               weights: str = "renorm") -> tuple[torch.Tensor, torch.Tensor]:
    """C2R routing of ``logits [N, E]``: top-1 expert, then ``K - 1`` of its ``Top-T`` collaborators.

    Args:
        logits: ``[N, E]`` raw router logits.
        rule: the model's ``RoutingRule`` (scoring, bias, group limit, renormalisation, scaling).
        collaborator_ids: ``[E, T]`` from :func:`collaborators`, with ``T >= K - 1``.
        weights: ``renorm`` (the paper: the model's rule on the new choice) or ``keep`` (see
            :func:`~routelens.reroute.scores.finish_weights`).

    Returns:
        ``(ids [N, K] int64, weights [N, K] float32)``; ``ids[:, 0]`` is the top-1 expert, the rest
        are in descending score. A slot is ``-1`` only where fewer than ``K - 1`` collaborators are
        allowed at all (a group limit masked them).

    Raises:
        InputError: ``T < K - 1`` or a table for another number of experts.
    """
    select, gate = rule_scores(logits, rule)
    num_experts, k = select.shape[1], rule.top_k
    table = as_long_tensor(collaborator_ids, select.device)
    if table.ndim != 2 or table.shape[0] != num_experts:
        raise InputError(f"C2R collaborator table has shape {tuple(table.shape)}, expected [{num_experts}, T]")
    if table.shape[1] < k - 1:
        raise InputError(f"C2R group size T={table.shape[1]} is below K-1={k - 1}: a token could not get its {k} experts")
    top1 = select.argmax(dim=-1)  # [N]
    candidates = table[top1]  # [N, T]
    values, picked = select.gather(1, candidates).topk(k - 1, dim=-1)
    rest = candidates.gather(1, picked).masked_fill(~torch.isfinite(values), DROPPED)
    ids = torch.cat([top1[:, None], rest], dim=1)
    return ids, weigh(logits, select, gate, ids, rule, weights)
