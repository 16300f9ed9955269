"""Data types of the router adapters: what a router decided and where to hook it.

The rule a router follows is :class:`routelens.routing_rule.RoutingRule` (shared with re-routing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...routing_rule import RoutingRule  # the one routing rule, shared with re-routing


@dataclass
class RouterOutput:
    """One router call's decision, on the router's device.

    Attributes:
        topk_ids: ``[N, k]`` int64 experts chosen for ``N`` tokens, as the experts module receives
            them (order within a row is the model's; ``-1`` marks a slot dropped by a capacity limit).
        topk_weights: ``[N, k]`` weights the experts module receives (after renorm / scaling), in the
            dtype the model uses (compare in float32).
        logits: ``[N, E]`` raw router logits (pre-softmax/sigmoid, pre-bias), or None if unavailable.
    """

    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    logits: torch.Tensor | None


@dataclass
class RouterSite:
    """One MoE layer's hook point.

    Attributes:
        name: module path of the hooked module (the Trace's layer key), e.g. ``"model.layers.3.mlp.gate"``.
        module: the module to hook (``register_forward_hook(fn, with_kwargs=True)``).
        layer_index: decoder layer index (Switch: decoder blocks follow the encoder blocks).
        num_experts, top_k: routed experts per layer and per token.
        rule: the family's routing rule (:class:`~routelens.routing_rule.RoutingRule`).

    The base class handles the common transformers-5 router, whose forward returns
    ``(router_logits [N, E], topk_weights [N, k], topk_ids [N, k])``; families that differ subclass it.
    """

    name: str
    module: torch.nn.Module
    layer_index: int
    num_experts: int
    top_k: int
    rule: RoutingRule

    def unpack(self, args: tuple, kwargs: dict, output) -> RouterOutput:
        """The decision in a forward hook's ``output`` (no host copy, no GPU sync)."""
        logits, weights, ids = output[0], output[1], output[2]
        k = ids.shape[-1]
        return RouterOutput(ids.reshape(-1, k), weights.reshape(-1, k), logits.reshape(-1, logits.shape[-1]))

    def repack(self, args, kwargs, output, topk_ids: torch.Tensor, topk_weights: torch.Tensor):
        """``output`` with ``topk_ids`` / ``topk_weights`` (``[N, k]``) in place of the model's choice.

        Returning it from the forward hook makes the experts receive that choice. Ids of ``-1`` drop
        their slot (sent to a valid expert with weight 0). The unpacked choice repacks bit-identically.
        """
        weights, ids = output[1], output[2]
        topk_ids, topk_weights = sendable(topk_ids, topk_weights)
        new_ids = like(topk_ids, ids).reshape(ids.shape)
        new_weights = like(topk_weights, weights).reshape(weights.shape)
        return replace_items(output, {1: new_weights, 2: new_ids})


@dataclass
class ModelRouting:
    """Every MoE layer of a model, in model order.

    Attributes:
        family: ``config.model_type``.
        sites: one :class:`RouterSite` per MoE layer; dense layers are skipped.
        experts_modules: per site, the module that receives the choice, usually called as
            ``experts(hidden [N, H], top_k_index [N, k], top_k_weights [N, k])`` (see the family
            notes in ``docs/capture-families.md`` for the few that differ).
    """

    family: str
    sites: list[RouterSite]
    experts_modules: list[torch.nn.Module] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Layer keys, in model order."""
        return [site.name for site in self.sites]


# ---------------------------------------------------------------------------- helpers for sites
def like(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``value`` on ``reference``'s device, in its dtype."""
    return value.to(device=reference.device, dtype=reference.dtype)


def sendable(topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A choice experts modules can take: ``-1`` (dropped) slots go to expert 0 with weight 0.

    A zero weight makes that slot add exactly nothing to the token's output, so a dropped slot is
    dropped, at the price of computing it.
    """
    dropped = topk_ids < 0
    return topk_ids.clamp_min(0), topk_weights.masked_fill(dropped.to(topk_weights.device), 0)


def replace_items(output, replacements: dict[int, object]):
    """A copy of the tuple ``output`` with items replaced by position (same tuple type)."""
    items = list(output)
    for position, value in replacements.items():
        items[position] = value
    return tuple(items) if type(output) is tuple else type(output)(items)
