"""Data types of the router adapters: what a router decided, the rule it follows, where to hook it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

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
class RoutingRule:
    """A family's routing rule: ``logits [N, E] -> (ids [N, k], weights [N, k])``.

    ``scoring`` values:

    * ``"softmax"``: ``p = softmax(logits)``; choose the top-k of ``p + bias``; weights ``p[ids]``
      (Mixtral, Qwen, OLMoE, DeepSeek-V2, Ernie, HunYuan, MiniMax, DBRX, Switch). With
      ``n_group`` it is DeepSeek-V2's ``group_limited_greedy``: keep the ``topk_group`` groups with
      the largest max probability, zero the rest.
    * ``"sigmoid"``: ``s = sigmoid(logits)``; choose the top-k of ``s + bias``; weights ``s[ids]``
      (DeepSeek-V3, GLM4-MoE, Dots1). With ``n_group`` it is DeepSeek-V3's group limit: keep the
      ``topk_group`` groups with the largest sum of their top-2 ``s + bias``, mask the rest to -inf.
    * ``"topk_sigmoid"``: top-k of the raw logits, weights ``sigmoid(logits[ids])`` (Llama4).
    * ``"sparsemixer"``: PhiMoE's SparseMixer at inference (top-2 only): the first expert is the argmax,
      its weight the softmax over logits within ``2 * jitter_eps`` (relative) of the max; the second is
      the argmax of the rest, weighted the same way among the rest.

    ``softmax_after_topk=True`` (with ``scoring="softmax"``): top-k of the raw logits, weights
    ``softmax(logits[ids])`` over the k chosen only (GPT-OSS, Granite-MoE, JetMoE).

    Then, when ``norm_topk_prob``: ``weights /= weights.norm(p=norm_p)`` (``norm_p=1``: divide by
    the sum); finally ``weights *= routed_scaling_factor``.

    ``norm_p`` (DBRX's ``moe_normalize_expert_weights``) and ``jitter_eps`` (PhiMoE) extend the
    common fields; both default to no-ops.
    """

    scoring: str
    num_experts: int
    top_k: int
    norm_topk_prob: bool
    routed_scaling_factor: float = 1.0
    n_group: int | None = None
    topk_group: int | None = None
    bias: torch.Tensor | None = None
    softmax_after_topk: bool = False
    norm_p: float = 1.0
    jitter_eps: float = 0.0

    def choose(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference re-implementation: ``[N, E]`` logits -> (ids ``[N, k]`` int64, weights ``[N, k]`` float32).

        Computed in float32; the order of ids within a row may differ from the model's (compare as sets).
        Capacity limits (Switch, NLLB-MoE) are not applied: every token gets its k experts.
        """
        logits = logits.reshape(-1, logits.shape[-1]).float()
        k = self.top_k
        if self.scoring == "sparsemixer":
            return _sparsemixer(logits, self.jitter_eps, k)
        if self.scoring == "topk_sigmoid":
            top_logits, ids = logits.topk(k, dim=-1)
            return ids, torch.sigmoid(top_logits) * self.routed_scaling_factor
        if self.softmax_after_topk:
            top_logits, ids = logits.topk(k, dim=-1)
            weights = torch.softmax(top_logits, dim=-1)
        else:
            if self.scoring == "softmax":
                scores = torch.softmax(logits, dim=-1)
            elif self.scoring == "sigmoid":
                scores = torch.sigmoid(logits)
            else:
                raise ValueError(f"unknown routing scoring {self.scoring!r}")
            for_choice = scores if self.bias is None else scores + self.bias.to(scores.device).float().reshape(-1)
            if self.n_group is not None and self.n_group > 1 and self.topk_group is not None:
                for_choice = self._group_limit(for_choice)
            ids = for_choice.topk(k, dim=-1)[1]
            weights = scores.gather(1, ids)
        if self.norm_topk_prob:
            weights = weights / weights.norm(p=self.norm_p, dim=-1, keepdim=True).clamp_min(1e-20)
        return ids, weights * self.routed_scaling_factor

    def _group_limit(self, for_choice: torch.Tensor) -> torch.Tensor:
        n, e = for_choice.shape
        grouped = for_choice.view(n, self.n_group, e // self.n_group)
        if self.scoring == "sigmoid":  # DeepSeek-V3: sum of the top-2 per group, others -inf
            group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
            fill = float("-inf")
        else:  # DeepSeek-V2 group_limited_greedy: max per group, others 0
            group_scores = grouped.max(dim=-1).values
            fill = 0.0
        group_idx = group_scores.topk(self.topk_group, dim=-1)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1.0).bool()
        score_mask = group_mask.unsqueeze(-1).expand(n, self.n_group, e // self.n_group).reshape(n, e)
        return for_choice.masked_fill(~score_mask, fill)


def _sparsemixer(logits: torch.Tensor, jitter_eps: float, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PhiMoE SparseMixer, inference path (https://huggingface.co/papers/2409.12136)."""
    if top_k != 2:
        raise ValueError("sparsemixer routing is defined for top_k == 2 only")

    def pick(scores):
        threshold, best = scores.max(dim=-1, keepdim=True)
        factor = scores.abs().clamp(min=threshold)
        masked = scores.masked_fill(((threshold - scores) / factor) > (2 * jitter_eps), float("-inf"))
        return best, torch.softmax(masked, dim=-1).gather(-1, best)

    first, w_first = pick(logits)
    second, w_second = pick(torch.scatter(logits, -1, first, float("-inf")))
    return torch.cat([first, second], dim=-1), torch.cat([w_first, w_second], dim=-1)


@dataclass
class RouterSite:
    """One MoE layer's hook point.

    Attributes:
        name: module path of the hooked module (the Trace's layer key), e.g. ``"model.layers.3.mlp.gate"``.
        module: the module to hook (``register_forward_hook(fn, with_kwargs=True)``).
        layer_index: decoder layer index (Switch: decoder blocks follow the encoder blocks).
        num_experts, top_k: routed experts per layer and per token.
        rule: the family's routing rule (reference re-implementation).

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
