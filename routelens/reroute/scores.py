"""A family's routing rule, split into the two halves every re-routing policy needs.

A policy changes *which* experts a token uses, never how the model scores them. So each policy

1. asks :func:`rule_scores` for the selection scores (what the model ranks experts by: softmax or
   sigmoid affinity plus the selection bias, with the group limit applied) and the gate scores
   (what the chosen experts are weighted by), picks its own ``ids``, then
2. asks :func:`finish_weights` for the weights the model would give those ids (gather, renormalise
   over the kept experts when the model renormalises, routed scaling factor).

Both follow :class:`routelens.capture.adapters.RoutingRule` exactly, so a policy that keeps the
model's choice reproduces the model's weights. Dropped slots are ``-1`` in ``ids`` and weigh ``0``.
"""

from __future__ import annotations

import torch

from ..errors import InputError

DROPPED = -1  # id of a slot a capacity policy dropped (weight 0)


def rule_scores(logits: torch.Tensor, rule) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Selection and gate scores of ``logits [N, E]`` under ``rule`` (float32).

    Returns:
        ``(select [N, E], gate [N, E] | None)``. ``select`` ranks experts for the choice; experts a
        group limit forbids are ``-inf``. ``gate`` holds the scores chosen experts are weighted by
        (softmax or sigmoid affinity), or None when the rule weights by a softmax over the chosen
        logits only (``softmax_after_topk``: GPT-OSS, Granite-MoE, JetMoE).

    Raises:
        InputError: PhiMoE's SparseMixer, which has no score to re-rank by.
    """
    logits = logits.reshape(-1, logits.shape[-1]).float()
    if rule.scoring == "sparsemixer":
        raise InputError("re-routing policies are not defined for SparseMixer routing (PhiMoE)")
    if rule.scoring == "topk_sigmoid":
        return logits, torch.sigmoid(logits)
    if rule.softmax_after_topk:
        return logits, None
    if rule.scoring == "softmax":
        gate = torch.softmax(logits, dim=-1)
    elif rule.scoring == "sigmoid":
        gate = torch.sigmoid(logits)
    else:
        raise InputError(f"unknown routing scoring {rule.scoring!r}")
    select = gate if rule.bias is None else gate + rule.bias.to(gate.device).float().reshape(-1)
    if rule.n_group is not None and rule.n_group > 1 and rule.topk_group is not None:
        select = select.masked_fill(~group_allowed(select, rule), float("-inf"))
    return select, gate


def group_allowed(select: torch.Tensor, rule) -> torch.Tensor:
    """``[N, E]`` bool: experts in the ``topk_group`` groups the rule keeps (DeepSeek-V2/V3 group limit).

    Groups are ranked as :meth:`RoutingRule._group_limit` ranks them: by their best score (softmax,
    DeepSeek-V2 ``group_limited_greedy``) or the sum of their best two (sigmoid, DeepSeek-V3).
    """
    n, e = select.shape
    per_group = e // rule.n_group
    grouped = select.view(n, rule.n_group, per_group)
    if rule.scoring == "sigmoid":
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
    else:
        group_scores = grouped.max(dim=-1).values
    keep = group_scores.topk(rule.topk_group, dim=-1).indices
    mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
    return mask.repeat_interleave(per_group, dim=1)


def ranking_scores(logits: torch.Tensor, rule, select: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """``[N, E]`` scores that rank tokens *at one expert* (which overflow tokens go first).

    The gate score (softmax probability, sigmoid affinity) when the rule has one; a per-expert bias
    shifts a whole column, so it never changes the order within an expert. Rules that weight by a
    softmax over the chosen logits rank by the full softmax instead.
    """
    if gate is not None:
        return gate
    return torch.softmax(logits.reshape(select.shape).float(), dim=-1)


WEIGHTINGS = ("renorm", "keep")


def finish_weights(logits: torch.Tensor, gate: torch.Tensor | None, ids: torch.Tensor, rule,
                   reference_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The weights experts ``ids [N, k]`` get (``-1`` = dropped, weight 0), float32.

    Gather the gate scores (or the softmax over the chosen logits), normalise when the rule
    renormalises (``norm_topk_prob``), then apply ``routed_scaling_factor``.

    Args:
        reference_ids: where to take the normaliser from. None (``renorm``, the model's rule applied
            to the new choice): the kept experts' own scores, so they always sum to the model's total.
            The model's unconstrained ``[N, k]`` choice (``keep``): every expert gets exactly the
            weight the unconstrained router gives it, so a re-routed token loses the weight of the
            experts it lost instead of inflating the others (used by the ``--weights keep`` option).
    """
    kept = ids >= 0
    safe = ids.clamp_min(0)
    if gate is None:  # softmax over the chosen logits only (GPT-OSS, Granite-MoE, JetMoE)
        flat = logits.reshape(-1, logits.shape[-1]).float()
        chosen = flat.gather(1, safe).masked_fill(~kept, float("-inf"))
        if reference_ids is None:
            weights = torch.softmax(chosen, dim=-1).nan_to_num(0.0)  # the model's own op: bit-identical
        else:
            base = flat.gather(1, reference_ids.clamp_min(0)).masked_fill(reference_ids < 0, float("-inf"))
            weights = (chosen - torch.logsumexp(base, dim=-1, keepdim=True)).exp().nan_to_num(0.0)
        return weights.masked_fill(~kept, 0.0) * rule.routed_scaling_factor
    weights = gate.gather(1, safe).masked_fill(~kept, 0.0)
    if rule.norm_topk_prob:
        if reference_ids is None:
            norm = weights.norm(p=rule.norm_p, dim=-1, keepdim=True)
        else:
            norm = gate.gather(1, reference_ids.clamp_min(0)).masked_fill(reference_ids < 0, 0.0).norm(
                p=rule.norm_p, dim=-1, keepdim=True)
        weights = weights / norm.clamp_min(1e-20)
    return weights * rule.routed_scaling_factor


def weigh(logits: torch.Tensor, select: torch.Tensor, gate: torch.Tensor | None, ids: torch.Tensor, rule,
          weights: str = "renorm") -> torch.Tensor:
    """:func:`finish_weights` of a policy's choice under ``weights`` (``renorm`` or ``keep``)."""
    if weights == "renorm":
        return finish_weights(logits, gate, ids, rule)
    if weights == "keep":
        return finish_weights(logits, gate, ids, rule, reference_ids=topk_choice(select, rule.top_k))
    raise InputError(f"unknown --routing-weights '{weights}' (choose from {', '.join(WEIGHTINGS)})")


def as_long_tensor(values, device=None) -> torch.Tensor:
    """``values`` (tensor, numpy array or nested list) as an int64 tensor on ``device``."""
    if torch.is_tensor(values):
        return values.to(device=device if device is not None else values.device, dtype=torch.long)
    import numpy as np

    return torch.as_tensor(np.ascontiguousarray(values), dtype=torch.long, device=device)


def topk_choice(select: torch.Tensor, k: int) -> torch.Tensor:
    """``[N, k]`` ids of the ``k`` best finite selection scores (``-1`` where fewer are finite)."""
    values, ids = select.topk(k, dim=-1)
    return ids.masked_fill(~torch.isfinite(values), DROPPED)
