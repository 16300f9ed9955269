"""Any placement file as a :class:`~routelens.plan.Plan`: routelens plans and the files engines load.

``load_plan_file(path, target)`` is what ``plan-eval``, ``bench`` and ``reroute --plan`` call, so an
SGLang ``--init-expert-location`` file or a vllm-ascend ``expert_map_path`` file is accepted wherever a
routelens plan is. Each kind is a :class:`PlanFileKind` in :data:`PLAN_FILE_KINDS`, recognised by its
keys. Engines' files do not name the model's layers (rows are decoder or MoE layer numbers), and an
SGLang map does not record the EP size: the :class:`PlanTarget` (from the trace, plus ``--gpus``)
supplies both. ``routelens place --format sglang`` writes ``<out>.plan.json`` next to the map; when
that routelens plan is found there and agrees with the map, its GPU count, topology and fit range
are used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import PlanError
from ..formats import PLAN
from ..plan import Plan
from .files import read_placement_file
from .layout import trace_decoder_layers, trace_layer_indices
from .sglang_location import COUNT_KEY, MAP_KEY, plan_from_sglang
from .vllm_ascend_map import plan_from_vllm_ascend


@dataclass(frozen=True)
class PlanTarget:
    """What a placement file is read against: the model's MoE layers, E, and the cluster if known.

    Attributes:
        layers: router module paths of the MoE layers (model order).
        layer_indices: their decoder layer indices.
        num_experts: ``E``.
        num_decoder_layers: the model's decoder layers, or None when unknown.
        num_gpus: EP size (``--gpus``), or None.
        num_nodes: nodes, or None.
    """

    layers: tuple[str, ...]
    layer_indices: tuple[int, ...]
    num_experts: int
    num_decoder_layers: int | None = None
    num_gpus: int | None = None
    num_nodes: int | None = None

    @classmethod
    def for_trace(cls, trace, num_gpus: int | None = None, num_nodes: int | None = None) -> "PlanTarget":
        return cls(tuple(trace.layers), tuple(trace_layer_indices(trace)), int(trace.num_experts),
                   trace_decoder_layers(trace), num_gpus, num_nodes)


@dataclass(frozen=True)
class PlanFileKind:
    """One kind of placement file: how to recognise its content and read it as a plan."""

    name: str
    matches: Callable[[dict[str, Any]], bool]
    read: Callable[[dict[str, Any], Path, PlanTarget], Plan]


def _read_routelens(data: dict[str, Any], path: Path, target: PlanTarget) -> Plan:
    return Plan.from_json(data, source=str(path))


def _read_sglang(data: dict[str, Any], path: Path, target: PlanTarget) -> Plan:
    sidecar = _sidecar_plan(path)
    num_gpus = target.num_gpus or (sidecar.num_gpus if sidecar is not None else None)
    if num_gpus is None:
        raise PlanError(f"{path} is an SGLang expert-location map, which does not record the EP size: pass --gpus G "
                        "(the --ep-size SGLang serves it with)")
    num_nodes = target.num_nodes or (sidecar.num_nodes if sidecar is not None and sidecar.num_gpus == num_gpus else 1)
    plan = plan_from_sglang(data, str(path), list(target.layers), list(target.layer_indices), target.num_experts,
                            num_gpus, num_nodes, target.num_decoder_layers)
    if sidecar is not None and sidecar.num_gpus == num_gpus:
        same = set(sidecar.layers) == set(plan.layers) and all(
            (sidecar.gpu_experts[l] == plan.gpu_experts[l]).all() for l in plan.layers)
        if not same:
            raise PlanError(f"{path} and the routelens plan next to it ({_sidecar_path(path).name}) place experts "
                            "differently: one of them was changed")
        plan.replica_policy, plan.method = sidecar.replica_policy, sidecar.method
        plan.meta = {**sidecar.meta, "source": str(path)}
    return plan


def _read_counts(data: dict[str, Any], path: Path, target: PlanTarget) -> Plan:
    raise PlanError(f"{path} holds SGLang expert counts ('{COUNT_KEY}'), not a placement: SGLang computes the "
                    "placement from them itself at start-up")


def _read_vllm_ascend(data: dict[str, Any], path: Path, target: PlanTarget) -> Plan:
    return plan_from_vllm_ascend(data, str(path), list(target.layers), target.num_experts, target.num_nodes or 1)


PLAN_FILE_KINDS: tuple[PlanFileKind, ...] = (
    PlanFileKind("routelens plan", lambda d: d.get("format") == PLAN.name, _read_routelens),
    PlanFileKind("SGLang expert-location map", lambda d: MAP_KEY in d, _read_sglang),
    PlanFileKind("SGLang expert counts", lambda d: COUNT_KEY in d, _read_counts),
    PlanFileKind("vllm-ascend expert map", lambda d: "moe_layer_count" in d and "layer_list" in d, _read_vllm_ascend),
)


def load_plan_file(path: str | os.PathLike, target: PlanTarget) -> Plan:
    """Read any placement file routelens knows as a :class:`Plan` fitted to ``target``'s layers.

    Raises:
        PlanError: unreadable or hostile file, an unknown kind, or a placement that does not fit.
    """
    path = Path(path)
    data = read_placement_file(path)
    for kind in PLAN_FILE_KINDS:
        if kind.matches(data):
            plan = kind.read(data, path, target)
            plan.check_fits(list(target.layers), target.num_experts)
            return plan  # callers compare plan.num_gpus with their cluster and say so in their words
    known = ", ".join(kind.name for kind in PLAN_FILE_KINDS)
    raise PlanError(f"{path} is none of: {known} (keys {sorted(map(str, data))[:5]})")


def _sidecar_path(path: Path) -> Path:
    return path.with_suffix(".plan.json")


def _sidecar_plan(path: Path) -> Plan | None:
    """The routelens plan ``place`` wrote next to an engine file, if it is there and readable."""
    sidecar = _sidecar_path(path)
    if sidecar == path or not sidecar.is_file():
        return None
    try:
        return Plan.load(sidecar)
    except PlanError:
        return None
