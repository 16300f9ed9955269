"""Expert placement: a cost model of the cluster, baselines, the routelens optimizer, plan exports.

Trace → :func:`place` → :class:`~routelens.plan.Plan` → :func:`compare_plans` / :func:`export_plan`.

The traffic of a placement is defined once, in :mod:`routelens.placement.traffic`, and shared by
the cost model, the re-routing metrics and the distributed runner (same tokens, same bytes):

- :func:`~routelens.placement.traffic.token_source_gpu` — token ``t`` of ``T`` starts on GPU ``t·G // T``;
- :func:`~routelens.placement.traffic.assign_replicas` — ``[T, k]`` GPU serving each (token, slot)
  under a replica policy of :data:`~routelens.placement.traffic.REPLICA_POLICIES`;
- :func:`~routelens.placement.traffic.dispatch_matrix` — ``[G, G]`` token copies sent from GPU a to b;
- :func:`~routelens.placement.traffic.gpus_per_token` — mean distinct GPUs serving a token.

:mod:`routelens.placement.cost` turns that traffic into time (:func:`~routelens.placement.cost.layer_traffic`,
:func:`~routelens.placement.cost.estimate_time`).
"""

from .baselines import contiguous_plan, contiguous_table, eplb_table, greedy_table, random_table
from .cost import CostModel, LayerTraffic, estimate_time, layer_metrics, layer_traffic, score_table
from .eplb import rebalance_experts
from .evaluate import compare_plans, eval_token_index, format_comparison, score_plan
from .export import EXPORT_FORMATS, FORMATS, export_plan
from .methods import LayerFit, PlacementMethod, baseline_names, get_method, load_only_names, method_names
from .optimizer import optimize_layer
from .objectives import DEFAULT_OBJECTIVE, Objective, get_objective, objective_names
from .place import BASELINES, METHODS, PlaceSettings, fit_baselines, fit_token_range, place
from .replica_search import add_replicas
from .topology import LINKS, Topology, make_topology
from .traffic import (POLICIES, REPLICA_POLICIES, ReplicaPolicy, assign_replicas, dispatch_matrix,
                      dispatch_matrix_from_dest, gpus_per_token, hit_matrix, route_tokens, token_source_gpu)

__all__ = [
    "BASELINES", "DEFAULT_OBJECTIVE", "EXPORT_FORMATS", "FORMATS", "LINKS", "METHODS", "POLICIES", "REPLICA_POLICIES",
    "CostModel", "LayerFit", "LayerTraffic", "Objective", "PlaceSettings", "PlacementMethod", "ReplicaPolicy", "Topology",
    "baseline_names", "get_method", "get_objective", "load_only_names", "method_names", "objective_names",
    "add_replicas", "fit_baselines",
    "assign_replicas", "compare_plans", "contiguous_plan", "contiguous_table", "dispatch_matrix",
    "dispatch_matrix_from_dest", "eplb_table", "estimate_time", "eval_token_index", "export_plan",
    "fit_token_range", "format_comparison", "gpus_per_token", "greedy_table", "hit_matrix", "layer_metrics",
    "layer_traffic",
    "make_topology", "optimize_layer", "place", "random_table", "rebalance_experts",
    "route_tokens", "score_plan", "score_table", "token_source_gpu",
]
