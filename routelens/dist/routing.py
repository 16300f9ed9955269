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
    """``[T]`` GPU each token starts on: ``t·G // T`` (contiguous blocks, sizes differ by at most 1)."""
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
    """``[T, k]`` GPU each expert choice is served on, replicas chosen by the plan's replica policy.

    Args:
        topk_ids: ``[T, k]`` expert ids of the tokens (a trace layer, possibly tiled).
        source_gpu: ``[T]`` GPU each token starts on (:func:`token_source_gpu`).
        plan: the placement; ``plan.gpu_experts[layer]`` is ``[G, S]``.

    Raises:
        PlanError: the plan has replicas and no replica policy implementation is installed.
    """
    topk_ids = np.asarray(topk_ids, dtype=np.int64)
    table = plan.gpu_experts[layer]
    cost = _placement_cost()
    if cost is not None and hasattr(cost, "assign_replicas"):
        dest = cost.assign_replicas(topk_ids, np.asarray(source_gpu), table, plan.replica_policy,
                                    _plan_topology(plan))
        return np.asarray(dest, dtype=np.int64)
    if table.size != plan.num_experts:
        raise PlanError(f"layer {layer} has replicas: replaying it needs routelens.placement (replica policy "
                        f"'{plan.replica_policy}'), which this build lacks")
    return plan.expert_to_gpu(layer)[topk_ids]


def predicted_dispatch_matrix(topk_ids: np.ndarray, source_gpu: np.ndarray, dest_gpu: np.ndarray,
                              plan: Plan, layer: str) -> np.ndarray:
    """``[G, G]`` token copies GPU ``i`` sends GPU ``j`` in the dispatch, as the cost model predicts it.

    A token counts once per distinct destination GPU other than its own (the C2R paper's
    "one copy per device" dispatch); the diagonal is 0. Uses ``routelens.placement.cost.dispatch_matrix``
    when installed, else counts the same definition here.
    """
    cost = _placement_cost()
    num_gpus = plan.num_gpus
    if cost is not None and hasattr(cost, "dispatch_matrix"):
        try:
            matrix = cost.dispatch_matrix(np.asarray(topk_ids), np.asarray(source_gpu), plan.gpu_experts[layer],
                                          plan.replica_policy, _plan_topology(plan))
            return np.asarray(matrix, dtype=np.int64)
        except TypeError:
            pass  # other signature: the definition below is the documented one
    return dispatch_matrix_from_destinations(source_gpu, dest_gpu, num_gpus)


def dispatch_matrix_from_destinations(source_gpu: np.ndarray, dest_gpu: np.ndarray, num_gpus: int) -> np.ndarray:
    """``[G, G]`` copies from source to destination GPU: one per token and distinct other destination.

    Args:
        source_gpu: ``[T]``; dest_gpu: ``[T, k]``.
    """
    source_gpu = np.asarray(source_gpu, dtype=np.int64)
    dest_gpu = np.asarray(dest_gpu, dtype=np.int64)
    hit = np.zeros((source_gpu.size, num_gpus), dtype=bool)
    hit[np.arange(source_gpu.size)[:, None], dest_gpu] = True
    hit[np.arange(source_gpu.size), source_gpu] = False
    matrix = np.zeros((num_gpus, num_gpus), dtype=np.int64)
    for src in range(num_gpus):
        matrix[src] = hit[source_gpu == src].sum(0)
    return matrix


def _plan_topology(plan: Plan):
    """The plan's stored topology (dict) for the cost model, or None."""
    return plan.meta.get("topology")


@dataclass
class LayerRoute:
    """One MoE layer's replay input for every token (all ranks compute the same arrays).

    Attributes:
        topk_ids: ``[T, k]`` expert ids.
        topk_weights: ``[T, k]`` float32 routing weights.
        dest_gpu: ``[T, k]`` GPU serving each choice.
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
        if dest.shape != ids.shape or dest.min() < 0 or dest.max() >= plan.num_gpus:
            raise PlanError(f"layer {layer}: replica assignment returned GPUs outside [0, {plan.num_gpus})")
        slots = slot_of_expert(plan.gpu_experts[layer], plan.num_experts)
        if np.any(slots[dest, ids] < 0):
            raise PlanError(f"layer {layer}: a token was sent to a GPU that holds none of its expert")
        routes.append(LayerRoute(layer, ids, weights, dest, predicted_dispatch_matrix(ids, source, dest, plan, layer)))
    return routes
