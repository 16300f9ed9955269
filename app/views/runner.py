"""Runner results: what each plan's All-to-All really cost when the trace was replayed, next to the cost model."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from routelens.formats import BENCH

from rlapp import charts, data, systems_charts, tables, ui

ui.header("Runner results", "What does each plan's All-to-All really cost over the network, and did the cost model predict it?")
info, trace = ui.current_trace()

reports = data.bench_reports(info.path, data.bench_stamp(info.path))
if not reports:
    ui.missing("runner results", f"routelens bench {info.path} contiguous PLAN.json --gpus 8",
               why=f"no bench report in its {BENCH.folder}/ folder (on a CPU machine add --backend gloo)")
    st.stop()

choice = st.selectbox("Bench report", [r["path"] for r in reports], format_func=lambda p: Path(p).name,
                      help=f"Written by routelens bench into RUN/{BENCH.folder}/, newest first.")
report = next(r for r in reports if r["path"] == choice)
if report.get("problem"):
    st.error(f"Cannot show this report: {report['problem']}")
    st.stop()
if report.get("trace", {}).get("fingerprint") not in (None, trace.fingerprint()):
    st.warning("This report replayed an earlier version of the trace (its fingerprint differs); re-run routelens bench.")

plans = report["plans"]
labels = [charts.short_path(p["label"]) for p in plans]
cols = st.columns(5)
cols[0].metric("GPUs", report["num_gpus"], help=f"{report['backend']} on {report['device']}")
cols[1].metric("Tokens replayed", ui.fmt_int(report.get("tokens_replayed")),
               help=f"{ui.fmt_int(report.get('tokens_per_rank'))} per rank")
cols[2].metric("Hidden size", report.get("hidden_size"), help=f"{report.get('dtype')}, {report.get('bytes_per_token')} bytes per token")
cols[3].metric("Repeats", report.get("repeats"), help="median reported; each phase timed on the slowest rank")
cols[4].metric("Baseline", charts.short_path(report.get("baseline", "?")))

relative = st.toggle("Relative to the baseline plan", value=True,
                     help="The cost model's absolute time depends on its latency/bandwidth calibration; ratios do not.")
if relative:
    measured = [p.get("ratio_vs_baseline", {}).get("measured_all_to_all") for p in plans]
    predicted = [p.get("ratio_vs_baseline", {}).get("predicted_all_to_all") for p in plans]
    unit, title = "× baseline", "All-to-All time relative to the baseline plan"
else:
    measured = [p["time_ms"]["all_to_all"] for p in plans]
    predicted = [p["predicted"]["all_to_all_ms"] for p in plans]
    unit, title = "ms", "All-to-All time (dispatch + combine), all layers"
left, right = st.columns(2)
with left:
    st.plotly_chart(systems_charts.measured_vs_predicted(labels, measured, predicted, unit, title), width="stretch")
with right:
    st.plotly_chart(systems_charts.per_rank_bars(labels, [p["dispatch_tokens_recv"] for p in plans],
                                         [p["predicted"]["dispatch_tokens_recv"] for p in plans],
                                         "token copies", "Dispatch: token copies each GPU receives"),
                    width="stretch")

mismatched = [label for label, p in zip(labels, plans) if not p.get("bytes_match_prediction")]
if mismatched:
    st.error(f"Measured bytes differ from the cost model's for: {', '.join(mismatched)}.")
else:
    st.success("Every plan moved exactly the bytes the cost model predicted; only the times are measured.")
calibration = report.get("calibration") or {}
st.caption(f"Cost model: α = {calibration.get('latency_us', '?')} µs per All-to-All, β = "
           f"{calibration.get('bandwidth_GBps', '?')} GB/s"
           + (" (defaults; `routelens bench RUN --calibrate` measures them)" if calibration.get("source") == "default"
              else f" (measured: {Path(str(calibration.get('source', ''))).name})"))

st.subheader("Plans")
st.dataframe(tables.bench_table(plans, labels), hide_index=True, width="stretch")
