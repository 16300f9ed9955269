"""Walk a model and build one :class:`RouterSite` per MoE layer, in model order."""

from __future__ import annotations

import re

import torch

from ...errors import NotMoEError
from .base import ModelRouting, RouterSite
from .rules import dbrx_rule, rule_for
from .sites import ExpertsInputSite, JetMoeSite, Llama4Site, NllbMoeSite, SwitchSite

# routers whose output is not (logits, weights [N, k], ids [N, k]): router class name -> site class
_SPECIAL_ROUTERS = {
    "Llama4Router": Llama4Site,
    "JetMoeTopKGating": JetMoeSite,
    "SwitchTransformersTop1Router": SwitchSite,
    "NllbMoeTop2Router": NllbMoeSite,
}
_ROUTER_CHILDREN = ("gate", "router")
_ROUTER_CLASS = re.compile(r"(router|gate|gating)$", re.IGNORECASE)
_FIRST_INDEX = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def _config_of(model: torch.nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        raise NotMoEError(f"{type(model).__name__} has no transformers config; cannot find its MoE routers")
    return config


def _text_config(config):
    getter = getattr(config, "get_text_config", None)
    return getter(decoder=True) if callable(getter) else config


def _layer_index(name: str, config) -> int:
    """Decoder layer index from the module path; Switch / NLLB decoder blocks follow the encoder's."""
    match = _FIRST_INDEX.search(name)
    if match is None:
        raise NotMoEError(f"cannot tell the layer index of router module {name!r}")
    index = int(match.group(1))
    if name.startswith(("decoder.", "model.decoder.")) and getattr(config, "is_encoder_decoder", False):
        index += int(_encoder_layers(config))
    return index


def _encoder_layers(config) -> int:
    for key in ("num_layers", "encoder_layers", "num_hidden_layers"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return 0


def _router_of(block: torch.nn.Module):
    """``(child_name, router)``: a ``gate`` / ``router`` child whose class name says it routes."""
    for child in _ROUTER_CHILDREN:
        router = getattr(block, child, None)
        if isinstance(router, torch.nn.Module) and _ROUTER_CLASS.search(type(router).__name__):
            return child, router
    return None


def _site_for(block_name: str, block: torch.nn.Module, family: str, config):
    """``(site, experts_module)`` if ``block`` is an MoE block, else None."""
    found = _router_of(block)
    if found is None:
        return None
    child, router = found
    name = f"{block_name}.{child}" if block_name else child
    router_class = type(router).__name__
    experts = getattr(block, "experts", None)

    if router_class == "DbrxRouter" and isinstance(experts, torch.nn.Module):
        rule = dbrx_rule(block)
        site = ExpertsInputSite(f"{block_name}.experts", experts, _layer_index(name, config), rule.num_experts,
                                rule.top_k, rule, router_linear=router.layer)
        return site, experts
    site_class = _SPECIAL_ROUTERS.get(router_class)
    if site_class is JetMoeSite:
        experts = block.input_linear  # receives the tokens grouped by expert; gates are applied by the block
    elif site_class is None:
        if not isinstance(experts, torch.nn.Module):
            return None
        site_class = RouterSite
    rule = rule_for(family, router, config, block)
    return site_class(name, router, _layer_index(name, config), rule.num_experts, rule.top_k, rule), experts


def find_router_sites(model: torch.nn.Module) -> ModelRouting:
    """Every MoE layer's router site, in model order.

    A block is an MoE block when it holds a ``gate`` / ``router`` child whose class name ends in
    Router/Gate/Gating next to an ``experts`` module (or is one of the routers listed in ``sites.py``).
    Dense layers (DeepSeek ``first_k_dense_replace``, Qwen2-MoE ``mlp_only_layers`` and
    ``decoder_sparse_step``, Ernie ``moe_layer_interval``, Llama4 interleaving, Switch sparse steps) hold a
    plain MLP instead and are skipped.

    Args:
        model: a transformers model (``...ForCausalLM``, ``...Model``, or a seq2seq MoE model).

    Returns:
        a :class:`ModelRouting`; ``sites[i]`` is hooked at ``sites[i].module`` and
        ``experts_modules[i]`` receives its choice.

    Raises:
        NotMoEError: a dense model, or an unknown family where no router was found (one line, naming
            the model type).

    Example:
        >>> routing = find_router_sites(model)  # doctest: +SKIP
        >>> routing.sites[0].name, routing.sites[0].top_k
        ('model.layers.0.mlp.gate', 8)
    """
    config = _config_of(model)
    family = str(getattr(config, "model_type", "") or type(model).__name__)
    text_config = _text_config(config)
    sites: list[RouterSite] = []
    experts_modules: list[torch.nn.Module] = []
    for block_name, block in model.named_modules():
        made = _site_for(block_name, block, family, text_config)
        if made is not None:
            sites.append(made[0])
            experts_modules.append(made[1])
    # execution order within a layer: JetMoE's attention experts run before its MoE MLP
    layer_prefix = [name[: m.end()] if (m := _FIRST_INDEX.search(name)) else name for name in (s.name for s in sites)]
    first_seen = {prefix: i for i, prefix in reversed(list(enumerate(layer_prefix)))}
    order = sorted(range(len(sites)), key=lambda i: (first_seen[layer_prefix[i]], "attention" not in sites[i].name, i))
    sites = [sites[i] for i in order]
    experts_modules = [experts_modules[i] for i in order]
    if not sites:
        raise NotMoEError(f"model type {family!r} ({type(model).__name__}) has no Mixture-of-Experts router "
                          "routelens can hook (dense model or unsupported family)")
    return ModelRouting(family=family, sites=sites, experts_modules=experts_modules)
