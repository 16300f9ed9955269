"""Where a model's MoE layers are, from its config alone: what an engine's layer axis means.

Serving engines number *decoder layers* (SGLang's recorder and expert-location map, vLLM's
routed-experts capture: ``num_hidden_layers`` rows, dense layers included); a routelens trace lists
the *router modules* of the MoE layers. :func:`model_layout` builds the model on PyTorch's ``meta``
device from ``config.json`` (no weights are read, no memory is used) and finds its routers with the
same discovery the capture uses, so the 28 families routelens captures import the same way.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError, PlanError

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")


@dataclass(frozen=True)
class ModelLayout:
    """A model's MoE layers as a trace names them and as engines number them.

    Attributes:
        model_id: hub id, or the absolute folder of a local checkpoint.
        family: ``model_type`` (``qwen3_moe``, ``deepseek_v3``...).
        architecture: the config's first ``architectures`` entry.
        config: :func:`routelens.capture.header.config_summary` of the config.
        num_decoder_layers: decoder layers the engines count (``num_hidden_layers``).
        layers: router module paths of the MoE layers, in model order (a trace's ``layers``).
        layer_indices: decoder layer index of each MoE layer (the row engines record it in).
        num_experts: ``E`` routed experts per MoE layer.
        top_k: ``k`` experts chosen per token.
        routing_rules: each layer's routing rule as JSON (what a capture stores).
    """

    model_id: str
    family: str
    architecture: str
    config: dict[str, Any]
    num_decoder_layers: int
    layers: tuple[str, ...]
    layer_indices: tuple[int, ...]
    num_experts: int
    top_k: int
    routing_rules: list[Any] = field(default_factory=list, compare=False)

    def header(self, settings: dict[str, Any], source: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """A trace manifest's metadata for routing recorded on this model (no logits, no weights)."""
        return {
            "model": {"id": self.model_id, "family": self.family, "architecture": self.architecture,
                      "config": dict(self.config)},
            "layers": list(self.layers),
            "layer_indices": list(self.layer_indices),
            "num_experts": self.num_experts,
            "num_experts_per_layer": [self.num_experts] * len(self.layers),
            "top_k": self.top_k,
            "routing_rules": list(self.routing_rules),
            "has_logits": False,
            "has_weights": False,
            "dtype": None,
            "settings": settings,
            "source": source,
            **extra,
        }


def model_layout(name_or_path: str | os.PathLike, trust_remote_code: bool = False) -> ModelLayout:
    """The MoE layout of a model, read from its ``config.json`` only.

    Args:
        name_or_path: hub id (needs the hub or its cache) or a local folder holding ``config.json``.
        trust_remote_code: run modeling code shipped with the checkpoint (off unless asked).

    Returns:
        A :class:`ModelLayout`.

    Raises:
        RoutelensError: no config, a dense model, an encoder-decoder model or several routers in one
            decoder layer (engines record one MoE block per decoder layer), routers of unequal E or k.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from ..capture.adapters import find_router_sites
    from ..capture.header import _jsonable_rule, config_summary
    from ..capture.load import load_config, model_reference

    name = str(name_or_path)
    config = load_config(name, trust_remote_code=trust_remote_code)
    if getattr(config, "is_encoder_decoder", False):
        raise InputError(f"{name} is an encoder-decoder model; serving engines record decoder-only MoE models")
    try:
        with torch.device("meta"):  # module structure only: no weights, no memory
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception as exc:  # an architecture transformers cannot build
        raise InputError(f"cannot build {name} from its config: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
    routing = find_router_sites(model)
    sites = routing.sites
    indices = [int(site.layer_index) for site in sites]
    if len(set(indices)) != len(indices):
        raise InputError(f"{name} has several routers in one decoder layer ({routing.family}); engines record one MoE "
                         "block per decoder layer")
    experts = {int(site.num_experts) for site in sites}
    top_ks = {int(site.top_k) for site in sites}
    if len(experts) != 1 or len(top_ks) != 1:
        raise InputError(f"{name}: MoE layers differ in experts {sorted(experts)} or top-k {sorted(top_ks)}")
    summary = config_summary(config)
    num_decoder_layers = int(summary.get("num_layers") or (max(indices) + 1))
    if max(indices) >= num_decoder_layers:
        raise InputError(f"{name}: router at decoder layer {max(indices)} but the config has {num_decoder_layers} layers")
    architectures = getattr(config, "architectures", None) or [type(model).__name__]
    return ModelLayout(
        model_id=model_reference(name), family=routing.family, architecture=str(architectures[0]), config=summary,
        num_decoder_layers=num_decoder_layers, layers=tuple(site.name for site in sites), layer_indices=tuple(indices),
        num_experts=experts.pop(), top_k=top_ks.pop(), routing_rules=[_jsonable_rule(site.rule) for site in sites],
    )


def layer_index(name: str) -> int:
    """Decoder-layer index in a router module path (``model.layers.12.mlp.gate`` → 12).

    Raises:
        PlanError: the path holds no ``layers.<i>`` component.
    """
    match = _LAYER_INDEX.search(name)
    if match is None:
        numbers = re.findall(r"\.(\d+)\.", f".{name}.")
        if len(numbers) != 1:
            raise PlanError(f"cannot tell the decoder layer index of '{name}': export with an explicit layer order")
        return int(numbers[0])
    return int(match.group(1))


def trace_layer_indices(trace) -> list[int]:
    """Decoder layer index of each of a trace's MoE layers (the manifest's, else read from the names)."""
    stored = trace.manifest.get("layer_indices")
    if isinstance(stored, list) and len(stored) == len(trace.layers) and all(isinstance(i, int) for i in stored):
        return list(stored)
    return [layer_index(name) for name in trace.layers]


def trace_decoder_layers(trace) -> int | None:
    """Decoder layers of a trace's model (``config.num_layers``), or None when the manifest does not say."""
    value = trace.config.get("num_layers")
    return int(value) if isinstance(value, int) and value > 0 else None
