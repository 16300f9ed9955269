"""Capacity-aware inference: cap every expert's load, dropping or rerouting the overflow.

He, Cai, Huang, Li, "Capacity-Aware Inference: Mitigating the Straggler Effect in Mixture of
Experts", arXiv:2503.05066 (v1: Token Drop and Token Reroute; later versions: Expanded Drop;
code: github.com/CASE-Lab-UMD/Capacity-Aware-MoE). Under expert parallelism the most loaded expert
sets the latency of the layer (the *straggler effect*). With ``T`` tokens in a forward pass, top-``K``
routing and ``E`` experts, each expert gets the capacity

    ``C = ceil(gamma * T * K / E)``          (``gamma``: the capacity factor)

* **Token drop**: an expert chosen by more than ``C`` tokens keeps the ``C`` with the highest
  routing scores; the others lose that expert (slot ``-1``, weight 0; the token's remaining weights
  are renormalised when the model renormalises; ``weights="keep"`` keeps their unconstrained
  weights instead). The paper's ``score`` strategy.
* **Token reroute**: each dropped assignment instead moves to the token's best-scoring expert that
  still has room and that the token does not already use. Assignments are placed in rounds: every
  overflowing slot proposes to its best such expert, each expert accepts its highest-scoring
  proposals up to its remaining room, the rest propose again. A slot is dropped only when no
  expert with room is left for it. The moved expert is weighted by the model's own score for it.

Both guarantee ``load[e] <= C`` for every expert. Capacity is a property of one forward pass: the
tokens passed in together are the batch that shares it.
"""

from __future__ import annotations

import math

import torch

from ..errors import InputError
from .scores import DROPPED, ranking_scores, rule_scores, topk_choice, weigh


def expert_capacity(num_tokens: int, top_k: int, num_experts: int, capacity_factor: float) -> int:
    """``C = ceil(gamma * T * K / E)``, at least 1 (the paper's per-expert capacity).

    Example:
        >>> expert_capacity(num_tokens=1000, top_k=2, num_experts=8, capacity_factor=1.25)
        313
    """
    if not capacity_factor > 0 or not math.isfinite(capacity_factor):
        raise InputError(f"--capacity-factor must be a positive number, got {capacity_factor}")
    return max(1, math.ceil(capacity_factor * num_tokens * top_k / num_experts - 1e-9))


def rank_within_expert(expert: torch.Tensor, priority: torch.Tensor, num_experts: int) -> torch.Tensor:
    """For assignments ``expert [P]`` with ``priority [P]``: each one's rank among its expert's (0 = best).

    Ties go to the earlier assignment (stable sorts), so results are deterministic.
    """
    by_priority = torch.argsort(-priority, stable=True)
    order = by_priority[torch.argsort(expert[by_priority], stable=True)]
    counts = torch.bincount(expert, minlength=num_experts)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device) - starts[expert[order]]
    return rank


def capacity_keep(ids: torch.Tensor, priority: torch.Tensor, capacity: int | torch.Tensor, num_experts: int) -> torch.Tensor:
    """``[N, K]`` bool: which assignments fit when each expert keeps its ``capacity`` best.

    Args:
        ids: ``[N, K]`` chosen experts (``-1`` slots are never kept).
        priority: ``[N, K]`` score of each assignment (higher stays).
        capacity: one capacity for all experts, or ``[E]`` room left per expert.
    """
    flat = ids.reshape(-1)
    valid = flat >= 0
    keep = torch.zeros_like(flat, dtype=torch.bool)
    if valid.any():
        experts = flat[valid]
        rank = rank_within_expert(experts, priority.reshape(-1)[valid], num_experts)
        room = capacity if not torch.is_tensor(capacity) else capacity[experts]
        keep[valid] = rank < room
    return keep.view_as(ids)


def capacity_drop_choose(logits: torch.Tensor, rule, capacity_factor: float,
                         weights: str = "renorm") -> tuple[torch.Tensor, torch.Tensor]:
    """Capacity-aware token drop of ``logits [N, E]`` (all ``N`` tokens share the capacity).

    Returns:
        ``(ids [N, K], weights [N, K])``; dropped slots are ``-1`` with weight 0.
    """
    select, gate = rule_scores(logits, rule)
    num_tokens, num_experts = select.shape
    capacity = expert_capacity(num_tokens, rule.top_k, num_experts, capacity_factor)
    ids = topk_choice(select, rule.top_k)
    priority = ranking_scores(logits, rule, select, gate).gather(1, ids.clamp_min(0))
    ids = ids.masked_fill(~capacity_keep(ids, priority, capacity, num_experts), DROPPED)
    return ids, weigh(logits, select, gate, ids, rule, weights)


def capacity_reroute_choose(logits: torch.Tensor, rule, capacity_factor: float,
                            weights: str = "renorm") -> tuple[torch.Tensor, torch.Tensor]:
    """Capacity-aware token reroute of ``logits [N, E]``: overflow goes to the best expert with room.

    Returns:
        ``(ids [N, K], weights [N, K])``; a slot is ``-1`` only if no expert had room for it.
    """
    select, gate = rule_scores(logits, rule)
    num_tokens, num_experts = select.shape
    k = rule.top_k
    capacity = expert_capacity(num_tokens, k, num_experts, capacity_factor)
    ranking = ranking_scores(logits, rule, select, gate)
    original = topk_choice(select, k)
    keep = capacity_keep(original, ranking.gather(1, original.clamp_min(0)), capacity, num_experts)
    used = torch.zeros_like(select, dtype=torch.bool)  # experts a token holds or was dropped from
    used.scatter_(1, original.clamp_min(0), original >= 0)
    used |= ~torch.isfinite(select)  # a group limit forbids these outright
    ids = original.masked_fill(~keep, DROPPED)
    room = capacity - torch.bincount(ids[ids >= 0], minlength=num_experts)
    pending_token, pending_slot = torch.nonzero((original >= 0) & ~keep, as_tuple=True)
    while pending_token.numel():
        candidates = select[pending_token].masked_fill(used[pending_token] | (room <= 0)[None, :], float("-inf"))
        best_score, best = candidates.max(dim=-1)
        placeable = torch.isfinite(best_score)
        if not placeable.any():
            break  # nothing with room is left for anyone still pending: they stay dropped
        pending_token, pending_slot, best = pending_token[placeable], pending_slot[placeable], best[placeable]
        # two pending slots of one token may propose the same expert: only the first competes
        pair = pending_token * num_experts + best
        sorted_pair, order = torch.sort(pair, stable=True)  # equal pairs keep their slot order
        unique = torch.zeros_like(placeable[placeable])
        unique[order] = torch.cat([sorted_pair.new_ones(1, dtype=torch.bool), sorted_pair[1:] != sorted_pair[:-1]])
        accepted = torch.zeros_like(unique)
        accepted[unique] = capacity_keep(best[unique, None], ranking[pending_token[unique], best[unique]][:, None],
                                         room, num_experts)[:, 0]
        token, slot, expert = pending_token[accepted], pending_slot[accepted], best[accepted]
        ids[token, slot] = expert
        used[token, expert] = True
        room -= torch.bincount(expert, minlength=num_experts)
        # every expert proposed to had room, so each round places at least one slot
        pending_token, pending_slot = pending_token[~accepted], pending_slot[~accepted]
    return ids, weigh(logits, select, gate, ids, rule, weights)
