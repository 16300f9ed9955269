"""Find the router of every MoE layer of a transformers model, and read / rewrite its decision exactly.

A *router site* is one module per MoE layer whose forward hook sees the routing decision the model
really used: which ``k`` experts each token goes to (``topk_ids: [N, k]``) and with which weights
(``topk_weights: [N, k]``). :func:`find_router_sites` walks a model, finds those modules by structure
(a parent block holding an ``experts`` module next to a router) and returns a :class:`ModelRouting`.
Each :class:`RouterSite` knows how to

* ``unpack`` a forward hook's ``(args, kwargs, output)`` into a :class:`RouterOutput` without copying
  to the host or synchronising the GPU, and
* ``repack`` a new choice into the module's native output, so a forward hook that returns it makes
  the model use that choice instead (in-model re-routing).

The choice is always read from what the model computed (router outputs or the experts' inputs),
never re-derived from logits, so biased, grouped or sigmoid routers (DeepSeek-V3, GLM4-MoE, Dots1,
Ernie-4.5) are recorded exactly. :class:`RoutingRule` is a separate reference re-implementation of
each family's rule, for re-routing policies that need to reproduce or alter it.

Supported families and how each is hooked: ``docs/capture-families.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import NotMoEError

__all__ = ["RouterOutput", "RoutingRule", "RouterSite", "ModelRouting", "find_router_sites", "NotMoEError"]


# ---------------------------------------------------------------------------- data types
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
        """``output`` with ``topk_ids`` / ``topk_weights`` (``[N, k]``) in place of the model's choice."""
        logits, weights, ids = output[0], output[1], output[2]
        new_ids = _like(topk_ids, ids).reshape(ids.shape)
        new_weights = _like(topk_weights, weights).reshape(weights.shape)
        return _replace(output, {1: new_weights, 2: new_ids})


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


