"""Host-side routing for the replay: which tokens start where, and which GPU each expert choice goes to.

Everything here is numpy and deterministic, so the distributed runner and the cost model see the
same tokens and the same destinations. The replica choice and the predicted traffic come from
:mod:`routelens.placement.cost` (``assign_replicas``, ``dispatch_matrix``) when it is installed, so
"measured bytes == predicted bytes" holds by construction and the runner verifies it from the split
sizes its All-to-All really used. Without it, plans without replicas still work (expert → its
only GPU).

Token layout (the same convention as the cost model): of ``T`` tokens on ``G`` GPUs, token ``t``
starts on GPU ``t·G // T``, so rank ``r`` holds the contiguous block ``[⌈r·T/G⌉, ⌈(r+1)·T/G⌉)``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, PlanError
from ..plan import Plan

CONTIGUOUS = "contiguous"


def token_source_gpu(num_tokens: int, num_gpus: int) -> np.ndarray:
    """``[T]`` GPU each token starts on: ``t·G // T`` (contiguous blocks, sizes differ by at most 1).

    The cost model's ``routelens.placement.cost.token_source_gpu`` follows the same rule (tested).
    """
    return (np.arange(num_tokens, dtype=np.int64) * num_gpus) // max(num_tokens, 1)


def rank_token_range(num_tokens: int, num_gpus: int, rank: int) -> tuple[int, int]:
    """``(start, end)`` of the tokens rank ``rank`` holds under :func:`token_source_gpu`."""
    start = -(-rank * num_tokens // num_gpus)
    end = -(-(rank + 1) * num_tokens // num_gpus)
    return start, end


def tiled_token_index(trace_tokens: int, num_tokens: int) -> np.ndarray:
    """``[num_tokens]`` trace rows to replay: the trace's tokens in order, repeated as often as needed.

    Used by ``--tokens-per-rank`` to replay a trace at a size it does not have: the routing
    statistics (load, co-activation) stay those of the trace.
    """
    if trace_tokens <= 0:
        raise InputError("the trace holds no tokens")
    if num_tokens <= 0:
        raise InputError(f"token count must be positive, got {num_tokens}")
    return np.arange(num_tokens, dtype=np.int64) % trace_tokens


def _placement_cost():
    """``routelens.placement.cost`` or None when this build has no placement package yet."""
    try:
        return importlib.import_module("routelens.placement.cost")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("routelens.placement"):
            return None
        raise


def contiguous_plan(layers: list[str], num_experts: int, num_gpus: int) -> Plan:
    """The baseline layout: experts ``[g·E/G, (g+1)·E/G)`` on GPU ``g`` in every layer.

    Uses the placement package's own baseline when it has one, so both sides agree on the name.
    """
    if num_experts % num_gpus:
        raise PlanError(f"{num_experts} experts cannot be split evenly over {num_gpus} GPUs")
    placement = None
    try:
        placement = importlib.import_module("routelens.placement.baselines")
    except ModuleNotFoundError as exc:
        if not (exc.name and exc.name.startswith("routelens.placement")):
            raise
    build = getattr(placement, "contiguous_plan", None) if placement else None
    if build is not None:
        try:
            return build(layers=layers, num_experts=num_experts, num_gpus=num_gpus)
        except TypeError:
            pass  # a different signature: fall back to the definition below, which it must equal
    table = np.arange(num_experts, dtype=np.int64).reshape(num_gpus, num_experts // num_gpus)
    return Plan(gpu_experts={layer: table.copy() for layer in layers}, num_experts=num_experts,
                replica_policy="first", method=CONTIGUOUS)


def slot_of_expert(table: np.ndarray, num_experts: int) -> np.ndarray:
    """``[G, E]`` slot index of expert ``e`` on GPU ``g``, -1 where ``g`` holds no replica of it."""
    table = np.asarray(table, dtype=np.int64)
    slots = np.full((table.shape[0], num_experts), -1, dtype=np.int64)
    rows = np.repeat(np.arange(table.shape[0]), table.shape[1])
    slots[rows, table.ravel()] = np.tile(np.arange(table.shape[1]), table.shape[0])
    return slots


def assign_destinations(topk_ids: np.ndarray, source_gpu: np.ndarray, plan: Plan, layer: str) -> np.ndarray:
    """``[T, k]`` GPU each expert choice is served on (-1 for a dropped slot), replicas chosen by the plan's policy.

    Args:
        topk_ids: ``[T, k]`` expert ids of the tokens (a trace layer, possibly tiled; -1 = dropped).
        source_gpu: ``[T]`` GPU each token starts on (:func:`token_source_gpu`).
        plan: the placement; ``plan.gpu_experts[layer]`` is ``[G, S]``.

    Raises:
        PlanError: the plan has replicas and no replica policy implementation is installed.
    """
    topk_ids = np.asarray(topk_ids, dtype=np.int64)
    table = plan.gpu_experts[layer]
    cost = _placement_cost()
    if cost is not None:
        dest = cost.assign_replicas(topk_ids, np.asarray(source_gpu), table, plan.replica_policy, _plan_topology(plan))
        return np.asarray(dest, dtype=np.int64)
    if table.size != plan.num_experts:
        raise PlanError(f"layer {layer} has replicas: replaying it needs routelens.placement (replica policy "
                        f"'{plan.replica_policy}'), which this build lacks")
    return np.where(topk_ids >= 0, plan.expert_to_gpu(layer)[np.maximum(topk_ids, 0)], -1)


def predicted_dispatch_matrix(source_gpu: np.ndarray, dest_gpu: np.ndarray, num_gpus: int) -> np.ndarray:
    """``[G, G]`` token copies GPU ``i`` sends GPU ``j`` in the dispatch, as the cost model counts them.

    A token counts once per distinct destination GPU other than its own (the C2R paper's
    "one copy per device" dispatch); the diagonal is 0. The cost model's own
    ``routelens.placement.cost.dispatch_matrix_from_dest`` when installed, else the same definition here.
    """
    cost = _placement_cost()
    if cost is not None:
        return np.asarray(cost.dispatch_matrix_from_dest(source_gpu, dest_gpu, num_gpus), dtype=np.int64)
    return dispatch_matrix_from_destinations(source_gpu, dest_gpu, num_gpus)


def dispatch_matrix_from_destinations(source_gpu: np.ndarray, dest_gpu: np.ndarray, num_gpus: int) -> np.ndarray:
    """``[G, G]`` copies from source to destination GPU: one per token and distinct other destination.

    Args:
        source_gpu: ``[T]``; dest_gpu: ``[T, k]`` (-1 = dropped slot, ignored).
    """
    source_gpu = np.asarray(source_gpu, dtype=np.int64)
    dest_gpu = np.asarray(dest_gpu, dtype=np.int64)
    hit = np.zeros((source_gpu.size, num_gpus + 1), dtype=bool)  # column G collects dropped slots
    hit[np.arange(source_gpu.size)[:, None], np.where(dest_gpu >= 0, dest_gpu, num_gpus)] = True
    hit[np.arange(source_gpu.size), source_gpu] = False
    matrix = np.zeros((num_gpus, num_gpus), dtype=np.int64)
    for src in range(num_gpus):
        matrix[src] = hit[source_gpu == src, :num_gpus].sum(0)
    return matrix


# Nominal link numbers when neither a calibration nor routelens.placement is at hand (NVLink 4).
_NOMINAL_LINK = {"intra_gbps": 450.0, "intra_latency_us": 2.0, "inter_gbps": 50.0, "inter_latency_us": 5.0}


def prediction_topology(plan: Plan, overrides: dict | None = None) -> dict:
    """The cluster the cost model predicts time for: the plan's stored topology, with measured overrides.

    Args:
        overrides: link numbers from ``routelens bench --calibrate`` (``intra_gbps``,
            ``intra_latency_us``, ...), which replace the plan's nominal ones.
    """
    topology = dict(plan.meta.get("topology") or {"num_nodes": plan.num_nodes, "gpus_per_node": plan.gpus_per_node})
    topology.update(overrides or {})
    return topology


def effective_links(topology: dict, num_gpus: int) -> dict[str, float]:
    """The link numbers the prediction uses (``intra_*``/``inter_*``): topology fields over the presets."""
    cost = _placement_cost()
    if cost is not None:
        from routelens.placement.topology import as_topology

        topo = as_topology(topology, num_gpus)
        return {k: float(getattr(topo, k)) for k in _NOMINAL_LINK}
    return {**_NOMINAL_LINK, **{k: float(v) for k, v in topology.items() if k in _NOMINAL_LINK}}


def predicted_all_to_all_ms(source_gpu: np.ndarray, dest_gpu: np.ndarray, num_gpus: int, topology: dict,
                            bytes_per_token: int) -> float:
    """Cost-model time (ms) of one layer's dispatch + combine.

    ``routelens.placement.cost.estimate_time`` when installed: each GPU's link class is busy
    ``latency + max(sent, received) · bytes / bandwidth`` and the busiest one ends the All-to-All;
    the combine takes as long. Without it, the same formula on one node.
    """
    cost = _placement_cost()
    if cost is not None:
        from routelens.placement.topology import as_topology

        topo = as_topology(topology, num_gpus)
        traffic = cost.layer_traffic(source_gpu, dest_gpu, topo, num_gpus)
        return float(cost.estimate_time(traffic, cost.CostModel(topology=topo, token_bytes=float(bytes_per_token)))["a2a_s"]) * 1e3
    links = {**_NOMINAL_LINK, **{k: v for k, v in topology.items() if k in _NOMINAL_LINK}}
    matrix = dispatch_matrix_from_destinations(source_gpu, dest_gpu, num_gpus)
    busiest = float(np.maximum(matrix.sum(0), matrix.sum(1)).max())
    if busiest == 0:
        return 0.0
    one_way = links["intra_latency_us"] * 1e-3 + busiest * bytes_per_token / (links["intra_gbps"] * 1e9) * 1e3
    return 2 * one_way


def _plan_topology(plan: Plan):
    """The plan's stored topology (dict) for the cost model, or None."""
    return plan.meta.get("topology")


