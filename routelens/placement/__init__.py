"""Expert placement: a cost model of the cluster, baselines, the routelens optimizer, plan exports.

Trace → :func:`place` → :class:`~routelens.plan.Plan` → :func:`compare_plans` / :func:`export_plan`.

Pure functions the distributed runner and the re-routing policies share (same tokens, same bytes):

- :func:`~routelens.placement.cost.token_source_gpu` — token ``t`` of ``T`` starts on GPU ``t·G // T``;
- :func:`~routelens.placement.cost.assign_replicas` — ``[T, k]`` GPU serving each (token, slot);
- :func:`~routelens.placement.cost.dispatch_matrix` — ``[G, G]`` token copies sent from GPU a to b;
- :func:`~routelens.placement.cost.layer_traffic`, :func:`~routelens.placement.cost.estimate_time`,
  :func:`~routelens.placement.cost.gpus_per_token`.
"""

from .baselines import contiguous_plan, contiguous_table, eplb_table, greedy_table, random_table
from .cost import (POLICIES, CostModel, LayerTraffic, assign_replicas, dispatch_matrix, dispatch_matrix_from_dest,
                   estimate_time, gpus_per_token, layer_metrics, layer_traffic, score_table, token_source_gpu)
from .eplb import rebalance_experts
from .evaluate import compare_plans, eval_token_index, format_comparison, score_plan
from .export import EXPORT_FORMATS, FORMATS, export_plan
from .optimizer import optimize_layer
from .place import BASELINES, METHODS, PlaceSettings, fit_token_range, place
from .topology import LINKS, Topology, make_topology

__all__ = [
    "BASELINES", "EXPORT_FORMATS", "FORMATS", "LINKS", "METHODS", "POLICIES",
    "CostModel", "LayerTraffic", "PlaceSettings", "Topology",
    "assign_replicas", "compare_plans", "contiguous_plan", "contiguous_table", "dispatch_matrix",
    "dispatch_matrix_from_dest", "eplb_table", "estimate_time", "eval_token_index", "export_plan",
    "fit_token_range", "format_comparison", "gpus_per_token", "greedy_table", "layer_metrics", "layer_traffic",
    "make_topology", "optimize_layer", "place", "random_table", "rebalance_experts",
    "score_plan", "score_table", "token_source_gpu",
]
