"""Runs compared: every run at a glance, and how routing differs between two runs of one architecture."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from rlapp import charts, data, ui

ui.header("Runs compared", "How do runs differ: another corpus, another checkpoint, a re-routed trace?")

runs_dir = str(Path(st.session_state.get("runs_dir", "runs")).resolve())
rows = data.runs_table(runs_dir)
table = pd.DataFrame([{
    "run": r["run"],
    "status": r["problem"] or ("analysed" if r.get("analysed") else "no analysis") + ("" if r.get("complete", True) else ", incomplete"),
    "model": Path(r.get("model") or "?").name, "family": r.get("family"), "layers": r.get("layers"),
    "experts": r.get("experts"), "top-k": r.get("top_k"), "tokens": r.get("tokens"),
    "capture tok/s": r.get("tokens_per_s"), "load max/mean (median)": r.get("load_max_over_mean"),
    "specialized (mean)": r.get("share_specialized"), "modularity (median)": r.get("modularity"),
} for r in rows])
st.dataframe(table, hide_index=True, width="stretch",
             column_config={"specialized (mean)": st.column_config.NumberColumn(format="percent"),
                            "capture tok/s": st.column_config.NumberColumn(format="%.0f"),
                            "load max/mean (median)": st.column_config.NumberColumn(format="%.2f"),
                            "modularity (median)": st.column_config.NumberColumn(format="%.2f")})

info, trace = ui.current_trace()  # after the table: a broken picked run still shows every other run
st.subheader(f"`{info.name}` against another run")
if not data.has_analysis(info.path):
    ui.missing("co-activation analysis", f"routelens analyze {info.path}")
    st.stop()
peers = [r for r in rows if r["path"] != info.path and not r["problem"]
         and (r.get("experts"), r.get("top_k"), r.get("layers")) == (trace.num_experts, trace.top_k, len(trace.layers))]
if not peers:
    st.info(f"No other run below `{runs_dir}` has this architecture ({len(trace.layers)} MoE layers, "
            f"{trace.num_experts} experts, top-{trace.top_k}). Capture the same model on other text to compare, e.g.:")
    st.code(f"routelens capture {trace.model_id or 'MODEL'} --text OTHER.txt --out {Path(runs_dir) / 'other'}\n"
            f"routelens analyze {Path(runs_dir) / 'other'}", language="bash")
    st.stop()
other_name = st.selectbox("Compare with", [r["run"] for r in peers], key="compare_with")
other = next(r for r in peers if r["run"] == other_name)
if not other.get("analysed"):
    ui.missing(f"analysis for `{other_name}`", f"routelens analyze {other['path']}")
    st.stop()

result = ui.guarded(data.comparison, info.path, data.analysis_stamp(info.path), other["path"],
                    data.analysis_stamp(other["path"]), what="comparison")
layer_rows = result["layers"]
labels = [f"layer {r['index']}" for r in layer_rows]
left, right = st.columns(2)
with left:
    st.plotly_chart(charts.grouped_layer_bars(labels, {
        "load": [r["load_tv"] for r in layer_rows],
        "co-activation pairs": [r["coactivation_tv"] for r in layer_rows],
        "partners (mean per expert)": [r["mean_partner_tv"] for r in layer_rows],
    }, "How far apart (total variation: 0 same, 1 disjoint)", "total variation", y_range=(0, 1)), width="stretch")
with right:
    st.plotly_chart(charts.grouped_layer_bars(labels, {
        "community agreement (NMI)": [r["community_nmi"] for r in layer_rows],
    }, "Do the same experts group together? (1 = same communities)", "NMI", y_range=(0, 1)), width="stretch")

paired = []
for r in layer_rows:
    for key, name in (("load_max_over_mean", "load max/mean"), ("share_specialized", "specialized share"),
                      ("mean_effective_collaborators", "effective partners"), ("modularity", "modularity")):
        paired.append({"layer": r["index"], "metric": name, info.name: r[key][0], other_name: r[key][1]})
st.markdown(f"##### Per layer: `{info.name}` → `{other_name}`")
st.dataframe(pd.DataFrame(paired).pivot(index="layer", columns="metric", values=[info.name, other_name]).round(3),
             width="stretch")

if result["experts"]:
    st.markdown("##### Experts that changed most")
    st.dataframe([{"layer": x["layer"], "expert": x["expert"], "role": " → ".join(x["role"]),
                   "partner shift (TV)": x["partner_tv"], "load share": " → ".join(f"{v:.1%}" for v in x["load_share"]),
                   f"top partners in {info.name}": ", ".join(map(str, x["top_partners"][0])),
                   f"top partners in {other_name}": ", ".join(map(str, x["top_partners"][1]))}
                  for x in result["experts"]], hide_index=True, width="stretch",
                 column_config={"partner shift (TV)": st.column_config.NumberColumn(format="%.3f")})
