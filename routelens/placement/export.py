"""Plans in the formats serving engines load, and back.

Both engines number *physical experts* ``p = g·S + s`` (slot ``s`` of EP rank ``g``, ``S`` slots per
rank) and describe a placement by ``physical_to_logical_map``: the logical expert each physical
slot holds. A routelens plan's ``gpu_experts[layer]`` is that map reshaped to ``[G, S]``.

**SGLang** (``--init-expert-location FILE``, with ``--ep-num-redundant-experts R`` set to the plan's
``num_redundant`` and ``--ep-size G``): a ``.pt`` file (``torch.save`` of a dict) or ``.json`` with
``{"physical_to_logical_map": [num_layers, G·S]}``, one row per *decoder layer* of the model
(``ModelConfigForExpertLocation.num_layers`` = the model's layer count); rows of layers without
routed experts are never read and get the trivial map ``p mod E``.

**vLLM** (EPLB state, ``vllm/distributed/eplb/eplb_state.py``): one row per *MoE layer* in model
order — ``physical_to_logical_map [L, P]``, ``logical_to_physical_map [L, E, R + 1]`` (``-1``
padded) and ``logical_replica_count [L, E]``, the three tensors of ``EplbModelState``. vLLM has no
flag to load them at start-up (its EPLB starts from the trivial map and rebalances online); the
file holds exactly what a rearrangement (``rearrange_expert_weights_inplace``) takes.

Files are written atomically; ``.pt`` files hold only plain int64 tensors and are read back with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PlanError
from ..io import atomic_write_bytes, atomic_write_json, read_json
from ..plan import Plan

FORMATS = ("json", "sglang", "vllm")
# The file suffix each format is written with unless asked otherwise (sglang and vllm also write .json).
SUFFIXES = {"json": ".json", "sglang": ".pt", "vllm": ".pt"}
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")


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


# --------------------------------------------------------------------------- SGLang
def sglang_physical_to_logical(plan: Plan, num_layers: int | None = None) -> np.ndarray:
    """``[num_layers, G·S]`` int64 map for SGLang's ``--init-expert-location``.

    Args:
        num_layers: decoder layers of the model (default: ``plan.meta["model"]["num_layers"]``,
            else the last MoE layer's index + 1).
    """
    indices = [layer_index(name) for name in plan.layers]
    if len(set(indices)) != len(indices):
        raise PlanError("two plan layers map to the same decoder layer index")
    if num_layers is None:
        num_layers = int((plan.meta.get("model") or {}).get("num_layers") or max(indices) + 1)
    if max(indices) >= num_layers:
        raise PlanError(f"plan layer index {max(indices)} does not exist in a model of {num_layers} layers")
    mapping = np.tile(np.arange(plan.num_physical, dtype=np.int64) % plan.num_experts, (num_layers, 1))
    for name, index in zip(plan.layers, indices):
        mapping[index] = plan.physical_to_logical(name)
    return mapping


def save_sglang(plan: Plan, path: str | os.PathLike, num_layers: int | None = None) -> Path:
    """Write SGLang's expert-location file (``.pt`` or ``.json`` by extension)."""
    mapping = sglang_physical_to_logical(plan, num_layers)
    return _save_tensors(path, {"physical_to_logical_map": mapping})


def load_sglang(path: str | os.PathLike, layers: list[str], num_experts: int, num_gpus: int,
                num_nodes: int = 1) -> Plan:
    """Read an SGLang expert-location file back into a :class:`Plan` and validate it.

    Args:
        layers: router module paths of the model's MoE layers (rows are picked by their index).
        num_experts, num_gpus, num_nodes: what the model and cluster have.

    Raises:
        PlanError: missing key, wrong shape, or a layer that does not place every expert.
    """
    data = _load_tensors(path)
    mapping = _int_matrix(data, "physical_to_logical_map", path)
    if mapping.shape[1] % num_gpus:
        raise PlanError(f"{path}: {mapping.shape[1]} physical experts cannot be split over {num_gpus} GPUs")
    tables = {}
    for name in layers:
        index = layer_index(name)
        if index >= mapping.shape[0]:
            raise PlanError(f"{path} has {mapping.shape[0]} layers; the model's layer {name} has index {index}")
        tables[name] = mapping[index].reshape(num_gpus, -1)
    return Plan(gpu_experts=tables, num_experts=num_experts, num_nodes=num_nodes, method="sglang-import",
                meta={"source": str(path)})


# --------------------------------------------------------------------------- vLLM
def vllm_eplb_state(plan: Plan) -> dict[str, np.ndarray]:
    """vLLM ``EplbModelState`` tensors for the plan's MoE layers, in plan (model) order."""
    width = plan.num_redundant + 1
    return {
        "physical_to_logical_map": np.stack([plan.physical_to_logical(l) for l in plan.layers]),
        "logical_to_physical_map": np.stack([plan.logical_to_physical(l, width) for l in plan.layers]),
        "logical_replica_count": np.stack([plan.replica_counts(l) for l in plan.layers]),
    }


def save_vllm(plan: Plan, path: str | os.PathLike) -> Path:
    """Write the vLLM EPLB mapping (``.pt`` or ``.json`` by extension)."""
    return _save_tensors(path, vllm_eplb_state(plan))


def load_vllm(path: str | os.PathLike, layers: list[str], num_experts: int, num_gpus: int, num_nodes: int = 1) -> Plan:
    """Read a vLLM EPLB mapping back into a :class:`Plan`; checks the three tensors agree."""
    data = _load_tensors(path)
    mapping = _int_matrix(data, "physical_to_logical_map", path)
    if mapping.shape[0] != len(layers):
        raise PlanError(f"{path} has {mapping.shape[0]} MoE layers, the model {len(layers)}")
    if mapping.shape[1] % num_gpus:
        raise PlanError(f"{path}: {mapping.shape[1]} physical experts cannot be split over {num_gpus} GPUs")
    plan = Plan(gpu_experts={name: row.reshape(num_gpus, -1) for name, row in zip(layers, mapping)},
                num_experts=num_experts, num_nodes=num_nodes, method="vllm-import", meta={"source": str(path)})
    if "logical_replica_count" in data:
        counts = np.asarray(data["logical_replica_count"])
        expected = np.stack([plan.replica_counts(l) for l in layers])
        if counts.shape != expected.shape or not np.array_equal(counts, expected):
            raise PlanError(f"{path}: logical_replica_count disagrees with physical_to_logical_map")
    if "logical_to_physical_map" in data:
        l2p = np.asarray(data["logical_to_physical_map"])
        expected = np.stack([plan.logical_to_physical(l, l2p.shape[-1]) for l in layers]) if l2p.ndim == 3 else None
        if expected is None or not np.array_equal(np.sort(l2p, axis=-1), np.sort(expected, axis=-1)):
            raise PlanError(f"{path}: logical_to_physical_map disagrees with physical_to_logical_map")
    return plan


# --------------------------------------------------------------------------- any format
def export_plan(plan: Plan, path: str | os.PathLike, fmt: str = "json", num_layers: int | None = None) -> Path:
    """Write ``plan`` as ``fmt``: ``json`` (routelens plan), ``sglang`` or ``vllm``."""
    if fmt == "json":
        return plan.save(path)
    if fmt == "sglang":
        return save_sglang(plan, path, num_layers)
    if fmt == "vllm":
        return save_vllm(plan, path)
    raise PlanError(f"unknown plan format '{fmt}' (known: {', '.join(FORMATS)})")


def _save_tensors(path: str | os.PathLike, tensors: dict[str, np.ndarray]) -> Path:
    path = Path(path)
    if path.suffix == ".json":
        return atomic_write_json(path, {k: np.asarray(v).tolist() for k, v in tensors.items()}, indent=None)
    if path.suffix != ".pt":
        raise PlanError(f"export file must end in .pt or .json, got '{path.name}'")
    import torch

    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)) for k, v in tensors.items()}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def _load_tensors(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"plan export not found: {path}")
    if path.suffix == ".json":
        try:
            data = read_json(path, what="plan export")
        except Exception as exc:
            raise PlanError(str(exc)) from exc
    else:
        import pickle

        import torch

        try:
            data = torch.load(path, weights_only=True, map_location="cpu")
        except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as exc:
            raise PlanError(f"{path} is not a readable torch file: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
        if isinstance(data, dict):
            data = {k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in data.items()}
    if not isinstance(data, dict):
        raise PlanError(f"{path} must hold a dict of tensors, got {type(data).__name__}")
    return data


def _int_matrix(data: dict[str, Any], key: str, path) -> np.ndarray:
    if key not in data:
        raise PlanError(f"{path} has no '{key}'")
    try:
        array = np.asarray(data[key])
    except ValueError:
        raise PlanError(f"{path}: '{key}' is ragged") from None
    if array.ndim != 2 or array.dtype.kind not in "iu":
        raise PlanError(f"{path}: '{key}' must be a [layers, physical experts] integer array, got {array.dtype} {array.shape}")
    return array.astype(np.int64)
