"""Placement: where each expert (and replica) lives, what that costs, and what another cluster would get."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from routelens.formats import PLAN
from routelens.placement.evaluate import VERSUS_BEST, versus_best
from routelens.placement.export import EXPORT_FORMATS
from routelens.placement.methods import get_method, method_names

from rlapp import charts, data, systems_charts, ui

LABELS = {"json": "routelens plan", "sglang": "SGLang --init-expert-location",
          "vllm-ascend": "vllm-ascend expert_map_path"}  # every format an engine loads (upstream vLLM loads none)
EXPORTS = [(name, (EXPORT_FORMATS[name].suffixes or (".json",))[0], label) for name, label in LABELS.items()]
EXPORTS = [(name, suffix, f"{label} ({suffix})") for name, suffix, label in EXPORTS]
METHODS = [name for name in method_names() if get_method(name).is_available()]

ui.header("Placement", "Where should the experts live, and how much All-to-All does that save?")
info, trace = ui.current_trace()
runs_dir = str(Path(st.session_state.get("runs_dir", "runs")).resolve())
trace_key = data.trace_stamp(info.path)


def metrics_table(results: dict, label: str) -> pd.DataFrame:
    rows = []
    for name, result in results.items():
        mean = result["mean"]
        rows.append({"plan": name, "GPUs/token": mean.get("gpus_per_token"), "busiest GPU recv (×T/G)": mean.get("busiest_gpu_recv"),
                     "busiest GPU send (×T/G)": mean.get("busiest_gpu_send"), "compute max/mean": mean.get("compute_imbalance"),
                     "inter-node share": mean.get("inter_node_share"), "est. All-to-All µs/layer": mean.get("a2a_us"),
                     "est. layer µs": mean.get("layer_us")})
    frame = pd.DataFrame(rows).set_index("plan").round(3)
    return frame.loc[[label] + [n for n in frame.index if n != label]]


def show_versus_best(results: dict, label: str) -> None:
    """One metric per number a plan is judged by: the plan's value, and its change against the best baseline on it."""
    rows = versus_best(results, label)
    cols = st.columns(len(VERSUS_BEST))
    for col, (key, title, fmt, unit) in zip(cols, VERSUS_BEST):
        if key in rows:
            row = rows[key]
            col.metric(f"{title} ({unit})", fmt.format(row["plan"]), f"{100 * row['change']:+.1f}% vs {row['best_baseline']}",
                       delta_color="inverse", help=f"best baseline on this number: {row['best_baseline']} "
                       f"{fmt.format(row['best'])} {unit}")


def layer_loads() -> np.ndarray:
    """``[L, E]`` tokens per expert (from the analysis when there is one, else counted from the trace)."""
    result = ui.optional_analysis(info) if data.has_analysis(info.path) else None
    if result is not None and result.layers == list(range(len(trace.layers))):
        return result.load_tokens
    return ui.guarded(data.expert_loads, info.path, trace_key, what="trace")


def show_grid(chosen, key: str) -> None:
    layer = st.select_slider("MoE layer", options=list(range(len(chosen.layers))), key=key,
                             format_func=lambda j: str(j))
    name = chosen.layers[layer]
    table = chosen.gpu_experts[name]
    st.plotly_chart(systems_charts.plan_grid(table, layer_loads()[trace.layer_index(name)], chosen.gpus_per_node,
                                     f"{charts.short_layer(name, layer)}: experts per GPU slot (* = replicated)"),
                    width="stretch")


# ---------------------------------------------------------------------------- a plan file
st.subheader("A plan")
candidates = data.plan_files(runs_dir, info.path)
fitting, foreign = [], []
for path in candidates:
    try:
        candidate = data.plan(path, data.stamp(path))
        candidate.check_trace(trace)
        fitting.append(path)
    except Exception as exc:  # a plan for another model, or an unreadable file: listed below
        foreign.append((path, str(exc).splitlines()[0]))
if not fitting:
    ui.missing("placement plan for this model",
               f"routelens place {info.path} --gpus 8 --out {PLAN.folder_in(info.path) / 'routelens-g8.json'}",
               why=f"no plan file below {runs_dir} fits its {len(trace.layers)} layers × {trace.num_experts} experts")
else:
    root = Path(runs_dir)
    plan_path = st.selectbox("Plan file", fitting, key="plan_file",
                             format_func=lambda p: str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else p,
                             help="Every routelens plan below the runs folder that fits this run's layers and experts")
    plan_key = data.stamp(plan_path)
    chosen = data.plan(plan_path, plan_key)
    topo = chosen.meta.get("topology") or {}
    cols = st.columns(5)
    cols[0].metric("Method", chosen.method)
    cols[1].metric("GPUs", chosen.num_gpus, help=f"{chosen.num_nodes} node(s) × {chosen.gpus_per_node} GPUs")
    cols[2].metric("Slots / GPU", chosen.slots_per_gpu)
    cols[3].metric("Redundant slots", chosen.num_redundant)
    cols[4].metric("Replica policy", chosen.replica_policy.split("-")[0], help=chosen.replica_policy)
    if topo:
        st.caption(f"Made for {topo.get('intra_link', '?')} {topo.get('intra_gbps', '?')} GB/s inside nodes, "
                   f"{topo.get('inter_link', '?')} {topo.get('inter_gbps', '?')} GB/s between nodes.")
    show_grid(chosen, "plan_layer")

    comparison = ui.attempt(data.plan_vs_baselines, info.path, trace_key, plan_path, plan_key, what="plan evaluation")
    if comparison is not None:
        show_versus_best(comparison["results"], comparison["label"])
        st.plotly_chart(systems_charts.plan_metric_ratios(comparison["results"], comparison["label"]), width="stretch")
        st.caption(f"Scored on {comparison['note']} with the cost model stored in the plan; every baseline was "
                   "fitted on the same tokens as the plan. Same numbers as `routelens plan-eval`.")
        st.dataframe(metrics_table(comparison["results"], comparison["label"]), width="stretch")

    st.markdown("##### Download")
    cols = st.columns(len(EXPORTS))
    stem = Path(plan_path).stem
    for col, (fmt, suffix, label) in zip(cols, EXPORTS):
        payload = ui.attempt(data.plan_export, plan_path, plan_key, fmt, suffix, trace.config.get("num_layers"),
                             what=f"{fmt} export")
        if payload is not None:
            name = f"{stem}.json" if fmt == "json" else f"{stem}-{fmt}{suffix}"
            col.download_button(label, payload, file_name=name, key=f"download_{fmt}", width="stretch",
                                icon=":material/download:")
