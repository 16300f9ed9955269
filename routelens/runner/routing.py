"""Host-side routing for the replay: which tokens start where, and which GPU each expert choice goes to.

Everything here is numpy and deterministic, and the traffic itself — where tokens start, which
replica serves them, the predicted dispatch matrix — is :mod:`routelens.placement.traffic`, the
same functions the cost model and the re-routing metrics call. So "measured bytes == predicted
bytes" holds by construction, and the runner verifies it from the split sizes its All-to-All
really used.

Token layout (the cost model's): of ``T`` tokens on ``G`` GPUs, token ``t`` starts on GPU
``t·G // T``, so rank ``r`` holds the contiguous block ``[⌈r·T/G⌉, ⌈(r+1)·T/G⌉)``
(:func:`~routelens.placement.traffic.token_source_gpu`, :func:`~routelens.placement.traffic.rank_token_range`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError, PlanError
from ..placement import baselines
from ..placement.cost import CostModel, estimate_time, layer_traffic
from ..placement.topology import as_topology
from ..placement.traffic import (assign_replicas, dispatch_matrix_from_dest, plan_topology, rank_token_range,
                                 token_source_gpu)
from ..plan import Plan

__all__ = ["CONTIGUOUS", "LayerRoute", "contiguous_plan", "effective_links", "plan_routes", "predicted_all_to_all_ms",
           "prediction_topology", "rank_token_range", "tiled_token_index", "token_source_gpu"]

CONTIGUOUS = "contiguous"
LINK_FIELDS = ("intra_gbps", "intra_latency_us", "inter_gbps", "inter_latency_us")


def tiled_token_index(trace_tokens: int, num_tokens: int) -> np.ndarray:
    """``[num_tokens]`` trace rows to replay: the trace's tokens in order, repeated as often as needed.

    Used by ``--tokens-per-rank`` to replay a trace at a size it does not have: the routing
    statistics (load, co-activation) stay those of the trace.

    Raises:
        InputError: the trace holds no tokens, or ``num_tokens`` is not positive.
    """
    if trace_tokens <= 0:
        raise InputError("the trace holds no tokens")
    if num_tokens <= 0:
        raise InputError(f"token count must be positive, got {num_tokens}")
    return np.arange(num_tokens, dtype=np.int64) % trace_tokens


def contiguous_plan(layers: list[str], num_experts: int, num_gpus: int) -> Plan:
    """The bench's baseline: :func:`routelens.placement.baselines.contiguous_plan` without replicas.

    Raises:
        PlanError: ``num_experts`` is not a multiple of ``num_gpus`` (the bench has no redundant slots).
    """
    if num_experts % num_gpus:
        raise PlanError(f"{num_experts} experts cannot be split evenly over {num_gpus} GPUs")
    return baselines.contiguous_plan(layers, num_experts, num_gpus)


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
    topo = as_topology(topology, num_gpus)
    return {name: float(getattr(topo, name)) for name in LINK_FIELDS}


def predicted_all_to_all_ms(source_gpu: np.ndarray, dest_gpu: np.ndarray, num_gpus: int, topology: dict,
                            bytes_per_token: int) -> float:
    """Cost-model time (ms) of one layer's dispatch + combine.

    :func:`routelens.placement.cost.estimate_time`: each GPU's link class is busy
    ``latency + max(sent, received) · bytes / bandwidth`` and the busiest one ends the All-to-All;
    the combine takes as long.

    Args:
        source_gpu: ``[T]``; dest_gpu: ``[T, k]`` (-1 = dropped slot); num_gpus: ``G``.
        topology: :func:`prediction_topology`; bytes_per_token: bytes of one token on the wire.
    """
    topo = as_topology(topology, num_gpus)
    traffic = layer_traffic(source_gpu, dest_gpu, topo, num_gpus)
    return float(estimate_time(traffic, CostModel(topology=topo, token_bytes=float(bytes_per_token)))["a2a_s"]) * 1e3


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
    """Routes of every replayed layer of ``trace`` under ``plan`` for the trace rows ``token_index``.

    Tokens start as :func:`~routelens.placement.traffic.token_source_gpu` says; replicas are
    chosen by the plan's replica policy on the plan's nodes
    (:func:`~routelens.placement.traffic.assign_replicas`, :func:`~routelens.placement.traffic.plan_topology`).

    Raises:
        PlanError: a chosen expert is on no GPU of the plan, or the plan's topology does not fit it.
    """
    source = token_source_gpu(token_index.size, plan.num_gpus)
    topology = plan_topology(plan)
    routes = []
    for layer in layers:
        ids = np.asarray(trace.topk_ids(layer), dtype=np.int64)[token_index]
        weights = np.asarray(trace.topk_weights(layer), dtype=np.float32)[token_index]
        dest = assign_replicas(ids, source, plan.gpu_experts[layer], plan.replica_policy, topology)
        routes.append(LayerRoute(layer, ids, weights, dest, dispatch_matrix_from_dest(source, dest, plan.num_gpus)))
    return routes
