"""vLLM static placement: what the current release loads, and vllm-ascend's ``expert_map_path`` file.

**Upstream vLLM 0.34.0 loads no placement file.** Its expert placement at start-up is
``--expert-placement-strategy linear | round_robin`` (``config/parallel.py``); with ``--enable-eplb``
(``--eplb-config``: ``window_size``, ``step_interval``, ``num_redundant_experts``, ``policy``...) it
starts from the linear map (``EplbState.build_initial_global_physical_to_logical_map``) and
rebalances online. ``EplbState.from_mapping`` exists but only elastic EP calls it, with a map made in
memory. So routelens writes no file for upstream vLLM (``routelens place --format vllm`` says so).

**vllm-ascend** (the Ascend plugin; read at v0.23.0, ``vllm_ascend/eplb/core/eplb_utils.py`` and
``ascend_config.py``) loads ``--additional-config '{"eplb_config": {"expert_map_path": "map.json"}}'``:

* the path must end in ``.json`` and be readable (``_validate_config``);
* ``expert_file_to_tensor(path, layer_id)`` reads ``data["moe_layer_count"]`` and
  ``data["layer_list"][layer_id]["device_list"][g]["device_expert"]``, where ``layer_id`` counts MoE
  layers only, in construction order from 0 (``AscendMoERunner.moe_counter``; ``layer_id ==
  moe_layer_count`` is an MTP layer that reuses layer 0's slot count, larger raises "Invalid EPLB
  Table");
* ``torch.tensor(device_data)``: every device lists the same number of experts (its slots, in slot
  order), ``num_redundant = sum of slots - E``;
* ``init_eplb_config`` builds ``expert_map[local_placement] = arange(slots)`` per device (ids must
  lie in ``[0, E)`` and repeat on no device) and ``generate_log2phy_map`` (every expert needs a slot).

Its own recorder (``expert_map_record_path``) writes the same layout, so such files load as plans too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PlanError
from ..io import atomic_write_json
from ..plan import Plan

VLLM_VERSION_READ = "0.34.0"
VLLM_ASCEND_VERSION_READ = "0.23.0"
UPSTREAM_NOTE = (f"vLLM {VLLM_VERSION_READ} loads no placement file: it starts from --expert-placement-strategy "
                 "linear|round_robin and, with --enable-eplb, rebalances online; write --format vllm-ascend for "
                 "vllm-ascend's eplb_config.expert_map_path, or serve with SGLang (--format sglang)")


def vllm_ascend_expert_map(plan: Plan, layers: list[str] | None = None) -> dict[str, Any]:
    """The ``expert_map_path`` JSON of ``plan``: one entry per MoE layer, in ``layers`` (model) order."""
    layers = list(plan.layers) if layers is None else list(layers)
    return {
        "moe_layer_count": len(layers),
        "layer_list": [
            {"layer_id": j, "device_count": plan.num_gpus,
             "device_list": [{"device_id": g, "device_expert": [int(e) for e in row]}
                             for g, row in enumerate(plan.gpu_experts[name])]}
            for j, name in enumerate(layers)
        ],
    }


def save_vllm_ascend(plan: Plan, path: str | os.PathLike, layers: list[str] | None = None) -> Path:
    """Write vllm-ascend's expert map (``.json`` only: vllm-ascend refuses any other name)."""
    path = Path(path)
    if path.suffix != ".json":
        raise PlanError(f"vllm-ascend reads an expert map ending in .json, got '{path.name}'")
    return atomic_write_json(path, vllm_ascend_expert_map(plan, layers))


def plan_from_vllm_ascend(data: dict[str, Any], source: str, layers: list[str], num_experts: int,
                          num_nodes: int = 1) -> Plan:
    """A :class:`Plan` from an ``expert_map_path`` file's content (MoE layers in model order).

    Raises:
        PlanError: missing keys, a layer count other than the model's, ragged devices, a bad id.
    """
    try:
        count = int(data["moe_layer_count"])
        entries = [[device["device_expert"] for device in entry["device_list"]] for entry in data["layer_list"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanError(f"{source} is not a vllm-ascend expert map (missing or malformed {exc})") from None
    tables = []
    for j, devices in enumerate(entries):
        if len({len(d) if isinstance(d, list) else -1 for d in devices}) != 1:
            raise PlanError(f"{source}: layer {j} needs the same number of experts on every device (vllm-ascend "
                            "stacks them into one tensor)")
        tables.append(np.asarray(devices))
    if count != len(layers) or len(tables) < count:
        raise PlanError(f"{source} maps {count} MoE layers ({len(tables)} listed), the model has {len(layers)}")
    for j, table in enumerate(tables[:count]):
        if table.ndim != 2 or table.dtype.kind not in "iu":
            raise PlanError(f"{source}: layer {j} needs the same number of integer experts on every device, got "
                            f"{table.dtype} {table.shape}")
    return Plan(gpu_experts={name: tables[j] for j, name in enumerate(layers)}, num_experts=num_experts,
                num_nodes=num_nodes, method="vllm-ascend-file", meta={"source": str(source)})
