"""Each family's routing rule, read from its router module (and config), as a :class:`RoutingRule`."""

from __future__ import annotations

import torch

from ...routing_rule import RoutingRule


def _attr(obj, *names, default=None):
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return default


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


def _block_bias(block):
    for name in ("e_score_correction_bias", "expert_bias"):
        bias = getattr(block, name, None) if block is not None else None
        if isinstance(bias, torch.Tensor):
            return bias
    return None


def _sigmoid_block_bias_rule(router, config, block=None) -> RoutingRule:
    """MiniMax-M2, HunYuan-V3, AFMoE: sigmoid, a selection bias the block passes in, renorm, scaling."""
    num_experts, top_k = _experts_and_k(router, config)
    scale = _attr(router, "routed_scaling_factor", "router_scaling_factor", "route_scale", default=1.0)
    return RoutingRule("sigmoid", num_experts, top_k, norm_topk_prob=True, routed_scaling_factor=float(scale),
                       bias=_block_bias(block))


def _ernie_rule(router, config) -> RoutingRule:
    num_experts, top_k = _experts_and_k(router, config)
    bias = router.moe_statics.e_score_correction_bias  # [1, E]
    return RoutingRule("softmax", num_experts, top_k, norm_topk_prob=True, bias=bias.reshape(-1))


def _phimoe_rule(router, config) -> RoutingRule:
    num_experts, top_k = _experts_and_k(router, config)
    return RoutingRule("sparsemixer", num_experts, top_k, False, jitter_eps=float(router.router_jitter_noise))


def _llama4_rule(router, config) -> RoutingRule:
    num_experts, top_k = _experts_and_k(router, config)
    return RoutingRule("topk_sigmoid", num_experts, top_k, False)


def dbrx_rule(ffn) -> RoutingRule:
    """DBRX: softmax, top-k, weights divided by their ``moe_normalize_expert_weights``-norm (if set)."""
    p = ffn.moe_normalize_expert_weights
    num_experts = int(ffn.experts.num_experts)
    return RoutingRule("softmax", num_experts, int(ffn.top_k), p is not None, norm_p=float(p or 1.0))


def _top1_rule(router, config) -> RoutingRule:
    """Switch Transformers: top-1 of the softmax, weight the top-1 probability (capacity not modelled)."""
    return RoutingRule("softmax", int(router.num_experts), 1, False)


def _nllb_rule(router, config) -> RoutingRule:
    """NLLB-MoE: top-2 of the softmax, renormalised over the two (capacity not modelled)."""
    return RoutingRule("softmax", int(router.num_experts), 2, True)


_BLOCK_BIAS_FAMILIES = {"minimax_m2", "hy_v3", "afmoe"}

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
    "granitemoe_swa": _topk_softmax_rule,
    "qwen3_5_moe": lambda r, c: _softmax_rule(r, c, norm=True),
    "qwen3_5_moe_text": lambda r, c: _softmax_rule(r, c, norm=True),
    "llama4_text": _llama4_rule,
    "llama4": _llama4_rule,
    "jetmoe": _topk_softmax_rule,
    "switch_transformers": _top1_rule,
    "nllb-moe": _nllb_rule,
    "nllb_moe": _nllb_rule,
}


def rule_for(family: str, router, config, block=None) -> RoutingRule:
    """The routing rule of ``router`` (inside ``block``) in a model of type ``family``.

    Unknown families get a structural guess: a DeepSeek-V3-like router (its own correction bias and
    groups), a sigmoid router fed a bias by its block, else softmax top-k. The recorded choice is exact
    either way; only :meth:`RoutingRule.choose` depends on the guess.
    """
    if family in _BLOCK_BIAS_FAMILIES or (family not in _RULES and _block_bias(block) is not None):
        return _sigmoid_block_bias_rule(router, config, block)
    builder = _RULES.get(family)
    if builder is not None:
        return builder(router, config)
    if getattr(router, "e_score_correction_bias", None) is not None and hasattr(router, "num_group"):
        return _sigmoid_bias_rule(router, config)
    return _softmax_rule(router, config)
