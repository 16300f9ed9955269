"""Overview: what was captured, how fast, and how unevenly each layer spreads its tokens."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from rlapp import charts, data, ui

info, trace = ui.current_trace()
ui.header("Overview", "What did this run capture, and how balanced is each layer's routing?")

key = data.trace_stamp(info.path)
summary = ui.guarded(data.trace_summary, info.path, key, what="trace")
loads = ui.guarded(data.expert_loads, info.path, key, what="trace")
layer_labels = [charts.short_layer(name, j) for j, name in enumerate(trace.layers)]

st.subheader(Path(summary["model"]).name or "unknown model")
st.caption(" · ".join(str(x) for x in (summary["family"], summary["architecture"], summary["dtype"], summary["model"]) if x))

cols = st.columns(6)
cols[0].metric("MoE layers", summary["num_layers"])
cols[1].metric("Experts / layer", summary["num_experts"])
cols[2].metric("Top-k", summary["top_k"])
cols[3].metric("Tokens", ui.fmt_int(summary["num_tokens"]),
               help=f"{summary['num_sequences']:,} windows" + (f" of {summary['seq_len']} tokens" if summary.get("seq_len") else ""))
cols[4].metric("Capture speed", ui.fmt_float(summary["tokens_per_s"], 0, " tok/s") if summary["tokens_per_s"] else "–",
               help=(f"{summary['wall_s']:.1f} s on {summary['device'] or 'unknown device'}" if summary.get("wall_s") else None))
imbalance = summary["load_max_over_mean"]
cols[5].metric("Load imbalance", ui.fmt_float(imbalance["median"]),
               help="Busiest expert's tokens over the mean expert's, median over layers (1.00 = balanced)")

left, right = st.columns([2, 3])
with left:
    st.plotly_chart(charts.layer_imbalance_bars(layer_labels, [row["load_max_over_mean"] for row in summary["per_layer"]]),
                    width="stretch")
with right:
    st.plotly_chart(charts.load_heatmap(loads, layer_labels), width="stretch")

st.subheader("Per layer")
st.dataframe(
    [{"layer": label, "router": row["layer"], "max/mean load": row["load_max_over_mean"],
      "busiest expert": row["busiest_expert"], "unused experts": row["unused_experts"]}
     for label, row in zip(layer_labels, summary["per_layer"])],
    hide_index=True, width="stretch",
)
st.caption(f"Run folder `{info.path}` · {summary['num_shards']} shards · router logits "
           f"{'recorded' if summary['has_logits'] else 'not recorded'}"
           + (f" · text `{summary['text']}`" if summary.get("text") else ""))