if foreign:
    with st.expander(f"{len(foreign)} plan file(s) that do not fit this run"):
        st.dataframe([{"file": p, "why": why} for p, why in foreign], hide_index=True, width="stretch")

# ---------------------------------------------------------------------------- what if
if trace.counts_only:
    ui.counts_only_notice(trace, "Scoring plans (All-to-All volumes, what-if placements)")
    st.code(f"routelens place {info.path} --method eplb --gpus 8 --format sglang --out plan.pt", language="bash")
    st.stop()
st.subheader("What if")
st.caption("Another cluster or method: the library places the experts and scores the result against contiguous "
           "in seconds (fitted on the first half of the trace, scored on the second).")
with st.form("what_if"):
    cols = st.columns(4)
    gpus = cols[0].number_input("GPUs", min_value=1, max_value=1024, value=8, step=1)
    nodes = cols[1].number_input("Nodes", min_value=1, max_value=128, value=1, step=1)
    redundant = cols[2].number_input("Redundant experts", min_value=0, max_value=4 * trace.num_experts, value=0, step=1,
                                     help="Extra slots per layer for replicas of hot experts; E + R must divide by the GPUs")
    method = cols[3].selectbox("Method", METHODS)
    submitted = st.form_submit_button("Place", type="primary", icon=":material/play_arrow:")
if submitted or st.session_state.get("what_if_args"):
    if submitted:
        st.session_state["what_if_args"] = (int(gpus), int(nodes), int(redundant), method)
    args = st.session_state["what_if_args"]
    result = ui.guarded(data.what_if, info.path, trace_key, *args, what="what-if placement")
    made = result["plan"]
    st.plotly_chart(systems_charts.plan_metric_ratios(result["results"], result["label"],
                                              title=f"{args[0]} GPUs on {args[1]} node(s), {args[2]} redundant: "
                                                    f"{args[3]} vs contiguous"), width="stretch")
    st.dataframe(metrics_table(result["results"], result["label"]), width="stretch")
    show_grid(made, "what_if_layer")
    cols = st.columns(len(EXPORTS))
    for col, (fmt, suffix, label) in zip(cols, EXPORTS):
        payload = data.export_bytes(made, fmt, suffix, trace.config.get("num_layers"))
        col.download_button(label, payload, file_name=f"what-if-{args[3]}-g{args[0]}-{fmt}{suffix}",
                            key=f"what_if_download_{fmt}", width="stretch", icon=":material/download:")

# ---------------------------------------------------------------------------- plans × runs
if fitting and not trace.counts_only:
    st.subheader("Plans × runs")
    st.caption("A plan fitted on one text may lose on another: every plan, and every baseline fitted on the same "
               "tokens as it, scored on each run of this model (`routelens plan-eval PLAN... RUN...`). A column's "
               "rows are scored on the same tokens — those no plan was fitted on — so compare down a column.")
    root = Path(runs_dir)
    name = lambda p: str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else p  # noqa: E731
    similar = data.runs_like(runs_dir, info.path)
    with st.form("plan_matrix"):
        cols = st.columns(2)
        chosen_plans = cols[0].multiselect("Plans", fitting, default=fitting[:3], format_func=name, key="matrix_plans")
        chosen_runs = cols[1].multiselect("Runs", similar, default=[info.path], format_func=name, key="matrix_runs")
        scored = st.form_submit_button("Score", icon=":material/table_chart:")
    if scored or st.session_state.get("matrix_args"):
        if scored:
            st.session_state["matrix_args"] = (tuple(chosen_plans), tuple(chosen_runs))
        plan_paths, run_paths = st.session_state["matrix_args"]
        if plan_paths and run_paths:
            matrix = ui.attempt(data.plan_matrix, plan_paths, tuple(data.stamp(p) for p in plan_paths), run_paths,
                                tuple(data.trace_stamp(r) for r in run_paths), tuple(name(p) for p in plan_paths),
                                what="plan × run matrix")
            if matrix is not None:
                left, right = st.columns(2)
                left.plotly_chart(systems_charts.plan_matrix_heatmap(matrix, "layer_us", "Est. layer time (µs)",
                                                                     "{:.1f}"), width="stretch")
                right.plotly_chart(systems_charts.plan_matrix_heatmap(matrix, "busiest_gpu_recv",
                                                                      "Busiest-GPU receive (× T/G)", "{:.3f}"),
                                   width="stretch")
                st.caption("Scored on: " + "; ".join(f"{Path(run).name}: {note}"
                                                      for run, note in matrix["scored_on"].items()))
        else:
            st.info("Pick at least one plan and one run.")
