"""SGLang's expert-location files (``--init-expert-location FILE``): written from a plan, read as one.

What SGLang 0.5.23 does with the file (``srt/eplb/expert_location.py``,
``compute_initial_expert_location_metadata``): ``.pt`` is ``torch.load(weights_only=True)``, ``.json``
is parsed, and then

* ``"physical_to_logical_map" in data`` → ``ExpertLocationMetadata.init_by_mapping(model_config,
  **data, moe_ep_rank=...)``: the dict is *splatted*, so it may hold no other key. The map is
  ``[num_layers, num_physical]`` with ``num_layers = ModelConfigForExpertLocation.num_layers`` =
  the config's ``num_hidden_layers`` (every decoder layer; dense rows are never used) and
  ``num_physical = E + --ep-num-redundant-experts``, divisible by ``--ep-size``. Physical slot ``p``
  lives on EP rank ``p // (num_physical / ep_size)``. Every id must be a logical expert in ``[0, E)``
  and every expert needs a slot (``_compute_logical_to_all_physical_map``).
* ``"logical_count" in data`` → ``init_by_eplb``: ``[num_layers, E]`` or ``[N, num_layers, E]``
  token counts; SGLang runs its own EPLB on them (``--eplb-algorithm``).
* any other key → ``NotImplementedError``.

Models without ``get_model_config_for_expert_location`` (e.g. Mixtral in 0.5.23) get no expert
location at all: SGLang ignores the file for them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PlanError
from ..plan import Plan
from .files import save_int_tensors

MAP_KEY = "physical_to_logical_map"
COUNT_KEY = "logical_count"
SGLANG_VERSION_READ = "0.5.23"


def sglang_physical_to_logical(plan: Plan, layer_indices: list[int], num_decoder_layers: int) -> np.ndarray:
    """``[num_decoder_layers, G·S]`` int64 map: the plan's rows at its layers' decoder indices, trivial elsewhere.

    Args:
        layer_indices: decoder layer index of each of ``plan.layers`` (in that order).
        num_decoder_layers: the model's ``num_hidden_layers``.

    Raises:
        PlanError: two layers at one index, an index outside the model.
    """
    if len(layer_indices) != len(plan.layers) or len(set(layer_indices)) != len(layer_indices):
        raise PlanError("each plan layer needs its own decoder layer index")
    if max(layer_indices) >= num_decoder_layers:
        raise PlanError(f"plan layer index {max(layer_indices)} does not exist in a model of {num_decoder_layers} layers")
    mapping = np.tile(np.arange(plan.num_physical, dtype=np.int64) % plan.num_experts, (num_decoder_layers, 1))
    for name, index in zip(plan.layers, layer_indices):
        mapping[index] = plan.physical_to_logical(name)
    return mapping


def save_sglang_location(plan: Plan, path: str | os.PathLike, layer_indices: list[int],
                         num_decoder_layers: int) -> Path:
    """Write ``{"physical_to_logical_map": [D, G·S]}`` (``.pt`` or ``.json`` by extension), nothing else."""
    return save_int_tensors(path, {MAP_KEY: sglang_physical_to_logical(plan, layer_indices, num_decoder_layers)})


def sglang_logical_count(counts: np.ndarray, layer_indices: list[int], num_decoder_layers: int) -> np.ndarray:
    """``[D, E]`` counts for ``init_by_eplb``: the MoE layers' ``[L, E]`` counts at their rows, zeros elsewhere."""
    counts = np.asarray(counts, dtype=np.int64)
    out = np.zeros((num_decoder_layers, counts.shape[-1]), dtype=np.int64)
    out[np.asarray(layer_indices)] = counts
    return out


def save_sglang_counts(counts: np.ndarray, path: str | os.PathLike, layer_indices: list[int],
                       num_decoder_layers: int) -> Path:
    """Write ``{"logical_count": [D, E]}``: SGLang rebalances the experts itself from these counts."""
    return save_int_tensors(path, {COUNT_KEY: sglang_logical_count(counts, layer_indices, num_decoder_layers)})


def plan_from_sglang(data: dict[str, Any], source: str, layers: list[str], layer_indices: list[int],
                     num_experts: int, num_gpus: int, num_nodes: int = 1, num_decoder_layers: int | None = None) -> Plan:
    """A :class:`Plan` from an SGLang ``physical_to_logical_map`` file's content.

    Args:
        layers, layer_indices: the model's MoE layers and their decoder indices (rows picked from the map).
        num_gpus: SGLang's ``--ep-size`` (the map does not record it).
        num_decoder_layers: when given, the map must have exactly this many rows (as SGLang needs).

    Raises:
        PlanError: other keys, a wrong shape, ids out of range, a layer that misses an expert.
    """
    extra = sorted(set(map(str, data)) - {MAP_KEY})
    if extra:
        raise PlanError(f"{source} holds {extra} next to '{MAP_KEY}': SGLang passes the dict as keyword arguments "
                        "and would refuse it")
    mapping = _int_matrix(data[MAP_KEY], source)
    if num_decoder_layers is not None and mapping.shape[0] != num_decoder_layers:
        raise PlanError(f"{source} has {mapping.shape[0]} rows; SGLang needs one per decoder layer ({num_decoder_layers})")
    if mapping.shape[1] % num_gpus:
        raise PlanError(f"{source}: {mapping.shape[1]} physical experts cannot be split over {num_gpus} GPUs")
    if mapping.shape[1] < num_experts:
        raise PlanError(f"{source}: {mapping.shape[1]} physical slots cannot hold {num_experts} experts (another model?)")
    tables = {}
    for name, index in zip(layers, layer_indices):
        if index >= mapping.shape[0]:
            raise PlanError(f"{source} has {mapping.shape[0]} layers; the model's layer {name} has index {index}")
        tables[name] = mapping[index].reshape(num_gpus, -1)
    return Plan(gpu_experts=tables, num_experts=num_experts, num_nodes=num_nodes, method="sglang-file",
                meta={"source": str(source)})


def _int_matrix(value: Any, source: str) -> np.ndarray:
    if hasattr(value, "numpy"):
        value = value.numpy()
    try:
        array = np.asarray(value)
    except ValueError:
        raise PlanError(f"{source}: '{MAP_KEY}' is ragged") from None
    if array.ndim != 2 or array.dtype.kind not in "iu":
        raise PlanError(f"{source}: '{MAP_KEY}' must be a [layers, physical experts] integer array, "
                        f"got {array.dtype} {array.shape}")
    return array.astype(np.int64)
