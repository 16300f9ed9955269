"""Figures of the systems pages: re-routing trade-offs, placement grids and metrics, runner measurements.

Inputs are rows and reports routelens commands wrote (``reroute-eval``, ``plan-eval``, ``bench``)
or plans and metrics from :mod:`routelens.placement`; these functions only draw them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from routelens.placement.methods import REFERENCE
from routelens.reroute.registry import is_baseline, settings_from_row

from .charts import ACCENT, MUTED, QUALITATIVE, SEQUENTIAL, WARN, style


def _setting_tag(row: dict) -> str:
    """The knob a re-routing setting is swept along, short: ``T=16``, ``M=2``, ``0.1``, ``1.25`` (the registry's tag)."""
    spec, settings = settings_from_row(row)
    return spec.tag(settings)


def _policy_family(row: dict) -> str:
    """The curve a row belongs to: its policy and every modifier that is not swept along the curve.

    ``renorm`` weights and ``best`` fill are the defaults and stay unnamed, so a sweep with
    ``--routing-weights renorm,keep --gpu-fill best,drop`` draws up to four curves per policy, not one zig-zag.
    """
    spec, settings = settings_from_row(row)
    return spec.curve(settings)


def tradeoff_curves(rows: Sequence[dict], x: str, y: str, x_title: str, y_title: str,
                    y_as_change: bool = True) -> go.Figure:
    """One line per re-routing policy through its settings: ``x`` (what it saves) vs ``y`` (what it costs).

    ``rows`` are ``routelens reroute-eval`` result rows; the unmodified model (the registry's baseline)
    is the black star every curve starts from. With ``y_as_change`` the y axis is the change of
    ``y`` relative to the unmodified model, in percent.
    """
    def y_value(row):
        if y_as_change:
            change = row.get(f"{y}_change")
            return 100.0 * change if change is not None else np.nan
        return row.get(y, np.nan)

    fig = go.Figure()
    families: dict[str, list[dict]] = {}
    for row in rows:
        if not is_baseline(row["policy"]):
            families.setdefault(_policy_family(row), []).append(row)
    # colour = the policy, line style = its modifiers (keep weights dashed, fill=drop dotted)
    colours: dict[str, str] = {}
    for family, members in families.items():
        members = sorted(members, key=lambda r: r.get(x, np.nan))
        policy = members[0]["policy"]
        colour = colours.setdefault(policy, QUALITATIVE[len(colours) % len(QUALITATIVE)])
        dash = "dot" if members[0].get("fill") == "drop" else "dash" if members[0].get("weights") == "keep" else "solid"
        fig.add_trace(go.Scatter(
            x=[r.get(x, np.nan) for r in members], y=[y_value(r) for r in members],
            mode="lines+markers+text", name=family, line=dict(color=colour, width=2, dash=dash),
            marker=dict(size=9), text=[_setting_tag(r) for r in members], textposition="top center",
            textfont=dict(size=11, color=colour), customdata=[r["label"] for r in members],
            hovertemplate="%{customdata}<br>" + x_title + ": %{x:.3g}<br>" + y_title + ": %{y:.3g}<extra></extra>",
        ))
    for row in rows:
        if is_baseline(row["policy"]):
            fig.add_trace(go.Scatter(
                x=[row.get(x, np.nan)], y=[y_value(row)], mode="markers", name="unmodified model",
                marker=dict(symbol="star", size=16, color="black"),
                hovertemplate="unmodified model<br>" + x_title + ": %{x:.3g}<br>" + y_title + ": %{y:.3g}<extra></extra>",
            ))
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title=y_title + (" (% change)" if y_as_change else ""), zeroline=True, zerolinecolor=MUTED)
    return style(fig, height=440)


def measured_vs_predicted(labels: Sequence[str], measured: Sequence[float], predicted: Sequence[float],
                          unit: str, title: str) -> go.Figure:
    """Grouped bars per plan: measured next to predicted (same unit)."""
    fig = go.Figure([
        go.Bar(name="measured", x=list(labels), y=list(measured), marker_color=ACCENT,
               hovertemplate="%{x}<br>measured: %{y:.3g} " + unit + "<extra></extra>"),
        go.Bar(name="predicted (cost model)", x=list(labels), y=list(predicted), marker_color=MUTED,
               hovertemplate="%{x}<br>predicted: %{y:.3g} " + unit + "<extra></extra>"),
    ])
    fig.update_layout(barmode="group", bargap=0.3)
    fig.update_yaxes(title=unit)
    return style(fig, title=title)


