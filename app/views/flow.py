"""Cross-layer flow: where a layer's tokens go in the next layer, expert to expert or community to community."""

from __future__ import annotations

import numpy as np
import streamlit as st

from rlapp import charts, routing_charts, ui

ui.header("Cross-layer flow", "When a token leaves one layer's experts, which experts does it meet in the next layer?")
info, trace = ui.current_trace()
analysis = ui.require_analysis(info)

# Pairs of analysed layers that follow each other in the trace (transitions go to the next trace layer).
linked = [j for j in analysis.layers if j + 1 in analysis.layers and analysis.transition(j) is not None]
if not linked:
    st.info("The analysis holds no two consecutive MoE layers, so there is no flow to draw.")
    st.code(f"routelens analyze {info.path} --layers 0-{len(trace.layers) - 1}", language="bash")
    st.stop()

left, middle, right = st.columns([2, 1, 1])
with left:
    if len(linked) == 1:
        first, last = linked[0], linked[0] + 1
        st.caption(f"Layers {first} → {last}")
    else:
        default_last = linked[min(len(linked), 3) - 1] + 1
        first, last = st.select_slider("Layers", options=linked + [linked[-1] + 1], value=(linked[0], default_last),
                                       key="flow_layers")
        if first == last:
            last = first + 1 if first + 1 in analysis.layers else first
with middle:
    by = st.segmented_control("Pool experts by", ["community", "expert"], default="community", required=True, key="flow_by",
                              bind="query-params")
with right:
    if by == "expert":
        max_links = st.slider("Strongest links per layer pair", 10, 200, 40, 10, key="flow_links",
                              help="Expert-to-expert flow has E × E links; only the strongest are drawn")
    else:
        max_links = None

span = [j for j in range(first, last + 1) if j in analysis.layers]
if any(j + 1 not in analysis.layers for j in span[:-1]):
    st.warning("Some layers in this range were not analysed; pick a range of consecutive analysed layers.")
    st.stop()

groups, names, colors = [], [], []
for j in span:
    community = analysis.score(j, "community")
    if by == "community":
        members = analysis.communities(j)
        groups.append(community)
        names.append([f"L{j} · C{c} ({len(m)} experts)" for c, m in enumerate(members)])
        colors.append([charts.QUALITATIVE[c % len(charts.QUALITATIVE)] for c in range(len(members))])
    else:
        e = analysis.experts_of(j)
        groups.append(np.where(analysis.load(j) > 0, np.arange(e), -1))
        names.append([f"L{j} · expert {i}" for i in range(e)])
        colors.append(routing_charts.community_colors(community))
transitions = [analysis.transition(j) for j in span[:-1]]
st.plotly_chart(routing_charts.flow_sankey(span, transitions, groups, names, colors, max_links=max_links), width="stretch")
st.caption("Link width = token slot pairs: a token using experts a in layer l and b in layer l + 1 adds one to a → b "
           "(k × k per token). Colours are each layer's co-activation communities; communities are found per layer, "
           "so C1 in one layer has nothing to do with C1 in the next.")

rows = []
for j in span[:-1]:
    nl = analysis.summary(j).get("next_layer") or {}
    rows.append({"from → to": f"{j} → {j + 1}", "top-k coverage": nl.get("topk_coverage"),
                 "chance": nl.get("chance_coverage"), "NMI": nl.get("nmi")})
st.dataframe(rows, hide_index=True, width="stretch",
             column_config={"top-k coverage": st.column_config.NumberColumn(
                                format="percent", help="How often a token's next-layer experts are among the top-k "
                                "successors of its experts here"),
                            "chance": st.column_config.NumberColumn(format="percent"),
                            "NMI": st.column_config.NumberColumn(format="%.3f", help="normalised mutual information "
                                                                 "between consecutive layers' expert choices")})
