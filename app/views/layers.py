"""Layer explorer: which experts work together in one MoE layer, and how broadly each collaborates."""

from __future__ import annotations

import numpy as np
import streamlit as st

from rlapp import charts, data, routing_charts, ui

MATRICES = {"lift": "lift (vs chance)", "conditional": "conditional P(j | i)", "counts": "raw counts"}

ui.header("Layer explorer", "Which experts work together in a layer, and which ones only with a few partners?")
info, trace = ui.current_trace()
analysis = ui.require_analysis(info)
key = data.analysis_stamp(info.path)

layer = ui.layer_slider(analysis)
summary = analysis.summary(layer)
load = analysis.load(layer)
community = analysis.score(layer, "community")
roles = analysis.roles(layer)

cols = st.columns(6)
cols[0].metric("Load max/mean", ui.fmt_float(summary.get("load_max_over_mean")),
               help="Busiest expert's tokens over the mean (1.00 = balanced)")
cols[1].metric("Load Gini", ui.fmt_float(summary.get("load_gini")), help="0 = even load, 1 = one expert takes all")
cols[2].metric("Specialized experts", ui.fmt_float(100 * (summary.get("share_specialized") or 0), 0, "%"),
               help=f"Experts whose Top-{summary.get('top_t')} partners take at least half their co-activations")
cols[3].metric("Effective partners", ui.fmt_float(summary.get("mean_effective_collaborators"), 1),
               help="Mean over experts of exp(entropy of its partner distribution)")
cols[4].metric("Communities", summary.get("num_communities", "–"),
               help=f"Louvain on the co-activation graph; modularity Q = {ui.fmt_float(summary.get('modularity'))}")
next_layer = summary.get("next_layer") or {}
cols[5].metric("Next-layer coverage", ui.fmt_float(100 * next_layer["topk_coverage"], 0, "%") if next_layer.get("topk_coverage") is not None else "–",
               help="How often a token's experts in the next layer are among the top-k successors of its experts here "
                    f"(chance {ui.fmt_float(100 * (next_layer.get('chance_coverage') or 0), 0, '%')})")

st.plotly_chart(charts.expert_load_bars(load, color=routing_charts.community_colors(community),
                                        title="Tokens per expert (coloured by community)"), width="stretch")

left, right = st.columns([1, 1])
with left:
    st.markdown("##### Co-activation matrix")
    kind = st.segmented_control("Show", list(MATRICES), default="lift", format_func=MATRICES.get, key="matrix_kind",
                                label_visibility="collapsed", required=True)
    matrix = data.layer_matrix(info.path, key, layer, kind)
    st.plotly_chart(routing_charts.coactivation_heatmap(matrix, routing_charts.community_order(community, load), community, kind),
                    width="stretch")
    st.caption("Experts reordered by community (outlined); a row's cells are its partners.")
with right:
    st.markdown("##### Co-activation graph")
    min_lift = st.slider("Draw pairs co-activated at least this many times more often than chance", 1.0, 4.0, 1.5, 0.25,
                         key="min_lift")
    layout = data.graph_layout(info.path, key, layer, float(min_lift))
    st.plotly_chart(routing_charts.coactivation_network(layout["xy"], layout["edges"], load, community, roles), width="stretch")
    st.caption(f"{len(layout['edges'])} pairs drawn · size = load · colour = community · ◆ specialized, ● collaborative")

st.markdown("##### Collaboration vs specialization")
st.plotly_chart(routing_charts.collaboration_specialization(
    analysis.score(layer, "collaboration"), analysis.score(layer, "specialization"), load, roles, community,
    chance=summary.get("specialization_chance"), threshold=analysis.meta.get("params", {}).get("threshold"),
    top_t=summary.get("top_t")), width="stretch")
st.caption("C2R (Zhang et al., NAACL 2025): a collaborative expert spreads its co-activations over many partners; "
           "a specialized one concentrates them on its Top-T group. Specialized experts are cheap to co-locate.")

with st.expander("Communities"):
    st.dataframe([{"community": c, "experts": ", ".join(map(str, members)), "size": len(members),
                   "tokens": int(np.asarray(load)[members].sum())}
                  for c, members in enumerate(analysis.communities(layer))], hide_index=True, width="stretch")
