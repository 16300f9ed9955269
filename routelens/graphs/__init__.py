"""Graphs: expert load, co-activation, collaboration vs specialization, communities, cross-layer affinity.

Trace → :func:`analyze_trace` → :class:`Analysis` → :func:`save_analysis` (``RUN/analysis/``) →
:func:`load_analysis` (dashboard, placement, re-routing). :func:`ensure_analysis` does the middle
steps only when the trace changed. The kernels (:func:`coactivation_counts`,
:func:`transition_counts`) and metrics are pure functions over numpy arrays, usable on their own.

Definitions follow C2R (Zhang et al., "Advancing MoE Efficiency: A Collaboration-Constrained Routing
(C2R) Strategy for Better Expert Parallelism Design", NAACL 2025, arXiv:2504.01337); see
:mod:`routelens.graphs.metrics` for the per-expert scores routelens defines on top of its matrix.
"""

from .analysis import SCORE_NAMES, Analysis
from .communities import coactivation_graph, detect_communities, export_graph, graph_to_json
from .compare import compare_analyses, format_comparison
from .counts import coactivation_counts, load_counts, load_mass, transition_counts
from .layer import LayerAccumulator, LayerCounts, count_chunk, finish_layer
from .metrics import (
    ROLE_NAMES,
    conditional_probability,
    effective_collaborators,
    expert_roles,
    gini,
    jaccard,
    lift,
    load_imbalance,
    pmi,
    top_t_partners,
    top_t_share,
    top_t_stability,
    transition_predictability,
)
from .pipeline import analyze_trace, parse_layers
from .report import format_layer_table
from .store import ensure_analysis, load_analysis, save_analysis
from .tokens import TOKEN_CLASSES, token_class

__all__ = [
    "Analysis", "SCORE_NAMES", "ROLE_NAMES", "TOKEN_CLASSES",
    "analyze_trace", "ensure_analysis", "load_analysis", "save_analysis", "parse_layers",
    "coactivation_counts", "transition_counts", "load_counts", "load_mass",
    "LayerAccumulator", "LayerCounts", "count_chunk", "finish_layer",
    "conditional_probability", "jaccard", "lift", "pmi",
    "effective_collaborators", "top_t_share", "top_t_partners", "top_t_stability", "expert_roles",
    "gini", "load_imbalance", "transition_predictability",
    "detect_communities", "coactivation_graph", "export_graph", "graph_to_json",
    "token_class", "compare_analyses", "format_comparison", "format_layer_table",
]