def per_rank_bars(labels: Sequence[str], per_rank: Sequence[Sequence[float]], predicted: Sequence[Sequence[float]] | None,
                  unit: str, title: str) -> go.Figure:
    """Bars per GPU (rank), one colour per plan; predicted values as black ticks on the bars."""
    fig = go.Figure()
    for i, (label, values) in enumerate(zip(labels, per_rank)):
        fig.add_trace(go.Bar(name=label, x=[f"GPU {g}" for g in range(len(values))], y=list(values),
                             marker_color=QUALITATIVE[i % len(QUALITATIVE)], offsetgroup=str(i),
                             hovertemplate=label + "<br>%{x}: %{y:,.0f} " + unit + "<extra></extra>"))
        if predicted is not None:
            fig.add_trace(go.Scatter(x=[f"GPU {g}" for g in range(len(values))], y=list(predicted[i]), mode="markers",
                                     marker=dict(symbol="line-ew-open", size=18, color="black", line=dict(width=2)),
                                     showlegend=i == 0, name="predicted", offsetgroup=str(i),
                                     hovertemplate=label + "<br>%{x} predicted: %{y:,.0f} " + unit + "<extra></extra>"))
    fig.update_layout(barmode="group", scattermode="group", bargap=0.25)
    fig.update_yaxes(title=unit)
    return style(fig, title=title)


def plan_grid(table: np.ndarray, expert_load: np.ndarray, gpus_per_node: int, title: str) -> go.Figure:
    """GPU × slot grid of one layer's plan: each cell an expert, coloured by the tokens it serves.

    A replicated expert's load is shown split evenly over its replicas (what a round-robin
    replica policy gives); the cost model's per-GPU numbers sit next to the grid.
    """
    table = np.asarray(table)
    load = np.asarray(expert_load, dtype=np.float64)
    replicas = np.bincount(table.ravel(), minlength=load.size)
    per_slot = load[table] / np.maximum(replicas[table], 1)
    labels = [f"GPU {g}" + (f" · node {g // gpus_per_node}" if gpus_per_node < table.shape[0] else "")
              for g in range(table.shape[0])]
    text = [[f"{e}" + ("*" if replicas[e] > 1 else "") for e in row] for row in table]
    fig = go.Figure(go.Heatmap(
        z=per_slot, x=[f"slot {s}" for s in range(table.shape[1])], y=labels, colorscale=SEQUENTIAL, zmin=0,
        text=text, texttemplate="%{text}", textfont=dict(size=11 if table.shape[1] <= 16 else 8),
        customdata=np.stack([table, replicas[table]], axis=-1),
        colorbar=dict(title="tokens", thickness=12), xgap=2, ygap=2,
        hovertemplate="%{y}, %{x}: expert %{customdata[0]}<br>%{z:,.0f} tokens"
                      " (%{customdata[1]} replica(s))<extra></extra>",
    ))
    for n in range(1, table.shape[0] // max(gpus_per_node, 1)):
        fig.add_hline(y=n * gpus_per_node - 0.5, line_color="#212529", line_width=2)
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(showticklabels=table.shape[1] <= 16, title=f"{table.shape[1]} slots per GPU")
    return style(fig, height=max(260, 80 + 30 * table.shape[0]), title=title)


PLAN_METRICS = {
    "gpus_per_token": "GPUs per token",
    "busiest_gpu_recv": "busiest GPU receive",
    "compute_imbalance": "compute max/mean",
    "a2a_us": "est. All-to-All",
    "layer_us": "est. layer time",
}


def plan_metric_ratios(results: dict[str, dict], highlight: str, baseline: str = REFERENCE,
                       title: str = "Against the baselines: change vs contiguous (lower is better)") -> go.Figure:
    """Grouped bars: for each metric, every plan's mean over layers as a % change from the baseline's."""
    base = results[baseline]["mean"]
    fig = go.Figure()
    others = [n for n in results if n not in (highlight, baseline)]
    greys = ["#ced4da", "#adb5bd", "#868e96", "#495057", "#343a40"]
    for i, name in enumerate(others + [highlight]):
        change = [100 * (results[name]["mean"].get(k, np.nan) / base[k] - 1) if base.get(k) else np.nan for k in PLAN_METRICS]
        color = WARN if name == highlight else greys[i % len(greys)]
        fig.add_trace(go.Bar(name=name, x=list(PLAN_METRICS.values()), y=change, marker_color=color,
                             text=[f"{c:+.1f}%" for c in change] if name == highlight else None,
                             textposition="outside", cliponaxis=False,
                             hovertemplate=name + "<br>%{x}: %{y:+.2f}% vs " + baseline + "<extra></extra>"))
    fig.add_hline(y=0, line_color="#495057", line_width=1)
    fig.update_layout(barmode="group", bargap=0.25)
    fig.update_yaxes(title=f"% change vs {baseline}", zeroline=False)
    return style(fig, height=400, title=title)


def schedule_curves(entries: Sequence[dict], metric: str, title: str, unit: str) -> go.Figure:
    """One method's schedules over the stream: ``metric`` per window, the static plan dashed.

    ``entries`` are schedules of a ``routelens schedule-eval`` file (``every_tokens`` None = static);
    a window's value holds from its first token to its last (step lines). With ``metric`` =
    ``layer_us_with_moves`` each window carries the move cost of the re-placement that starts it.
    """
    fig = go.Figure()
    for i, entry in enumerate(sorted(entries, key=lambda e: (e["every_tokens"] is not None, e["every_tokens"] or 0))):
        windows = entry["windows"]
        x = [w["start"] for w in windows] + [windows[-1]["end"]]
        y = [w[metric] for w in windows]
        y = y + y[-1:]
        static = entry["every_tokens"] is None
        name = "static plan" if static else f"every {entry['every_tokens']:,} tokens"
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines", line_shape="hv", name=name,
            line=dict(color="black" if static else QUALITATIVE[(i - 1) % len(QUALITATIVE)], width=2,
                      dash="dash" if static else "solid"),
            hovertemplate=name + "<br>from token %{x:,}: %{y:.3f} " + unit + "<extra></extra>"))
    fig.update_xaxes(title="token of the stream (serving order)")
    fig.update_yaxes(title=unit)
    return style(fig, height=360, title=title)


