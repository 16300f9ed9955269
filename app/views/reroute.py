"""Re-routing: what each policy saves in fan-out and traffic, and what it costs in quality."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from routelens.formats import TRADEOFF

from rlapp import data, systems_charts, tables, ui
from routelens.reroute.registry import is_baseline
from rlapp.runs import rank_by_closeness

SAVINGS = {
    "gpus_per_token": "GPUs per token (fan-out)",
    "busiest_gpu_recv": "busiest GPU receive (token copies)",
    "load_max_over_mean": "max/mean expert load",
    "dropped_fraction": "dropped expert slots",
}
COSTS = {
    "perplexity": ("perplexity", True),
    "kl_to_baseline": ("KL to the unmodified model", False),
    "agreement": ("top-1 agreement with the unmodified model", False),
    "next_token_accuracy": ("next-token accuracy", False),
}

ui.header("Re-routing", "How much fan-out does each re-routing policy save, and what does it cost in quality?")
info, trace = ui.current_trace()

runs_dir = st.session_state.get("runs_dir", "runs")
found = data.reroute_tradeoffs(str(Path(runs_dir).resolve()))
if not found:
    ui.missing("re-routing trade-off curves", f"routelens reroute-eval {trace.model_id or 'MODEL'} --out {info.path}/reroute",
               why=f"no {TRADEOFF.file} below {runs_dir}")
    st.stop()

ordered = rank_by_closeness([Path(f["path"]) for f in found], info.path, trace.model_id, [f.get("model", "") for f in found])
by_path = {f["path"]: f for f in found}
root = Path(runs_dir).resolve()
choice = st.selectbox("Trade-off file", [str(p) for p in ordered],
                      format_func=lambda p: str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else p,
                      help="Written by routelens reroute-eval; those inside this run or of its model come first.")
result = by_path[choice]
if result.get("problem"):
    st.error(f"Cannot show this trade-off: {result['problem']}")
    st.stop()
if trace.model_id and result.get("model") and result["model"] != trace.model_id:
    st.caption(f"Measured on `{result['model']}`, not this run's model `{trace.model_id}`.")

rows = result["rows"]
baseline = next((r for r in rows if is_baseline(r["policy"])), None)
plan = result.get("plan", {})
cols = st.columns(3)
cols[0].metric("Held-out tokens", ui.fmt_int(rows[0].get("eval_tokens")),
               help=f"{result.get('evaluation_windows', '?')} windows of {result.get('seq_len', '?')} tokens from "
                    f"{result.get('text', '?')}; {result.get('calibration_windows', '?')} more fitted the groups and plan")
cols[1].metric("Baseline perplexity", ui.fmt_float(baseline and baseline.get("perplexity")))
cols[2].metric("Baseline GPUs / token", ui.fmt_float(baseline and baseline.get("gpus_per_token")),
               help=f"under the {plan.get('method', '?')} plan for {plan.get('num_gpus', '?')} GPUs")
best = data.best_setting(rows, 0.01)
if best is not None:
    st.success(f"Fewest GPUs per token within 1% perplexity: **{best['label']}** — {best['gpus_per_token']:.2f} GPUs/token "
               f"({100 * best.get('gpus_per_token_change', 0):+.1f}%), perplexity {100 * best.get('perplexity_change', 0):+.2f}%"
               + ("" if not best.get("perplexity_change_ci95") else
                  " (95% interval {:+.2f}% … {:+.2f}%)".format(*(100 * v for v in best["perplexity_change_ci95"])))
               + ".")
else:
    st.warning("No setting stays within 1% of the unmodified model's perplexity.")

left, right = st.columns(2)
with left:
    saving = st.selectbox("Saves (x axis)", list(SAVINGS), format_func=SAVINGS.get)
with right:
    cost = st.selectbox("Costs (y axis)", list(COSTS), format_func=lambda k: COSTS[k][0])
y_title, as_change = COSTS[cost]
st.plotly_chart(systems_charts.tradeoff_curves(rows, saving, cost, SAVINGS[saving], y_title, y_as_change=as_change), width="stretch")
st.caption("Each line is one policy swept over its setting (C2R group size T, GPU limit M, GPU share, capacity "
           "factor); one colour per policy, dashed: `keep` (the unconstrained weights), dotted: `fill=drop` (lost "
           "experts dropped instead of replaced). The star is the unmodified model. Down and to the left is better.")

st.subheader("All settings")
st.dataframe(tables.tradeoff_table(rows), hide_index=True, width="stretch")
