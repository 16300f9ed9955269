"""The engines' own loaders of a placement file, reproduced step by step to test routelens's files against.

Written here after reading the released sources (no engine code is copied):

* SGLang 0.5.23, ``sglang/srt/eplb/expert_location.py``: ``compute_initial_expert_location_metadata``,
  ``ExpertLocationMetadata._init_common`` / ``init_by_mapping`` / ``init_by_eplb``,
  ``_compute_logical_to_all_physical_map``, ``_pad_nested_array``, ``_fair_choices``; the model side
  (``get_model_config_for_expert_location``: ``num_layers = config.num_hidden_layers``).
* vllm-ascend 0.23.0, ``vllm_ascend/ascend_config.py`` (``_validate_config``) and
  ``vllm_ascend/eplb/core/eplb_utils.py`` (``expert_file_to_tensor``, ``init_eplb_config``,
  ``generate_log2phy_map``), with the MoE layer counter of ``ops/fused_moe/fused_moe.py``.

Each function raises what the engine would raise (or :class:`EngineRefused` where the engine would go on
with a broken placement and fail later), and returns what the engine builds from the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


class EngineRefused(Exception):
    """The engine would fail on this file (at start-up, or at the first token routed through it)."""


# ---------------------------------------------------------------------------- SGLang 0.5.23
def sglang_init_expert_location(data: str, num_hidden_layers: int, num_logical_experts: int,
                                ep_num_redundant_experts: int, ep_size: int) -> dict:
    """``--init-expert-location data`` as SGLang reads it; returns the metadata it would build."""
    if data.endswith(".pt"):
        data_dict = torch.load(data, weights_only=True, map_location="cpu")
    elif data.endswith(".json"):
        data_dict = json.loads(Path(data).read_text())
    else:
        data_dict = json.loads(data)
    context = (num_hidden_layers, num_logical_experts, ep_num_redundant_experts, ep_size)
    if "physical_to_logical_map" in data_dict:
        return _sglang_init_by_mapping(context, **data_dict)  # splatted: an extra key is a TypeError
    if "logical_count" in data_dict:
        return _sglang_init_by_eplb(context, logical_count=data_dict["logical_count"])
    raise NotImplementedError(f"Unknown init_expert_location format ({list(data_dict.keys())=})")


def _sglang_common(context) -> tuple[int, int]:
    num_layers, num_logical, redundant, ep_size = context
    num_physical = num_logical + redundant
    assert num_physical % ep_size == 0
    return num_physical, num_physical // ep_size


def _sglang_init_by_mapping(context, physical_to_logical_map, moe_ep_rank=None) -> dict:
    num_layers, num_logical, _, ep_size = context
    if not isinstance(physical_to_logical_map, torch.Tensor):
        physical_to_logical_map = torch.tensor(physical_to_logical_map)
    num_physical, _ = _sglang_common(context)
    layers, physical = physical_to_logical_map.shape  # a 1-D or 3-D map fails to unpack here
    # no elastic EP: the map must already have every physical slot
    if physical != num_physical:
        raise EngineRefused(f"map has {physical} physical slots, the server has {num_physical}")
    if layers != num_layers:  # the model indexes rows 0..num_hidden_layers-1; EPLB updates compare shapes
        raise EngineRefused(f"map has {layers} layers, the model's expert location has {num_layers}")
    lists = [[[] for _ in range(num_logical)] for _ in range(layers)]
    for layer in range(layers):
        for p in range(physical):
            logical = physical_to_logical_map[layer, p].item()
            lists[layer][logical].append(p)  # IndexError past E; a negative id lands on another expert
            if logical < 0:
                raise EngineRefused(f"negative logical id {logical} silently aliases expert {num_logical + logical}")
    width = max(len(inner) for outer in lists for inner in outer)
    padded = torch.tensor([[inner + [-1] * (width - len(inner)) for inner in outer] for outer in lists])
    num_valid = torch.count_nonzero(padded != -1, dim=-1)
    if (num_valid == 0).any():  # _fair_choices divides by len(candidates) == 0; routing to it has no slot
        raise EngineRefused("an expert has no physical slot")
    return {"physical_to_logical_map": physical_to_logical_map, "logical_to_all_physical_map": padded,
            "num_valid": num_valid, "num_local_physical_experts": physical // ep_size}


def _sglang_init_by_eplb(context, logical_count) -> dict:
    num_layers, num_logical, _, _ = context
    if not isinstance(logical_count, torch.Tensor):
        logical_count = torch.tensor(logical_count)
    if len(logical_count.shape) == 2:
        logical_count = logical_count.unsqueeze(0)
    _sglang_common(context)
    # rebalance_experts(tokens_per_expert=[N, layers, E]) sums over N and balances per layer
    if logical_count.dim() != 3 or tuple(logical_count.shape[1:]) != (num_layers, num_logical):
        raise EngineRefused(f"logical_count of shape {tuple(logical_count.shape)}, needs [N, {num_layers}, {num_logical}]")
    if logical_count.dtype.is_floating_point or (logical_count < 0).any():
        raise EngineRefused("logical_count must hold non-negative token counts")
    return {"logical_count": logical_count}


# ---------------------------------------------------------------------------- vllm-ascend 0.23.0
def vllm_ascend_expert_map(expert_map_path: str, num_moe_layers: int, n_experts: int, ep_size: int) -> list[dict]:
    """What every MoE layer (``layer_id = 0, 1, ...``) builds from ``eplb_config.expert_map_path``."""
    if expert_map_path[-5:] != ".json":
        raise TypeError("The expert_map is not json.")
    if not Path(expert_map_path).is_file():
        raise ValueError("The expert_map is not exist.")
    out = []
    for layer_id in range(num_moe_layers):
        with open(expert_map_path) as f:
            data = json.load(f)
        if layer_id > data["moe_layer_count"]:
            raise ValueError("Invalid EPLB Table")
        if layer_id == data["moe_layer_count"]:
            raise EngineRefused("the file has fewer MoE layers than the model: later layers are read as MTP layers")
        device_data, physical_count = [], 0
        for device in data["layer_list"][layer_id]["device_list"]:
            physical_count += len(device["device_expert"])
            device_data.append(device["device_expert"])
        global_placement = torch.tensor(device_data, dtype=torch.int32)  # ragged devices: ValueError
        n_redundant = physical_count - n_experts
        if n_redundant < 0 or len(global_placement) != ep_size:
            raise EngineRefused(f"{len(global_placement)} devices / {physical_count} slots for EP {ep_size}, E {n_experts}")
        global_expert_map = []
        for rankid in range(ep_size):
            expert_map = torch.full((n_experts,), -1, dtype=torch.int32)
            local_placement = global_placement[rankid]
            if (local_placement < 0).any() or local_placement.unique().numel() != local_placement.numel():
                raise EngineRefused("a device lists a negative or repeated expert (its map would alias slots)")
            expert_map[local_placement.long()] = torch.arange(local_placement.shape[0], dtype=torch.int32)  # IndexError >= E
            global_expert_map.append(expert_map)
        holders = {e for m in global_expert_map for e in torch.nonzero(m != -1).flatten().tolist()}
        if len(holders) != n_experts:  # generate_log2phy_map scatters one entry per held expert
            raise EngineRefused("an expert is on no device")
        out.append({"global_expert_map": torch.stack(global_expert_map), "n_redundant": n_redundant,
                    "placement": global_placement.numpy()})
    return out


def sglang_rows(result: dict) -> np.ndarray:
    return result["physical_to_logical_map"].numpy()
