"""The placement the GPU policies and every GPU metric are fitted on, from calibration routing.

C2R takes its collaborator groups from the co-activation counts of a calibration run
(:func:`routelens.graphs.coactivation_counts`); the GPU policies (``gpu-limited``,
``gpu-adaptive``) and the GPU metrics need a placement, which :func:`fit_plan` makes with the
routelens placement optimizer (:func:`routelens.placement.optimizer.optimize_layer`).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..errors import InputError
from ..placement.cost import CostModel
from ..placement.optimizer import optimize_layer
from ..placement.topology import make_topology
from ..plan import Plan


def fit_plan(topk_ids: Mapping[str, np.ndarray], num_experts: int, num_gpus: int, seed: int = 0,
             config: Mapping[str, Any] | None = None) -> Plan:
    """A placement of each layer's experts on ``num_gpus`` GPUs (one node) from calibration routing.

    The routelens placement optimizer minimises the cost model's dispatch + compute bottleneck,
    co-activation aware, on each layer's calibration choices.

    Args:
        topk_ids: layer -> ``[T, K]`` experts chosen on calibration tokens.
        num_experts: ``E``; num_gpus: ``G`` (``E % G == 0``: no replicas).
        seed: the optimizer's seed.
        config: the model's config summary (``hidden_size``, ``moe_intermediate_size``) for the cost model.

    Returns:
        A :class:`~routelens.plan.Plan` without replicas (``method="routelens"``).

    Raises:
        InputError: ``E`` is not a multiple of ``G``.
    """
    if num_experts % num_gpus:
        raise InputError(f"{num_experts} experts cannot be split evenly over --gpus {num_gpus}")
    topology = make_topology(num_gpus=num_gpus)
    cost = CostModel.for_model(dict(config or {}), topology)
    tables = {layer: optimize_layer(np.asarray(ids), num_experts, num_gpus, cost, seed=seed).table
              for layer, ids in topk_ids.items()}
    return Plan(tables, num_experts, method="routelens", meta={"seed": seed, "fit": "reroute calibration"})
