"""Placement over time: which plan, re-placed how often, is fastest once the weight moves are paid for."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from routelens.formats import SCHEDULE

from rlapp import data, systems_charts, tables, ui

ui.header("Placement over time",
          "Which placement, re-fitted how often, serves this stream fastest once the expert weights it moves are paid for?")
info, trace = ui.current_trace()
if trace.counts_only:
    ui.counts_only_notice(trace, "Replaying placements over time")
    st.stop()

reports = data.schedule_reports(info.path, data.schedule_stamp(info.path))
if not reports:
    ui.missing("placement schedules",
               f"routelens schedule-eval {info.path} --gpus 8 --redundant 8 --method routelens,eplb,greedy",
               why=f"no schedule file in its {SCHEDULE.folder}/ folder")
    st.stop()

choice = st.selectbox("Schedule file", [r["path"] for r in reports], format_func=lambda p: Path(p).name,
                      key="schedule_file", help=f"Written by routelens schedule-eval into RUN/{SCHEDULE.folder}/, newest first.")
report = next(r for r in reports if r["path"] == choice)
if report.get("problem"):
    st.error(f"Cannot show this schedule file: {report['problem']}")
    st.stop()
if report["trace"].get("fingerprint") != trace.fingerprint():
    st.warning("This file replayed an earlier version of the trace (its fingerprint differs); re-run routelens schedule-eval.")

topo = report["topology"]
cols = st.columns(5)
cols[0].metric("GPUs", report["num_gpus"], help=f"{topo['num_nodes']} node(s) × {topo['gpus_per_node']}; "
               f"{topo['intra_link']} {topo['intra_gbps']:g} GB/s inside nodes, {topo['inter_link']} "
               f"{topo['inter_gbps']:g} GB/s between")
cols[1].metric("Redundant slots", report["redundant"])
cols[2].metric("Fit window", f"{report['fit_tokens']:,} tokens", help="every plan is fitted on the tokens just before it")
cols[3].metric("Forward pass", f"{report['batch_tokens']:,} tokens", help="one All-to-All each, scored on its own")
cols[4].metric("Expert copy", f"{report['expert_bytes'] / 1e6:.1f} MB",
               help=f"3 × hidden × moe_intermediate × {report['weight_bytes']:g} bytes (gate, up and down projections)")
start, end = report["scored_tokens"]
st.caption(f"Tokens [{start:,}, {end:,}) of {report['stream_tokens']:,} replayed in serving order"
           + (f" (phase {report['phase']})" if report.get("phase") else "") + ". A re-placement copies every expert to "
           "each GPU that did not hold it; the time of those copies on the links is charged in full and spread over the "
           "layer executions of the window the new plan serves.")

st.subheader("Best schedule per method")
st.dataframe(tables.best_schedule_table(report["best"]), hide_index=True, width="stretch")
best = report["best"]
if "routelens" in best and len(best) > 1:
    others = {m: c for m, c in best.items() if m != "routelens"}
    rival = min(others, key=lambda m: others[m]["layer_us_with_moves"])
    change = best["routelens"]["layer_us_with_moves"] / others[rival]["layer_us_with_moves"] - 1
    st.caption(f"routelens' best schedule: {100 * change:+.1f}% mean layer time (moves paid) against the best other "
               f"method's ({rival}).")

methods = list(dict.fromkeys(s["method"] for s in report["schedules"]))
method = st.segmented_control("Method", methods, default=methods[0], required=True, key="schedule_method")
entries = [s for s in report["schedules"] if s["method"] == method]
left, right = st.columns(2)
with left:
    st.plotly_chart(systems_charts.schedule_curves(entries, "layer_us_with_moves",
                                                   f"{method}: layer time per window, moves included", "µs"),
                    width="stretch")
with right:
    st.plotly_chart(systems_charts.schedule_curves(entries, "busiest_gpu_recv",
                                                   f"{method}: busiest-GPU receive per window", "× T/G"),
                    width="stretch")
st.plotly_chart(systems_charts.schedule_moves(entries), width="stretch")

st.subheader("Every schedule")
st.dataframe(tables.schedule_table(report["schedules"]), hide_index=True, width="stretch")
st.caption("Pays from: the period, in tokens, from which that schedule's moves would cost less than its re-fitted "
           "plans save (empty: its plans save nothing over the static one). Same numbers as `routelens schedule-eval`.")
