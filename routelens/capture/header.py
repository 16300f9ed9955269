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


def config_summary(config) -> dict[str, Any]:
    """The numbers of a transformers config that matter for routing, under one set of names.

    Families spell them differently (``num_local_experts`` in Mixtral, ``n_routed_experts`` in
    DeepSeek, ``d_model`` in Switch); the summary uses ``hidden_size``, ``num_layers``,
    ``num_experts``, ``top_k``, ``vocab_size``, ``moe_intermediate_size``, ...
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    names = {
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
    summary: dict[str, Any] = {"model_type": getattr(config, "model_type", None)}
    for key, candidates in names.items():
        for name in candidates:
            value = getattr(text, name, None)
            if isinstance(value, (int, float, str, bool)):
                summary[key] = value
                break
    return {k: v for k, v in summary.items() if v is not None}


def build_header(model, tokenizer, routing, windows: Windows, *, model_id: str, save_logits: bool,
                 world_size: int = 1) -> dict[str, Any]:
    """The trace manifest's metadata; ``settings`` is what a ``--resume`` must match exactly."""
    sites = routing.sites
    top_ks = {int(site.top_k) for site in sites}
    if len(top_ks) != 1:
        raise RoutelensError(f"{model_id}: MoE layers choose different numbers of experts {sorted(top_ks)}; "
                             "a trace needs one top-k")
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