def schedule_moves(entries: Sequence[dict]) -> go.Figure:
    """GB of expert weights each re-placement copies, per period (bars at the token it happens)."""
    fig = go.Figure()
    for i, entry in enumerate(e for e in entries if e["every_tokens"] is not None):
        moved = [w for w in entry["windows"] if w["move"]["copies"]]
        name = f"every {entry['every_tokens']:,} tokens"
        fig.add_trace(go.Bar(
            x=[w["start"] for w in moved], y=[w["move"]["bytes"] / 1e9 for w in moved], name=name,
            marker_color=QUALITATIVE[i % len(QUALITATIVE)],
            customdata=[[w["move"]["copies"], w["move"]["seconds"] * 1e3] for w in moved],
            hovertemplate=name + "<br>token %{x:,}: %{y:.2f} GB, %{customdata[0]} copies, %{customdata[1]:.2f} ms"
                          "<extra></extra>"))
    fig.update_layout(barmode="group", bargap=0.2)
    fig.update_xaxes(title="token of the stream (serving order)")
    fig.update_yaxes(title="GB of expert weights copied")
    return style(fig, height=300, title="Weight moves of each re-placement")


def plan_matrix_heatmap(matrix: dict, metric: str, title: str, fmt: str = "{:.3g}") -> go.Figure:
    """Plans (and the baselines fitted like each) × runs, coloured by ``metric`` over the column's best row.

    ``matrix`` is :func:`routelens.placement.workloads.plan_matrix`'s result; every row of a column is
    scored on the same tokens, so a column compares like with like (1.00 = the best row there).
    """
    from pathlib import Path

    runs = matrix["runs"]
    rows = matrix["rows"]
    values = np.array([[row["results"][run]["mean"].get(metric, np.nan) for run in runs] for row in rows], dtype=float)
    relative = values / np.nanmin(values, axis=0, keepdims=True)
    labels = [("· " if row["kind"] == "baseline" else "") + row["label"] for row in rows]
    fig = go.Figure(go.Heatmap(
        z=relative, x=[Path(run).name for run in runs], y=labels, colorscale="Reds", zmin=1,
        text=[[fmt.format(v) for v in line] for line in values], texttemplate="%{text}", xgap=2, ygap=2,
        colorbar=dict(title="× best", thickness=12),
        hovertemplate="%{y} on %{x}: %{text} (%{z:.3f}× the best row)<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return style(fig, height=max(260, 60 + 26 * len(rows)), title=title)