# ---------------------------------------------------------------------------- helpers
def _like(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return value.to(device=reference.device, dtype=reference.dtype)


def _replace(output, replacements: dict[int, torch.Tensor]):
    """A copy of the tuple ``output`` with items replaced by position (same tuple type)."""
    items = list(output)
    for position, value in replacements.items():
        items[position] = value
    return tuple(items) if type(output) is tuple else type(output)(items)


_FIRST_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def _layer_index(name: str) -> int:
    match = _FIRST_INDEX.search(name)
    if match is None:
        raise NotMoEError(f"cannot tell the layer index of router module {name!r}")
    return int(match.group(1))


def _config_of(model: torch.nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        raise NotMoEError(f"{type(model).__name__} has no transformers config; cannot find its MoE routers")
    text = getattr(config, "get_text_config", None)
    return text(decoder=True) if callable(text) else config


def _attr(obj, *names, default=None):
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return default


# ---------------------------------------------------------------------------- rules per family
def _experts_and_k(router, config) -> tuple[int, int]:
    num_experts = _attr(router, "num_experts", default=_attr(config, "num_experts", "num_local_experts", "n_routed_experts"))
    top_k = _attr(router, "top_k", default=_attr(config, "num_experts_per_tok", "moe_k"))
    return int(num_experts), int(top_k)


def _softmax_rule(router, config, norm: bool | None = None) -> RoutingRule:
    """Softmax over all experts, top-k, optional renorm (``norm=None``: the router's ``norm_topk_prob``)."""
    num_experts, top_k = _experts_and_k(router, config)
    if norm is None:
        norm = bool(_attr(router, "norm_topk_prob", default=_attr(config, "norm_topk_prob", default=False)))
    return RoutingRule("softmax", num_experts, top_k, norm)


def _topk_softmax_rule(router, config) -> RoutingRule:
    """Top-k of the raw logits, softmax over the k chosen (GPT-OSS, Granite-MoE, JetMoE)."""
    num_experts, top_k = _experts_and_k(router, config)
    return RoutingRule("softmax", num_experts, top_k, False, softmax_after_topk=True)


def _deepseek_v2_rule(router, config) -> RoutingRule:
    num_experts, top_k = _experts_and_k(router, config)
    grouped = getattr(router, "topk_method", "greedy") == "group_limited_greedy"
    return RoutingRule(
        "softmax", num_experts, top_k, norm_topk_prob=False,  # the V2 router never renormalises
        routed_scaling_factor=float(router.routed_scaling_factor),
        n_group=router.num_group if grouped else None, topk_group=router.topk_group if grouped else None,
    )


def _sigmoid_bias_rule(router, config) -> RoutingRule:
    """DeepSeek-V3 / GLM4-MoE / Dots1: sigmoid scores, selection bias, group limit, renorm, scaling."""
    num_experts, top_k = _experts_and_k(router, config)
    return RoutingRule(
        "sigmoid", num_experts, top_k, norm_topk_prob=bool(router.norm_topk_prob),
        routed_scaling_factor=float(router.routed_scaling_factor),
        n_group=router.num_group, topk_group=router.topk_group, bias=router.e_score_correction_bias,
    )


def _ernie_rule(router, config) -> RoutingRule:
    num_experts, top_k = _experts_and_k(router, config)
    bias = router.moe_statics.e_score_correction_bias  # [1, E]
    return RoutingRule("softmax", num_experts, top_k, norm_topk_prob=True, bias=bias.reshape(-1))


def _phimoe_rule(router, config) -> RoutingRule:
    num_experts, top_k = _experts_and_k(router, config)
    return RoutingRule("sparsemixer", num_experts, top_k, False, jitter_eps=float(router.router_jitter_noise))


_RULES = {
    # model_type: rule builder(router, config)
    "mixtral": lambda r, c: _softmax_rule(r, c, norm=True),
    "minimax": lambda r, c: _softmax_rule(r, c, norm=True),
    "hunyuan_v1_moe": lambda r, c: _softmax_rule(r, c, norm=True),
    "qwen2_moe": _softmax_rule,
    "qwen3_moe": _softmax_rule,
    "qwen3_next": _softmax_rule,
    "olmoe": _softmax_rule,
    "deepseek_v2": _deepseek_v2_rule,
    "deepseek_v3": _sigmoid_bias_rule,
    "glm4_moe": _sigmoid_bias_rule,
    "dots1": _sigmoid_bias_rule,
    "ernie4_5_moe": _ernie_rule,
    "gpt_oss": _topk_softmax_rule,
    "granitemoe": _topk_softmax_rule,
    "granitemoeshared": _topk_softmax_rule,
    "phimoe": _phimoe_rule,
}


def _rule_for(family: str, router, config) -> RoutingRule:
    builder = _RULES.get(family)
    if builder is not None:
        return builder(router, config)
    if getattr(router, "e_score_correction_bias", None) is not None and hasattr(router, "num_group"):
        return _sigmoid_bias_rule(router, config)  # an unknown DeepSeek-V3 derivative
    return _softmax_rule(router, config)


# ---------------------------------------------------------------------------- discovery
_ROUTER_CHILDREN = ("gate", "router")


def _standard_router(block: torch.nn.Module):
    """``(router_name, router)`` if ``block`` holds ``experts`` next to a transformers-5 top-k router."""
    experts = getattr(block, "experts", None)
    if not isinstance(experts, torch.nn.Module):
        return None
    for child in _ROUTER_CHILDREN:
        router = getattr(block, child, None)
        if isinstance(router, torch.nn.Module) and re.search(r"(router|gate)$", type(router).__name__, re.I):
            return child, router
    return None


def find_router_sites(model: torch.nn.Module) -> ModelRouting:
    """Every MoE layer's router site, in model order.

    Args:
        model: a transformers model (``...ForCausalLM``, ``...Model``, or a seq2seq MoE model).

    Returns:
        a :class:`ModelRouting`; dense layers (DeepSeek ``first_k_dense_replace``, Qwen2-MoE
        ``mlp_only_layers``, Llama4 interleaving...) have no router and are skipped.

    Raises:
        NotMoEError: a dense model, or an unknown family where no router was found (one line,
            naming the model type).
    """
    config = _config_of(model)
    family = str(getattr(config, "model_type", type(model).__name__))
    sites: list[RouterSite] = []
    experts_modules: list[torch.nn.Module] = []
    for block_name, block in model.named_modules():
        found = _standard_router(block)
        if found is None:
            continue
        child, router = found
        name = f"{block_name}.{child}" if block_name else child
        rule = _rule_for(family, router, config)
        sites.append(RouterSite(name, router, _layer_index(name), rule.num_experts, rule.top_k, rule))
        experts_modules.append(block.experts)
    if not sites:
        raise NotMoEError(f"model type {family!r} ({type(model).__name__}) has no Mixture-of-Experts router routelens can hook")
    return ModelRouting(family=family, sites=sites, experts_modules=experts_modules)
