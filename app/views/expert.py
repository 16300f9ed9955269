"""Expert: who one expert works with, which tokens it serves, and where its tokens go next."""

from __future__ import annotations

import numpy as np
import streamlit as st

from rlapp import charts, data, routing_charts, ui

TOP_PARTNERS = 12

ui.header("Expert", "Who does this expert work with, for which tokens, and where do its tokens go next?")
info, trace = ui.current_trace()
analysis = ui.require_analysis(info)
key = data.analysis_stamp(info.path)

left, right = st.columns([3, 1])
with left:
    layer = ui.layer_slider(analysis)
num_experts = analysis.experts_of(layer)
load = analysis.load(layer)
with right:
    expert = int(st.number_input("Expert", min_value=0, max_value=num_experts - 1, value=int(np.argmax(load)), step=1,
                                 key="expert", bind="query-params", persist_state="session",
                                 help="Default: the layer's busiest expert"))

p = analysis.position(layer)
role = analysis.roles(layer)[expert]
community = analysis.score(layer, "community")
summary = analysis.summary(layer)
mean_load = float(load.mean()) if load.size else 0.0

ROLE_BADGE = {"specialized": ("orange", ":material/hub:"), "collaborative": ("blue", ":material/groups:"),
              "unused": ("gray", ":material/block:")}
color, icon = ROLE_BADGE.get(role, ("gray", None))
st.badge(f"Expert {expert} of layer {layer} is {role}", icon=icon, color=color)
cols = st.columns(6)
cols[0].metric("Tokens", ui.fmt_int(load[expert]),
               help=f"{load[expert] / max(load.sum(), 1):.1%} of the layer's routing slots")
cols[1].metric("Load vs mean", ui.fmt_float(load[expert] / mean_load if mean_load else None, 2, "×"))
cols[2].metric("Stability", ui.fmt_float(analysis.score(layer, "stability")[expert]),
               help="Overlap of its Top-T partners between the first and second half of the tokens (1 = same partners)")
cols[3].metric("Specialization", ui.fmt_float(analysis.score(layer, "specialization")[expert]),
               help=f"Share of its co-activations that go to its Top-{summary.get('top_t')} partners "
                    f"(chance {ui.fmt_float(summary.get('specialization_chance'))})")
cols[4].metric("Effective partners", ui.fmt_float(analysis.score(layer, "effective_collaborators")[expert], 1),
               help="exp(entropy of its partner distribution)")
cols[5].metric("Community", int(community[expert]) if community[expert] >= 0 else "–",
               help=f"{int((community == community[expert]).sum())} experts in it")

if load[expert] == 0:
    st.info(f"Expert {expert} received no tokens in layer {layer} of this run.")
    st.stop()

colors = routing_charts.community_colors(community)
left, right = st.columns(2)
with left:
    conditional = data.layer_matrix(info.path, key, layer, "conditional")[expert].copy()
    lift = data.layer_matrix(info.path, key, layer, "lift")[expert]
    conditional[expert] = -1.0
    partners = [int(j) for j in np.argsort(-conditional)[:TOP_PARTNERS] if conditional[j] > 0]
    st.plotly_chart(charts.ranked_bars(
        [f"expert {j}" for j in partners], [conditional[j] for j in partners],
        f"Collaborators: P(partner | expert {expert})", "share of its tokens that also go to the partner",
        colors=[colors[j] for j in partners], hover=[f"expert {j} · lift {lift[j]:.2f} · community {community[j]}" for j in partners],
        reference=(analysis.top_k - 1) / max(num_experts - 1, 1), reference_label="chance"), width="stretch")
    st.caption("Coloured by community; chance = (k − 1) / (E − 1), a random partner's share.")
with right:
    top_tokens = analysis.top_tokens(layer)
    if top_tokens is None:
        st.info("No token statistics: the analysis ran without the model's tokenizer (a local model folder).")
    else:
        st.markdown(f"##### Tokens expert {expert} serves most, relative to their frequency")
        st.dataframe([{"token": charts.visible_token(t.get("text", "")), "id": t["id"], "count": t["count"],
                       "share of its tokens": t["share"], "lift": t["lift"]} for t in top_tokens[expert]],
                     hide_index=True, width="stretch", height=min(38 + 35 * len(top_tokens[expert]), 460),
                     column_config={"share of its tokens": st.column_config.NumberColumn(format="percent"),
                                    "lift": st.column_config.NumberColumn(format="%.1f×")})

layer_labels = [charts.short_layer(name, j) for j, name in zip(analysis.layers, analysis.layer_names)]
left, right = st.columns(2)
with left:
    classes = analysis.class_lift(layer)
    if classes is None:
        st.info("No token classes: the analysis ran without the model's tokenizer.")
    else:
        share, class_lifts = classes
        names = analysis.tokens.get("classes") if analysis.tokens else None
        names = names or [f"class {c}" for c in range(share.shape[1])]
        order = np.argsort(-class_lifts[expert])
        st.plotly_chart(charts.ranked_bars(
            [names[c] for c in order], [class_lifts[expert][c] for c in order], "Token classes (lift over their frequency)",
            "lift (1 = as often as in the text)", hover=[f"{names[c]}: {share[expert][c]:.1%} of its tokens" for c in order],
            value_format=".2f", reference=1.0, reference_label="base rate"), width="stretch")
with right:
    relative = analysis.load_tokens[:, expert] / np.maximum(analysis.load_tokens.mean(axis=1), 1e-12)
    st.plotly_chart(charts.layer_bars(layer_labels, relative, f"Expert id {expert} in every layer (load × mean)",
                                      "load / layer mean", highlight=p, reference=1.0, reference_label="mean"),
                    width="stretch")
    st.caption("Each layer has its own experts: id {0} elsewhere is a different network, shown for scale.".format(expert))

st.markdown("##### Across layers: where its tokens go next, and where they came from")
left, right = st.columns(2)
with left:
    successors = analysis.next_layer_probability(layer)
    if successors is None:
        st.caption("This is the last analysed MoE layer: no successors.")
    else:
        row = successors[expert]
        best = [int(j) for j in np.argsort(-row)[:TOP_PARTNERS] if row[j] > 0]
        st.plotly_chart(charts.ranked_bars([f"expert {j}" for j in best], [row[j] for j in best],
                                           f"Successors in layer {layer + 1}", "share of its tokens' next-layer slots",
                                           reference=1 / successors.shape[1], reference_label="chance"),
                        width="stretch")
with right:
    previous = layer - 1
    if previous not in analysis.layers or analysis.transition(previous) is None:
        st.caption("No analysed layer before this one: no predecessors.")
    else:
        from routelens.graphs.metrics import next_layer_probability

        column = next_layer_probability(analysis.transition(previous).T)[expert]
        best = [int(j) for j in np.argsort(-column)[:TOP_PARTNERS] if column[j] > 0]
        st.plotly_chart(charts.ranked_bars([f"expert {j}" for j in best], [column[j] for j in best],
                                           f"Predecessors in layer {previous}", "share of its tokens' previous-layer slots",
                                           colors=charts.MUTED, reference=1 / len(column),
                                           reference_label="chance"), width="stretch")
