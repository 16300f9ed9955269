"""What re-routing adds to the model's routing rule: ranking within an expert, ``renorm`` / ``keep`` weights.

A policy changes *which* experts a token uses, never how the model scores them. So each policy

1. asks :func:`~routelens.routing_rule.rule_scores` for the selection scores (what the model ranks
   experts by) and the gate scores (what the chosen experts are weighted by), picks its own ``ids``,
   then
2. asks :func:`weigh` for the weights the model would give those ids
   (:func:`~routelens.routing_rule.finish_weights`, under ``--routing-weights renorm`` or ``keep``).

The rule itself lives once, in :mod:`routelens.routing_rule` (capture uses the same functions), so
a policy that keeps the model's choice reproduces the model's weights. Dropped slots are ``-1`` in
``ids`` and weigh ``0``.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..routing_rule import DROPPED, finish_weights, group_allowed, rule_scores, topk_choice
from .options import WEIGHTINGS

__all__ = ["DROPPED", "WEIGHTINGS", "as_long_tensor", "finish_weights", "group_allowed", "ranking_scores",
           "rule_scores", "topk_choice", "weigh"]


def ranking_scores(logits: torch.Tensor, rule, select: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """``[N, E]`` scores that rank tokens *at one expert* (which overflow tokens go first).

    The gate score (softmax probability, sigmoid affinity) when the rule has one; a per-expert bias
    shifts a whole column, so it never changes the order within an expert. Rules that weight by a
    softmax over the chosen logits rank by the full softmax instead.
    """
    if gate is not None:
        return gate
    return torch.softmax(logits.reshape(select.shape).float(), dim=-1)


def weigh(logits: torch.Tensor, select: torch.Tensor, gate: torch.Tensor | None, ids: torch.Tensor, rule,
          weights: str = "renorm") -> torch.Tensor:
    """Weights ``[N, K]`` of a policy's choice ``ids [N, K]`` under ``weights``.

    ``renorm``: the model's rule applied to the new choice (what the papers do). ``keep``: every
    expert keeps the weight the unconstrained router gives it (normalised over the model's own
    top-k, :func:`~routelens.routing_rule.finish_weights` with ``reference_ids``).
    """
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