@dataclass
class LayerRoute:
    """One MoE layer's replay input for every token (all ranks compute the same arrays).

    Attributes:
        topk_ids: ``[T, k]`` expert ids (-1 = slot dropped, e.g. by capacity-aware re-routing).
        topk_weights: ``[T, k]`` float32 routing weights.
        dest_gpu: ``[T, k]`` GPU serving each choice (-1 where dropped).
        predicted: ``[G, G]`` predicted dispatch copies (diagonal 0).
    """

    layer: str
    topk_ids: np.ndarray
    topk_weights: np.ndarray
    dest_gpu: np.ndarray
    predicted: np.ndarray


def plan_routes(trace, plan: Plan, layers: list[str], token_index: np.ndarray) -> list[LayerRoute]:
    """Routes of every replayed layer of ``trace`` under ``plan`` for the trace rows ``token_index``."""
    num_tokens = token_index.size
    source = token_source_gpu(num_tokens, plan.num_gpus)
    routes = []
    for layer in layers:
        ids = np.asarray(trace.topk_ids(layer), dtype=np.int64)[token_index]
        weights = np.asarray(trace.topk_weights(layer), dtype=np.float32)[token_index]
        dest = assign_destinations(ids, source, plan, layer)
        if dest.shape != ids.shape:
            raise PlanError(f"layer {layer}: replica assignment returned shape {dest.shape}, expected {ids.shape}")
        if np.any((dest < 0) != (ids < 0)) or dest.max(initial=0) >= plan.num_gpus:
            raise PlanError(f"layer {layer}: replica assignment returned GPUs outside [0, {plan.num_gpus})")
        slots = slot_of_expert(plan.gpu_experts[layer], plan.num_experts)
        kept = ids >= 0
        if np.any(slots[dest[kept], ids[kept]] < 0):
            raise PlanError(f"layer {layer}: a token was sent to a GPU that holds none of its expert")
        routes.append(LayerRoute(layer, ids, weights, dest, predicted_dispatch_matrix(source, dest, plan.num_gpus)))
    return routes
