"""Overview: what was captured, how fast, and how each layer spreads its tokens over its experts."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from rlapp import charts, data, ui

ui.header("Overview", "What did this run capture, and how balanced and how specialized is each layer's routing?")
info, trace = ui.current_trace()

manifest = trace.manifest
settings = manifest.get("settings", {}) or {}
stats = manifest.get("stats", {}) or {}
model = manifest.get("model", {}) or {}
st.subheader(Path(trace.model_id).name or "unknown model")
st.caption(" · ".join(str(x) for x in (trace.family, model.get("architecture"), manifest.get("dtype"), trace.model_id) if x))
source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
if source.get("engine"):
    version = f" {source['version']}" if source.get("version") else ""
    st.markdown(f"**Imported from {source['engine']}{version}** — {trace.source_label}, "
                f"{len(source.get('files') or [])} file(s)"
                + (f", ranks {source['rank_layout']}" if source.get("rank_layout") else "") + ".")
    for caveat in source.get("caveats") or []:
        st.caption(f"ⓘ {caveat}")

result = ui.optional_analysis(info)
if result is not None:
    layer_labels = [charts.short_layer(name, j) for j, name in zip(result.layers, result.layer_names)]
    loads = result.load_tokens
    imbalance = [s.get("load_max_over_mean") for s in result.layer_summaries]
    specialized = [s.get("share_specialized") for s in result.layer_summaries]
else:
    summary = ui.guarded(data.trace_summary, info.path, data.trace_stamp(info.path), what="trace")
    loads = ui.guarded(data.expert_loads, info.path, data.trace_stamp(info.path), what="trace")
    layer_labels = [charts.short_layer(name, j) for j, name in enumerate(trace.layers)]
    imbalance = [row["load_max_over_mean"] for row in summary["per_layer"]]
    specialized = None

known = sorted(v for v in imbalance if v is not None)
cols = st.columns(6)
cols[0].metric("MoE layers", len(trace.layers))
cols[1].metric("Experts / layer", trace.num_experts)
cols[2].metric("Top-k", trace.top_k)
sequences = manifest.get("num_sequences")
cols[3].metric("Tokens", ui.fmt_int(trace.num_tokens),
               help=(f"{sequences:,} windows" if sequences else "") + (f" of {settings['seq_len']} tokens" if settings.get("seq_len") else ""))
speed = stats.get("tokens_per_s")
speed_text = (f"{speed / 1000:.1f}k tok/s" if speed >= 1000 else f"{speed:,.0f} tok/s") if speed else "–"
if source.get("engine"):
    cols[4].metric("Source", str(source["engine"]), help=trace.source_label)
else:
    cols[4].metric("Capture speed", speed_text,
                   help=f"{stats['wall_s']:.1f} s on {stats.get('device') or 'an unknown device'}" if stats.get("wall_s") else None)
cols[5].metric("Load imbalance", ui.fmt_float(known[len(known) // 2] if known else None, 2, "×"),
               help="Busiest expert's tokens over the mean expert's, median over layers (1.00 = balanced)")

left, right = st.columns(2)
with left:
    st.plotly_chart(charts.layer_imbalance_bars(layer_labels, imbalance), width="stretch")
with right:
    if specialized is not None:
        st.plotly_chart(charts.layer_bars(layer_labels, [100 * (v or 0) for v in specialized],
                                          "Specialized experts per layer", "% of experts", value_format=".0f",
                                          text_suffix="%"),
                        width="stretch")
        st.caption("C2R's view: a specialized expert sends most of its co-activations to a small group of partners.")
    elif trace.counts_only:
        st.markdown("##### Specialized experts per layer")
        ui.counts_only_notice(trace, "Specialized experts, communities and the co-activation pages")
    else:
        st.markdown("##### Specialized experts per layer")
        ui.missing("co-activation analysis", f"routelens analyze {info.path}",
                   why="specialized experts, communities and the other pages need it")
st.plotly_chart(charts.load_heatmap(loads, layer_labels), width="stretch")

st.caption(f"Run folder `{info.path}` · {len(trace.shards)} shard{'s' if len(trace.shards) != 1 else ''} · router logits "
           f"{'recorded' if trace.has_logits else 'not recorded'}"
           + ("" if trace.has_weights else " · routing weights not recorded")
           + (f" · text `{settings['text']}`" if settings.get("text") else ""))
