"""The trace manifest's metadata for a capture: model, config summary, layers, settings, source.

``settings`` holds everything a ``--resume`` must match exactly (model, text and its hash, the
token windows' hash, seq_len, max_tokens, save_logits, dtype, world size); TraceWriter refuses a
resume whose settings differ.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import RoutelensError
from .text import Windows


# How families spell the numbers that matter for routing (``num_local_experts`` in Mixtral,
# ``n_routed_experts`` in DeepSeek, ``d_model`` in Switch), under routelens's names.
CONFIG_NAMES = {
    "hidden_size": ("hidden_size", "d_model", "n_embd"),
    "num_layers": ("num_hidden_layers", "num_layers", "n_layer"),
    "num_experts": ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"),
    "top_k": ("num_experts_per_tok", "moe_topk", "top_k", "num_selected_experts", "router_top_k"),
    "num_shared_experts": ("num_shared_experts", "n_shared_experts"),
    "vocab_size": ("vocab_size",),
    "moe_intermediate_size": ("moe_intermediate_size", "expert_intermediate_size"),
    "intermediate_size": ("intermediate_size", "ffn_dim", "d_ff"),
    "num_attention_heads": ("num_attention_heads", "num_heads", "n_head"),
    "max_position_embeddings": ("max_position_embeddings", "n_positions"),
}


def config_field(config, key: str) -> tuple[str, Any] | None:
    """``(attribute name, value)`` of routelens's ``key`` (a :data:`CONFIG_NAMES` key) in ``config``, or None."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in CONFIG_NAMES[key]:
        value = getattr(text, name, None)
        if isinstance(value, (int, float, str, bool)):
            return name, value
    return None


def config_summary(config) -> dict[str, Any]:
    """The numbers of a transformers config that matter for routing, under one set of names.

    The summary uses ``hidden_size``, ``num_layers``, ``num_experts``, ``top_k``, ``vocab_size``,
    ``moe_intermediate_size``, ... (:data:`CONFIG_NAMES`), whatever the family calls them.
    """
    summary: dict[str, Any] = {"model_type": getattr(config, "model_type", None)}
    for key in CONFIG_NAMES:
        found = config_field(config, key)
        if found is not None:
            summary[key] = found[1]
    return {k: v for k, v in summary.items() if v is not None}


def check_routing_config(config, name: str) -> None:
    """Refuse a config whose top-k cannot be chosen from its experts (the model would fail mid-forward).

    Raises:
        RoutelensError: ``num_experts_per_tok`` (or the family's spelling) < 1 or > the expert count.
    """
    top_k, experts = config_field(config, "top_k"), config_field(config, "num_experts")
    if top_k is None or experts is None or not all(isinstance(v, int) and not isinstance(v, bool)
                                                   for v in (top_k[1], experts[1])):
        return
    if not 1 <= top_k[1] <= experts[1]:
        raise RoutelensError(f"the config of {name} chooses {top_k[0]}={top_k[1]} of {experts[0]}={experts[1]} "
                             "experts per token: fix config.json (top-k must lie in [1, number of experts])")


def build_header(model, tokenizer, routing, windows: Windows, *, model_id: str, save_logits: bool,
                 world_size: int = 1) -> dict[str, Any]:
    """The trace manifest's metadata; ``settings`` is what a ``--resume`` must match exactly."""
    sites = routing.sites
    top_ks = {int(site.top_k) for site in sites}
    if len(top_ks) != 1:
        raise RoutelensError(f"{model_id}: MoE layers choose different numbers of experts {sorted(top_ks)}; "
                             "a trace needs one top-k")
    for site in sites:
        if not 1 <= int(site.top_k) <= int(site.num_experts):
            raise RoutelensError(f"{model_id}: {site.name} chooses top-{site.top_k} of {site.num_experts} experts")
    dtype = str(getattr(model, "dtype", "")).replace("torch.", "")
    architectures = getattr(model.config, "architectures", None) or [type(model).__name__]
    source = windows.source
    settings = {
        "model": model_id,
        "text": source.describe(),
        "text_sha256": source.sha256,
        "tokens_sha256": windows.tokens_sha256,
        "seq_len": windows.seq_len,
        "max_tokens": windows.max_tokens,
        "num_windows": windows.num_windows,
        "save_logits": bool(save_logits),
        "dtype": dtype,
        "world_size": int(world_size),
    }
    return {
        "model": {
            "id": model_id,
            "family": routing.family,
            "architecture": architectures[0],
            "config": config_summary(model.config),
            "tokenizer": {
                "class": type(tokenizer).__name__,
                "vocab_size": len(tokenizer),
                "eos_token_id": getattr(tokenizer, "eos_token_id", None),
            },
        },
        "layers": [site.name for site in sites],
        "layer_indices": [int(site.layer_index) for site in sites],
        "num_experts": max(int(site.num_experts) for site in sites),
        "num_experts_per_layer": [int(site.num_experts) for site in sites],
        "top_k": top_ks.pop(),
        "routing_rules": [_jsonable_rule(site.rule) for site in sites],
        "has_logits": bool(save_logits),
        "dtype": dtype,
        "settings": settings,
        "source": {
            "kind": source.kind,
            "name": source.name,
            "sha256": source.sha256,
            "seq_len": windows.seq_len,
            "num_windows": windows.num_windows,
            "num_tokens": windows.num_tokens,
        },
    }


def _jsonable_rule(rule: Any) -> Any:
    """A routing rule as JSON (tensors such as a selection bias become ``"tensor[E]"``)."""
    if rule is None:
        return None
    if not dataclasses.is_dataclass(rule) or isinstance(rule, type):
        return str(rule)
    jsonable = {}
    for item in dataclasses.fields(rule):
        value = getattr(rule, item.name)
        if hasattr(value, "shape"):
            value = f"tensor{list(value.shape)}"
        elif not isinstance(value, (int, float, str, bool, type(None))):
            value = str(value)
        jsonable[item.name] = value
    return jsonable
