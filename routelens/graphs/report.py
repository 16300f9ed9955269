"""The per-layer summary table ``routelens analyze`` prints (one row per layer)."""

from __future__ import annotations

from .analysis import Analysis

COLUMNS = (
    ("#", 4, "index", "{:d}"),
    ("max/mean", 8, "load_max_over_mean", "{:.2f}"),
    ("gini", 5, "load_gini", "{:.2f}"),
    ("spec%", 5, "share_specialized", "{:.0%}"),
    ("n_eff", 5, "mean_effective_collaborators", "{:.1f}"),
    ("stable", 6, "mean_stability", "{:.2f}"),
    ("comm", 4, "num_communities", "{:d}"),
    ("Q", 5, "modularity", "{:.2f}"),
    ("H/lnE", 5, "router_entropy_normalized", "{:.2f}"),
    ("next", 5, None, "{:.2f}"),
)


def _cell(row: dict, key: str | None, fmt: str) -> str:
    value = row.get(key) if key else (row.get("next_layer") or {}).get("topk_coverage")
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def format_layer_table(analysis: Analysis) -> str:
    """A compact text table: one row per analysed layer, with a legend.

    Columns: layer index; load ``max/mean`` (1.00 = balanced; the straggler ratio) and Gini; share
    of used experts that are specialized; mean effective number of collaborators; mean Top-T
    stability; Louvain communities and modularity ``Q``; mean router entropy over ``ln E`` (``-``
    without saved logits); ``next``: share of transitions to the next layer that hit one of the
    source expert's ``k`` likeliest successors (chance = ``k / E``).
    """
    t = analysis.meta.get("trace", {})
    first = analysis.layer_summaries[0] if analysis.layer_summaries else {}
    lines = [
        f"analysis  {t.get('model') or '?'}: {len(analysis.layers)} of {t.get('num_layers', '?')} MoE layers, "
        f"E={analysis.num_experts}, k={analysis.top_k}, {analysis.num_tokens:,} tokens",
        f"roles     specialized = Top-{first.get('top_t', '?')} share >= "
        f"{analysis.meta.get('params', {}).get('threshold', 0.5)} (chance {first.get('specialization_chance', 0):.2f}); "
        f"next-layer chance {analysis.top_k / max(analysis.num_experts, 1):.2f}",
    ]
    lines.append("  ".join(f"{name:>{width}}" for name, width, _, _ in COLUMNS))
    for row in analysis.layer_summaries:
        lines.append("  ".join(f"{_cell(row, key, fmt):>{width}}" for _, width, key, fmt in COLUMNS))
    return "\n".join(lines)
