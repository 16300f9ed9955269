"""Plan-aware routing: each token uses experts on at most ``M`` GPUs of a placement.

DeepSeek-V2's *device-limited routing* (DeepSeek-AI, "DeepSeek-V2: A Strong, Economical, and
Efficient Mixture-of-Experts Language Model", arXiv:2405.04434, Sec. 2.1.3): "for each token, we
first select M devices that have experts with the highest affinity scores in them. Then, we
perform top-K selection among experts on these M devices." DeepSeek-V3 does the same per node
(node-limited routing). It is the plan-aware variant of C2R: the groups a token may draw from are
the GPUs of a placement, so a placement that puts co-activated experts together (``routelens
place``) makes the limit cheap in quality.

Two ways to pick the ``M`` GPUs (``gpu_score``):

* ``"max"``: DeepSeek-V2's rule, the GPUs holding the best single experts.
* ``"mass"``: the GPUs holding the most routing weight of the token's *unconstrained* top-K choice
  It keeps as much of the model's own choice as the limit
  allows, which tends to cost less quality at the same ``M``.

Whenever a token's unconstrained top-K already lies on at most ``M`` GPUs, both rules return
exactly that choice.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from .scores import as_long_tensor, finish_weights, ranking_scores, rule_scores, topk_choice

GPU_SCORES = ("max", "mass")


def holds_matrix(gpu_table: np.ndarray | torch.Tensor, num_experts: int) -> torch.Tensor:
    """``[G, E]`` bool: ``holds[g, e]`` when GPU ``g`` holds (a replica of) expert ``e``.

    Args:
        gpu_table: ``[G, S]`` expert id in each GPU slot (``Plan.gpu_experts[layer]``).
    """
    table = as_long_tensor(gpu_table)
    holds = torch.zeros(table.shape[0], num_experts, dtype=torch.bool, device=table.device)
    holds.scatter_(1, table, True)
    return holds


def gpu_limited_choose(
    logits: torch.Tensor,
    rule,
    gpu_table: np.ndarray | torch.Tensor,
    max_gpus: int,
    gpu_score: str = "max",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-K routing of ``logits [N, E]`` restricted to the experts of ``max_gpus`` GPUs per token.

    Args:
        logits: ``[N, E]`` raw router logits.
        rule: the model's ``RoutingRule``.
        gpu_table: ``[G, S]`` the placement of this layer (replicas allowed).
        max_gpus: ``M``, GPUs a token may visit (``M * S >= K``).
        gpu_score: ``"max"`` (DeepSeek-V2) or ``"mass"`` (see the module docstring).

    Returns:
        ``(ids [N, K] int64, weights [N, K] float32)`` in descending selection score.

    Raises:
        InputError: ``M`` out of range, too few slots on ``M`` GPUs for ``K`` experts, an unknown
            ``gpu_score``, or a table for another number of experts.
    """
    select, gate = rule_scores(logits, rule)
    num_tokens, num_experts = select.shape
    k = rule.top_k
    table = as_long_tensor(gpu_table, select.device)
    num_gpus, slots = table.shape
    if int(table.max()) >= num_experts or int(table.min()) < 0:
        raise InputError(f"placement holds expert ids outside [0, {num_experts})")
    if not 1 <= max_gpus <= num_gpus:
        raise InputError(f"--max-gpus {max_gpus} must lie in [1, {num_gpus}] for a {num_gpus}-GPU plan")
    if max_gpus * slots < k:
        raise InputError(f"{max_gpus} GPU(s) of {slots} experts cannot hold a token's {k} experts; raise --max-gpus")
    if gpu_score not in GPU_SCORES:
        raise InputError(f"unknown GPU score '{gpu_score}' (choose from {', '.join(GPU_SCORES)})")
    if gpu_score == "max":
        gpu_rank = select[:, table].amax(dim=-1)  # [N, G] best expert on each GPU
    else:
        unconstrained = topk_choice(select, k)
        safe = unconstrained.clamp_min(0)
        top_weight = ranking_scores(logits, rule, select, gate).gather(1, safe).masked_fill(unconstrained < 0, 0.0)
        mass = torch.zeros_like(select).scatter_add_(1, safe, top_weight)  # [N, E]
        # GPUs without any of the token's top-K tie at 0; they are picked only when the top-K spans
        # fewer than M GPUs, where the limit does not bind and the top-K is kept whatever they add.
        gpu_rank = mass[:, table].sum(dim=-1)  # [N, G]
    chosen_gpus = gpu_rank.topk(max_gpus, dim=-1).indices  # [N, M]
    holds = holds_matrix(table, num_experts)
    allowed = holds[chosen_gpus].any(dim=1)  # [N, E]
    ids = topk_choice(select.masked_fill(~allowed, float("-inf")), k)
    return ids, finish_weights(logits, gate, ids, rule)
