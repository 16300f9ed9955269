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

:func:`gpu_share_choose` is an adaptive limit: instead of one ``M`` for every token, a token visits
a GPU only if that GPU holds at least ``min_share`` of its routing weight.

What happens to the experts a token loses on the GPUs it no longer visits (``fill``):

* ``"best"``: they are replaced by the best-scoring experts on the GPUs kept, so the token still
  uses ``K`` experts (DeepSeek-V2's rule: top-K among the experts of the chosen devices);
* ``"drop"``: they are dropped (slot ``-1``, weight 0) and the token keeps only its own top-K
  experts that lie on the GPUs kept. With ``weights="keep"`` the output is the unconstrained
  output minus exactly the dropped experts' contributions, the smallest change a GPU limit can
  make to a token; it also saves their expert compute. (routelens's variant, in the spirit of the
  capacity-aware token drop of arXiv:2503.05066.)
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from .options import GPU_FILLS, GPU_SCORES
from .scores import DROPPED, as_long_tensor, ranking_scores, rule_scores, topk_choice, weigh


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
    weights: str = "renorm",
    fill: str = "best",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-K routing of ``logits [N, E]`` restricted to the experts of ``max_gpus`` GPUs per token.

    Args:
        logits: ``[N, E]`` raw router logits.
        rule: the model's ``RoutingRule``.
        gpu_table: ``[G, S]`` the placement of this layer (replicas allowed).
        max_gpus: ``M``, GPUs a token may visit (``M * S >= K``).
        gpu_score: ``"max"`` (DeepSeek-V2) or ``"mass"`` (see the module docstring).
        weights: ``renorm`` (the model's rule on the new choice) or ``keep`` (every expert keeps its
            unconstrained weight; see :func:`~routelens.reroute.scores.finish_weights`).
        fill: ``"best"`` (replace lost experts by the best on the chosen GPUs) or ``"drop"``
            (keep only the token's own top-K experts on the chosen GPUs; see the module docstring).

    Returns:
        ``(ids [N, K] int64, weights [N, K] float32)`` in descending selection score; with
        ``fill="drop"`` the lost slots are ``-1`` (weight 0).

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
        # GPUs without any of the token's top-K tie at 0; they are picked only when the top-K spans
        # fewer than M GPUs, where the limit does not bind and the top-K is kept whatever they add.
        gpu_rank = gpu_mass(logits, rule, select, gate, table)
    chosen = torch.zeros_like(gpu_rank, dtype=torch.bool).scatter_(1, gpu_rank.topk(max_gpus, dim=-1).indices, True)
    return _fill_from_gpus(logits, rule, select, gate, table, chosen, weights, fill)


def gpu_mass(logits: torch.Tensor, rule, select: torch.Tensor, gate: torch.Tensor | None,
             table: torch.Tensor) -> torch.Tensor:
    """``[N, G]`` routing weight of each token's unconstrained top-K that each GPU holds."""
    unconstrained = topk_choice(select, rule.top_k)
    safe = unconstrained.clamp_min(0)
    top_weight = ranking_scores(logits, rule, select, gate).gather(1, safe).masked_fill(unconstrained < 0, 0.0)
    mass = torch.zeros_like(select).scatter_add_(1, safe, top_weight)  # [N, E]
    return mass[:, table].sum(dim=-1)


def _fill_from_gpus(logits, rule, select, gate, table, chosen_gpus: torch.Tensor, weights: str, fill: str = "best"):
    """The token's experts on its ``chosen_gpus [N, G]`` (bool): top-K among them (``best``), or its
    own top-K restricted to them (``drop``)."""
    if fill not in GPU_FILLS:
        raise InputError(f"unknown --gpu-fill '{fill}' (choose from {', '.join(GPU_FILLS)})")
    holds = holds_matrix(table, select.shape[1])
    allowed = (chosen_gpus.to(select.dtype) @ holds.to(select.dtype)) > 0  # [N, E]
    if fill == "best":
        ids = topk_choice(select.masked_fill(~allowed, float("-inf")), rule.top_k)
    else:
        ids = topk_choice(select, rule.top_k)
        ids = ids.masked_fill(~allowed.gather(1, ids.clamp_min(0)), DROPPED)
    return ids, weigh(logits, select, gate, ids, rule, weights)


def gpu_share_choose(
    logits: torch.Tensor,
    rule,
    gpu_table: np.ndarray | torch.Tensor,
    min_share: float,
    max_gpus: int | None = None,
    weights: str = "renorm",
    fill: str = "best",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive GPU limit: a token visits a GPU only if it holds ``min_share`` of its routing weight.

    For each token, the GPUs are ranked by the weight of the token's unconstrained top-K they hold
    (``mass``). A GPU holding less than ``min_share`` of that weight is dropped (its experts are
    replaced by the best experts of the GPUs kept), except the heaviest ``ceil(K / S)`` GPUs, which
    are always kept so that ``K`` experts fit; ``max_gpus`` optionally caps the count as well.

    A fixed limit ``M`` (:func:`gpu_limited_choose`) cuts every token to ``M`` GPUs, however much
    weight it loses there; a share threshold cuts only GPUs that carry little weight, so confident
    tokens shrink to one or two GPUs while spread-out tokens keep theirs. It is the Lagrangian of
    "fewest GPUs for the least routing weight lost" with one price per GPU (routelens's own
    variant of DeepSeek-V2's device-limited routing; not from a paper).

    Args:
        logits: ``[N, E]`` raw router logits.
        rule: the model's ``RoutingRule``.
        gpu_table: ``[G, S]`` placement of this layer.
        min_share: share in ``[0, 1]`` of a token's routing weight a GPU must hold to be visited.
        max_gpus: optional hard cap on GPUs per token.
        weights: ``renorm`` or ``keep`` (see :func:`~routelens.reroute.scores.finish_weights`).
        fill: ``"best"`` or ``"drop"`` (see the module docstring).

    Returns:
        ``(ids [N, K] int64, weights [N, K] float32)``; ``-1`` slots (weight 0) with ``fill="drop"``.
    """
    select, gate = rule_scores(logits, rule)
    table = as_long_tensor(gpu_table, select.device)
    num_gpus, slots = table.shape
    if not 0.0 <= min_share <= 1.0:
        raise InputError(f"--min-gpu-share must lie in [0, 1], got {min_share}")
    if max_gpus is not None and not 1 <= max_gpus <= num_gpus:
        raise InputError(f"--max-gpus {max_gpus} must lie in [1, {num_gpus}] for a {num_gpus}-GPU plan")
    fewest = min(num_gpus, -(-rule.top_k // slots))
    if max_gpus is not None and max_gpus < fewest:
        raise InputError(f"{max_gpus} GPU(s) of {slots} experts cannot hold a token's {rule.top_k} experts")
    mass = gpu_mass(logits, rule, select, gate, table)  # [N, G]
    share = mass / mass.sum(dim=-1, keepdim=True).clamp_min(1e-20)
    order = share.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(num_gpus, device=order.device).expand_as(order))
    chosen = (share >= min_share) & (share > 0) | (rank < fewest)
    if max_gpus is not None:
        chosen &= rank < max_gpus
    return _fill_from_gpus(logits, rule, select, gate, table, chosen, weights, fill)
