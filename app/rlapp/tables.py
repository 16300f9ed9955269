"""Tables the pages show: library results renamed and ordered for reading (no computation)."""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

TRADEOFF_COLUMNS = {
    "label": "setting",
    "perplexity": "perplexity",
    "perplexity_change": "Δ perplexity",
    "kl_to_baseline": "KL to baseline",
    "agreement": "top-1 agreement",
    "next_token_accuracy": "next-token accuracy",
    "gpus_per_token": "GPUs / token",
    "gpus_per_token_change": "Δ GPUs / token",
    "busiest_gpu_recv": "busiest GPU recv",
    "busiest_gpu_recv_change": "Δ busiest recv",
    "load_max_over_mean": "max/mean load",
    "dropped_fraction": "dropped",
    "changed_fraction": "changed choices",
}
PERCENT_COLUMNS = ("Δ perplexity", "Δ GPUs / token", "Δ busiest recv", "dropped", "changed choices")


def tradeoff_table(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """``routelens reroute-eval`` rows as a table; changes and fractions in percent."""
    frame = pd.DataFrame([{name: row.get(key) for key, name in TRADEOFF_COLUMNS.items()} for row in rows])
    for column in PERCENT_COLUMNS:
        frame[column] = (frame[column].astype(float) * 100).round(2)
    # the paired bootstrap interval of the perplexity change (rows of older result files have none)
    intervals = [row.get("perplexity_change_ci95") for row in rows]
    frame.insert(frame.columns.get_loc("Δ perplexity") + 1, "Δ perplexity 95% CI",
                 ["" if ci is None else f"{100 * ci[0]:+.2f} … {100 * ci[1]:+.2f}" for ci in intervals])
    return frame.rename(columns={c: f"{c} %" for c in PERCENT_COLUMNS})


def bench_table(plans: Sequence[dict[str, Any]], labels: Sequence[str]) -> pd.DataFrame:
    """One row per plan of a ``routelens bench`` report: bytes, times, ratios, match with the cost model."""
    rows = []
    for label, plan in zip(labels, plans):
        ratio = plan.get("ratio_vs_baseline", {})
        time_ms = plan["time_ms"]
        rows.append({
            "plan": label,
            "method": plan.get("method"),
            "replicas": plan.get("replicas"),
            "MB sent (busiest GPU)": max(plan["dispatch_bytes_sent"]) / 1e6,
            "MB sent (all GPUs)": sum(plan["dispatch_bytes_sent"]) / 1e6,
            "dispatch ms": time_ms.get("dispatch"),
            "combine ms": time_ms.get("combine"),
            "All-to-All ms": time_ms.get("all_to_all"),
            "predicted ms": plan["predicted"].get("all_to_all_ms"),
            "measured ×": ratio.get("measured_all_to_all"),
            "predicted ×": ratio.get("predicted_all_to_all"),
            "bytes = predicted": plan.get("bytes_match_prediction"),
        })
    return pd.DataFrame(rows).round(3)


def schedule_table(schedules: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per method and period of a ``routelens schedule-eval`` file: layer time, moves, gain over static."""
    rows = []
    for entry in schedules:
        mean, moves = entry["mean"], entry["moves"]
        rows.append({
            "method": entry["method"],
            "re-place every": "never (static)" if entry["every_tokens"] is None else f"{entry['every_tokens']:,} tokens",
            "layer µs": mean["layer_us"],
            "+ moves µs": mean["move_us_per_layer"],
            "= layer µs with moves": mean["layer_us_with_moves"],
            "busiest GPU recv (×T/G)": mean["busiest_gpu_recv"],
            "vs static %": -100 * entry["gain_vs_static"],
            "re-placements": moves["replacements"],
            "expert copies": moves["copies"],
            "GB moved": moves["bytes"] / 1e9,
            "move s": moves["seconds"],
            "pays from (tokens)": entry.get("break_even_tokens"),
        })
    return pd.DataFrame(rows).round(3)


def best_schedule_table(best: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """The best schedule of each method (lowest mean layer time, moves paid), best first."""
    rows = [{"method": method, "re-place every": "never (static)" if choice["every_tokens"] is None
             else f"{choice['every_tokens']:,} tokens", "layer µs with moves": choice["layer_us_with_moves"],
             "vs its static plan %": -100 * choice["gain_vs_static"], "busiest GPU recv (×T/G)": choice["busiest_gpu_recv"]}
            for method, choice in best.items()]
    return pd.DataFrame(rows).sort_values("layer µs with moves").round(3)
