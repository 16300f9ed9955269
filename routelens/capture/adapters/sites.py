"""Router sites of the families whose router does not return ``(logits, weights [N, k], ids [N, k])``.

* Llama4: the router returns ``(scores [N, E], logits [N, E])``, ``scores`` being sigmoid of the
  top-k logits scattered into zeros; the block scales every token's input by ``scores`` and runs
  every expert on it.
* DBRX: the router returns logits only; the block picks the top-k itself, so the site is the experts
  module, whose inputs are the real choice.
* JetMoE: the gate returns its choice already sorted by expert
  ``(index_sorted_experts, batch_index, batch_gates, expert_size, logits)``, for the MoE MLP and for
  the mixture-of-attention heads alike.
* Switch Transformers: top-1 with a per-sequence capacity; the router returns a one-hot dispatch mask
  (all zeros for a dropped token), the top-1 probability and the logits.
* NLLB-MoE: top-2 with capacity; the router returns the top-1 mask and a dense ``[N, E]`` combine
  weight matrix.

Each site turns its router's native output into ``[N, k]`` ids and weights and back, exactly: ids
come from the model's own tensors, or from the very top-k call the model made on the same logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import RouterOutput, RouterSite, like, sendable


@dataclass
class Llama4Site(RouterSite):
    """``Llama4Router``: output ``(scores [N, E], logits [N, E])``; unchosen scores are exactly 0."""

    def unpack(self, args, kwargs, output) -> RouterOutput:
        scores, logits = output[0], output[1]
        # the router's own call (torch.topk(router_logits, top_k, dim=1)) on the same logits: same ids
        ids = torch.topk(logits, self.top_k, dim=1).indices
        return RouterOutput(ids, scores.gather(1, ids), logits)

    def repack(self, args, kwargs, output, topk_ids, topk_weights):
        scores, logits = output[0], output[1]
        topk_ids, topk_weights = sendable(topk_ids, topk_weights)
        ids = topk_ids.to(device=scores.device, dtype=torch.int64).reshape(scores.shape[0], -1)
        # scatter_add: a repeated id (a dropped slot pointed at a kept expert, weight 0) adds nothing
        new_scores = torch.zeros_like(scores).scatter_add_(1, ids, like(topk_weights, scores).reshape(ids.shape))
        return (new_scores, logits) + tuple(output[2:])


def experts_call(args: tuple, kwargs: dict, names=("hidden_states", "top_k_index", "top_k_weights")):
    """``(hidden, top_k_index, top_k_weights)`` of an experts call, passed positionally or by keyword."""
    values = list(args[:3])
    for name in names[len(values):]:
        values.append(kwargs[name])
    return values[0], values[1], values[2]


@dataclass
class ExpertsInputSite(RouterSite):
    """The experts module itself (DBRX): its inputs ``(hidden, top_k_index, top_k_weights)`` are the choice.

    ``router_linear`` (the router's ``nn.Linear``) gives the logits again from the same hidden states
    (a bit-identical ``[N, H] x [H, E]`` product); ``repack`` runs the experts again on the new choice,
    so re-routing these layers costs their experts twice.
    """

    router_linear: torch.nn.Module | None = None

    def unpack(self, args, kwargs, output) -> RouterOutput:
        hidden, ids, weights = experts_call(args, kwargs)
        k = ids.shape[-1]
        logits = None
        if self.router_linear is not None:
            logits = self.router_linear(hidden.reshape(-1, hidden.shape[-1]))
        return RouterOutput(ids.reshape(-1, k), weights.reshape(-1, k), logits)

    def repack(self, args, kwargs, output, topk_ids, topk_weights):
        hidden, ids, weights = experts_call(args, kwargs)
        topk_ids, topk_weights = sendable(topk_ids, topk_weights)
        # forward, not __call__: calling the module would run this very hook again
        return self.module.forward(hidden, like(topk_ids, ids).reshape(ids.shape),
                                   like(topk_weights, weights).reshape(weights.shape))


@dataclass
class JetMoeSite(RouterSite):
    """``JetMoeTopKGating``: output ``(index_sorted_experts, batch_index, batch_gates, expert_size, logits)``.

    ``index_sorted_experts[j]`` is the flat ``token * k + slot`` position of the j-th assignment in
    expert order and ``batch_gates[j]`` its weight, so scattering the gates back by that index gives the
    ``[N, k]`` weights; the ids are the gate's own ``logits.topk(k, dim=1)`` on the same logits.
    """

    def unpack(self, args, kwargs, output) -> RouterOutput:
        index_sorted, _, batch_gates, _, logits = output[:5]
        ids = logits.topk(self.top_k, dim=1).indices
        weights = torch.empty(ids.numel(), dtype=batch_gates.dtype, device=batch_gates.device)
        weights.scatter_(0, index_sorted, batch_gates)
        return RouterOutput(ids, weights.view(ids.shape), logits)

    def repack(self, args, kwargs, output, topk_ids, topk_weights):
        index_sorted, batch_index, batch_gates, _, logits = output[:5]
        topk_ids, topk_weights = sendable(topk_ids, topk_weights)
        ids = like(topk_ids, index_sorted).reshape(-1, self.top_k)
        # the gate's own grouping steps; expert_size is a host list there too (it syncs in the model as well)
        expert_size = torch.bincount(ids.flatten(), minlength=self.num_experts).tolist()
        _, new_index_sorted = ids.flatten().sort(0)
        new_batch_index = new_index_sorted.div(self.top_k, rounding_mode="trunc")
        new_batch_gates = like(topk_weights, batch_gates).flatten()[new_index_sorted]
        return (new_index_sorted, new_batch_index, new_batch_gates, expert_size, logits) + tuple(output[5:])


@dataclass
class SwitchSite(RouterSite):
    """``SwitchTransformersTop1Router``: output ``(dispatch one-hot [B, S, E], top-1 prob [B, S, 1], logits)``.

    A token dropped by the capacity limit has an all-zero dispatch row: it is recorded as id ``-1`` with
    weight 0 (no expert processes it).
    """

    def unpack(self, args, kwargs, output) -> RouterOutput:
        dispatch, probs, logits = output[0], output[1], output[2]
        num_experts = dispatch.shape[-1]
        dispatch = dispatch.reshape(-1, num_experts)
        routed = dispatch.amax(dim=-1) > 0
        ids = torch.where(routed, dispatch.argmax(dim=-1), -1).unsqueeze(-1)
        weights = probs.reshape(-1, 1).masked_fill(~routed.unsqueeze(-1), 0)
        return RouterOutput(ids, weights, logits.reshape(-1, num_experts))

    def repack(self, args, kwargs, output, topk_ids, topk_weights):
        dispatch, probs = output[0], output[1]
        ids = topk_ids.to(device=dispatch.device, dtype=torch.int64).reshape(-1)
        routed = (ids >= 0).unsqueeze(-1)
        one_hot = torch.nn.functional.one_hot(ids.clamp_min(0), dispatch.shape[-1]) * routed
        new_probs = like(topk_weights, probs).reshape(probs.shape)
        return (like(one_hot, dispatch).reshape(dispatch.shape), new_probs) + tuple(output[2:])


@dataclass
class NllbMoeSite(RouterSite):
    """``NllbMoeTop2Router``: output ``(top-1 mask [N, E], combine weights [N, E], logits [N, E])``.

    The combine weights hold each token's (renormalised) top-2 probabilities at its experts and 0
    elsewhere, so the top-2 entries of that matrix are the choice; a slot dropped by the capacity limit
    has weight 0 and is recorded as id ``-1``.
    """

    def unpack(self, args, kwargs, output) -> RouterOutput:
        combine, logits = output[1], output[2]
        weights, ids = combine.topk(self.top_k, dim=-1)
        kept = weights > 0
        return RouterOutput(torch.where(kept, ids, -1), weights, logits)

    def repack(self, args, kwargs, output, topk_ids, topk_weights):
        top1_mask, combine = output[0], output[1]
        ids = topk_ids.to(device=combine.device, dtype=torch.int64)
        weights = like(topk_weights, combine).masked_fill(ids < 0, 0)
        new_combine = torch.zeros_like(combine).scatter_add_(1, ids.clamp_min(0), weights)
        new_top1 = torch.nn.functional.one_hot(ids[:, 0].clamp_min(0), combine.shape[-1]) * (ids[:, :1] >= 0)
        return (like(new_top1, top1_mask), new_combine) + tuple(output[2:])
