"""Plotly figures of the dashboard: pure functions from arrays (already computed by routelens) to figures.

No analysis happens here: inputs are loads, matrices, curves and plans that library functions
returned; these functions only choose marks, colours, labels and order.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import plotly.graph_objects as go

ACCENT = "#3b5bdb"
MUTED = "#adb5bd"
WARN = "#e8590c"
SEQUENTIAL = "Blues"
DIVERGING = "RdBu_r"
QUALITATIVE = ["#3b5bdb", "#e8590c", "#2f9e44", "#ae3ec9", "#f59f00", "#1098ad", "#d6336c", "#5c940d",
               "#7048e8", "#c2255c", "#0b7285", "#e67700"]


def short_layer(name: str, index: int | None = None) -> str:
    """``model.layers.12.mlp.gate`` → ``layer 12`` (falls back to the index, then the full name)."""
    match = re.search(r"layers?\.(\d+)", name)
    if match:
        return f"layer {match.group(1)}"
    return f"layer {index}" if index is not None else name


def style(fig: go.Figure, height: int = 360, title: str | None = None) -> go.Figure:
    """The dashboard's common look: white template, tight margins, readable fonts."""
    has_legend = sum(1 for trace in fig.data if getattr(trace, "showlegend", False) is not False) > 1
    top = (34 if title else 8) + (30 if has_legend else 0)
    fig.update_layout(
        template="plotly_white",
        height=height,
        margin=dict(l=10, r=10, t=top, b=10),
        font=dict(size=13),
        title=dict(text=title, x=0, xanchor="left", y=1, yanchor="top", yref="container", pad=dict(t=8, l=4),
                   font=dict(size=15)) if title else None,
        # The legend sits between the title and the plot, left-aligned, so neither covers the other.
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0),
        hoverlabel=dict(font_size=12),
    )
    return fig


def layer_imbalance_bars(layer_labels: Sequence[str], load_max_over_mean: Sequence[float | None]) -> go.Figure:
    """Bar per MoE layer of the busiest expert's load over the mean (1.0 = balanced)."""
    values = [np.nan if v is None else float(v) for v in load_max_over_mean]
    fig = go.Figure(go.Bar(
        x=list(layer_labels), y=values, marker_color=ACCENT, text=[f"{v:.2f}×" for v in values], textposition="outside",
        cliponaxis=False, hovertemplate="%{x}<br>busiest expert: %{y:.2f}× the mean load<extra></extra>",
    ))
    fig.add_hline(y=1.0, line_dash="dot", line_color="#495057", annotation_text="balanced", annotation_position="top right",
                  annotation_bgcolor="rgba(255,255,255,0.85)")
    fig.update_yaxes(title="max / mean expert load", rangemode="tozero")
    return style(fig, title="Load imbalance per layer")


def load_heatmap(loads: np.ndarray, layer_labels: Sequence[str], title: str = "Expert load (share of the layer's mean)") -> go.Figure:
    """Heatmap ``[L, E]`` of each expert's load divided by its layer's mean (1 = average)."""
    loads = np.asarray(loads, dtype=np.float64)
    mean = loads.mean(axis=1, keepdims=True)
    relative = np.divide(loads, mean, out=np.zeros_like(loads), where=mean > 0)
    fig = go.Figure(go.Heatmap(
        z=relative, x=np.arange(loads.shape[1]), y=list(layer_labels), colorscale=SEQUENTIAL,
        zmin=0, colorbar=dict(title="× mean", thickness=12),
        customdata=loads, hovertemplate="%{y}, expert %{x}<br>%{customdata:,} tokens (%{z:.2f}× mean)<extra></extra>",
    ))
    fig.update_xaxes(title="expert")
    fig.update_yaxes(autorange="reversed")
    return style(fig, height=max(220, 60 + 34 * loads.shape[0]), title=title)


def expert_load_bars(load: np.ndarray, highlight: Sequence[int] = (), color: Sequence[str] | None = None,
                     title: str = "Tokens per expert") -> go.Figure:
    """Bar per expert of the tokens it received, sorted by expert id; ``highlight`` experts in orange."""
    load = np.asarray(load)
    colors = list(color) if color is not None else [WARN if e in set(highlight) else ACCENT for e in range(load.size)]
    fig = go.Figure(go.Bar(x=np.arange(load.size), y=load, marker_color=colors,
                           hovertemplate="expert %{x}: %{y:,} tokens<extra></extra>"))
    mean = float(load.mean()) if load.size else 0.0
    fig.add_hline(y=mean, line_dash="dot", line_color="#495057", annotation_text="mean", annotation_position="top right",
                  annotation_bgcolor="rgba(255,255,255,0.85)")
    fig.update_xaxes(title="expert")
    fig.update_yaxes(title="tokens routed")
    return style(fig, title=title)


def _setting_tag(row: dict) -> str:
    """The knob of a re-routing setting, short: ``T=16``, ``M=2``, ``×1.25``."""
    if row.get("top_t") is not None:
        return f"T={row['top_t']}"
    if row.get("max_gpus") is not None:
        return f"M={row['max_gpus']}"
    if row.get("capacity_factor") is not None:
        return f"×{row['capacity_factor']:g}"
    return ""


def _policy_family(row: dict) -> str:
    if row["policy"] == "gpu-limited" and row.get("gpu_score"):
        return f"gpu-limited ({row['gpu_score']})"
    return row["policy"]


def tradeoff_curves(rows: Sequence[dict], x: str, y: str, x_title: str, y_title: str,
                    y_as_change: bool = True) -> go.Figure:
    """One line per re-routing policy through its settings: ``x`` (what it saves) vs ``y`` (what it costs).

    ``rows`` are ``routelens reroute-eval`` result rows; the unmodified model (``policy == "none"``)
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
        if row["policy"] != "none":
            families.setdefault(_policy_family(row), []).append(row)
    for i, (family, members) in enumerate(families.items()):
        members = sorted(members, key=lambda r: r.get(x, np.nan))
        fig.add_trace(go.Scatter(
            x=[r.get(x, np.nan) for r in members], y=[y_value(r) for r in members],
            mode="lines+markers+text", name=family, line=dict(color=QUALITATIVE[i % len(QUALITATIVE)], width=2),
            marker=dict(size=9), text=[_setting_tag(r) for r in members], textposition="top center",
            textfont=dict(size=11, color=QUALITATIVE[i % len(QUALITATIVE)]), customdata=[r["label"] for r in members],
            hovertemplate="%{customdata}<br>" + x_title + ": %{x:.3g}<br>" + y_title + ": %{y:.3g}<extra></extra>",
        ))
    for row in rows:
        if row["policy"] == "none":
            fig.add_trace(go.Scatter(
                x=[row.get(x, np.nan)], y=[y_value(row)], mode="markers", name="unmodified model",
                marker=dict(symbol="star", size=16, color="black"),
                hovertemplate="unmodified model<br>" + x_title + ": %{x:.3g}<br>" + y_title + ": %{y:.3g}<extra></extra>",
            ))
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title=y_title + (" (% change)" if y_as_change else ""), zeroline=True, zerolinecolor=MUTED)
    return style(fig, height=440)


def short_path(label: str, parts: int = 2) -> str:
    """``/runs/demo/plans/eplb-g8.json`` → ``plans/eplb-g8.json`` (labels that are not paths stay)."""
    if "/" not in label:
        return label
    return "/".join(label.rstrip("/").split("/")[-parts:])


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


# ---------------------------------------------------------------------------- co-activation (one layer)
ROLE_SYMBOLS = {"specialized": "diamond", "collaborative": "circle", "unused": "x"}


def community_colors(community: np.ndarray) -> list[str]:
    """One colour per expert: its community's (grey for unused experts, label -1)."""
    return [MUTED if c < 0 else QUALITATIVE[int(c) % len(QUALITATIVE)] for c in np.asarray(community)]


def community_order(community: np.ndarray, load: np.ndarray) -> np.ndarray:
    """Experts ordered by community (largest first), busiest first inside each; unused last."""
    community = np.asarray(community)
    sizes = {c: int((community == c).sum()) for c in set(community.tolist())}
    rank = np.array([(-sizes[c] if c >= 0 else 1) for c in community])
    return np.lexsort((-np.asarray(load), community, rank))


def coactivation_heatmap(matrix: np.ndarray, order: np.ndarray, community: np.ndarray, kind: str) -> go.Figure:
    """``[E, E]`` matrix reordered by community, with each community's block outlined.

    ``kind``: ``counts`` (tokens sent to both), ``conditional`` (row i: P(j | i)) or ``lift``
    (drawn as log2, so 0 = chance, red = together more often than chance, blue = less).
    """
    m = np.asarray(matrix, dtype=np.float64)[np.ix_(order, order)].copy()
    np.fill_diagonal(m, np.nan)  # the diagonal is the load (counts) or 1 (conditional): not a pair
    labels = [str(e) for e in order]
    if kind == "lift":
        with np.errstate(divide="ignore"):
            z = np.log2(np.where(m > 0, m, np.nan))
        # Rare pairs have extreme lifts; clip the colours to the bulk so the structure shows.
        bound = float(np.nanpercentile(np.abs(z[np.isfinite(z)]), 98)) if np.isfinite(z).any() else 1.0
        z = np.where(np.isnan(m), np.nan, np.where(np.isfinite(z), z, -bound))  # never together: darkest blue
        trace = go.Heatmap(z=z, x=labels, y=labels, colorscale=DIVERGING, zmid=0, zmin=-bound, zmax=bound,
                           customdata=m, colorbar=dict(title="log2 lift", thickness=12),
                           hovertemplate="experts %{y} & %{x}<br>lift %{customdata:.2f}<extra></extra>")
    elif kind == "conditional":
        trace = go.Heatmap(z=m, x=labels, y=labels, colorscale=SEQUENTIAL, zmin=0, zmax=float(np.nanpercentile(m, 99)),
                           colorbar=dict(title="P(col | row)", thickness=12),
                           hovertemplate="P(expert %{x} | expert %{y}) = %{z:.3f}<extra></extra>")
    else:
        trace = go.Heatmap(z=m, x=labels, y=labels, colorscale=SEQUENTIAL, zmin=0, zmax=float(np.nanpercentile(m, 99)),
                           colorbar=dict(title="tokens", thickness=12),
                           hovertemplate="experts %{y} & %{x}: %{z:,.0f} tokens together<extra></extra>")
    fig = go.Figure(trace)
    sorted_comm = np.asarray(community)[order]
    start = 0
    for end in list(np.flatnonzero(np.diff(sorted_comm)) + 1) + [len(order)]:
        if sorted_comm[start] >= 0:
            color = QUALITATIVE[int(sorted_comm[start]) % len(QUALITATIVE)]
            fig.add_shape(type="rect", x0=start - 0.5, x1=end - 0.5, y0=start - 0.5, y1=end - 0.5,
                          line=dict(color=color, width=2.5))
        start = end
    fig.update_xaxes(type="category", showticklabels=len(order) <= 64, tickfont=dict(size=9), title="expert")
    fig.update_yaxes(type="category", showticklabels=len(order) <= 64, tickfont=dict(size=9), autorange="reversed",
                     title="expert")
    return style(fig, height=560)


def coactivation_network(xy: np.ndarray, edges: Sequence[tuple[int, int, float]], load: np.ndarray,
                         community: np.ndarray, roles: Sequence[str]) -> go.Figure:
    """The co-activation graph: experts sized by load, coloured by community, shaped by role."""
    xy = np.asarray(xy)
    load = np.asarray(load, dtype=np.float64)
    ex, ey = [], []
    for i, j, _ in edges:
        ex += [xy[i, 0], xy[j, 0], None]
        ey += [xy[i, 1], xy[j, 1], None]
    fig = go.Figure(go.Scatter(x=ex, y=ey, mode="lines", line=dict(color="rgba(120,130,150,0.25)", width=1),
                               hoverinfo="skip", showlegend=False))
    size = 8 + 22 * np.sqrt(load / load.max()) if load.max() > 0 else np.full(load.shape, 10.0)
    degree = np.zeros(len(load), dtype=int)
    for i, j, _ in edges:
        degree[i] += 1
        degree[j] += 1
    fig.add_trace(go.Scatter(
        x=xy[:, 0], y=xy[:, 1], mode="markers+text", text=[str(i) for i in range(len(load))],
        textposition="middle center", textfont=dict(size=9, color="white"),
        marker=dict(size=size, color=community_colors(community), symbol=[ROLE_SYMBOLS.get(r, "circle") for r in roles],
                    line=dict(color="white", width=1)),
        customdata=np.stack([load, np.asarray(community), degree], axis=1),
        hovertext=list(roles),
        hovertemplate="expert %{text}<br>%{customdata[0]:,.0f} tokens · community %{customdata[1]}<br>"
                      "%{hovertext} · %{customdata[2]} strong partners<extra></extra>",
        showlegend=False,
    ))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, scaleanchor="x")
    return style(fig, height=560)


def collaboration_specialization(collaboration: np.ndarray, specialization: np.ndarray, load: np.ndarray,
                                 roles: Sequence[str], community: np.ndarray, chance: float | None,
                                 threshold: float | None, top_t: int | None) -> go.Figure:
    """Each expert: how broadly it collaborates (x) vs how concentrated its partners are (y), sized by load."""
    load = np.asarray(load, dtype=np.float64)
    size = 7 + 20 * np.sqrt(load / load.max()) if load.max() > 0 else np.full(load.shape, 10.0)
    fig = go.Figure()
    for role in ("collaborative", "specialized"):
        keep = np.array([r == role for r in roles])
        if not keep.any():
            continue
        idx = np.flatnonzero(keep)
        # The legend shows the role's shape in grey: the markers' colours are communities.
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=role,
                                 marker=dict(size=11, symbol=ROLE_SYMBOLS[role], color="#495057")))
        fig.add_trace(go.Scatter(
            x=np.asarray(collaboration)[idx], y=np.asarray(specialization)[idx], mode="markers", name=role,
            showlegend=False,
            marker=dict(size=size[idx], symbol=ROLE_SYMBOLS[role], color=np.array(community_colors(community))[idx],
                        line=dict(color="white", width=1), opacity=0.9),
            text=[str(i) for i in idx], customdata=load[idx],
            hovertemplate="expert %{text} (" + role + ")<br>collaboration %{x:.2f} · specialization %{y:.2f}"
                          "<br>%{customdata:,.0f} tokens<extra></extra>",
        ))
    if threshold is not None:
        fig.add_hline(y=threshold, line_dash="dash", line_color=WARN, annotation_text="specialized above",
                      annotation_position="top right")
    if chance is not None:
        fig.add_hline(y=chance, line_dash="dot", line_color=MUTED, annotation_text="chance", annotation_position="bottom right")
    fig.update_xaxes(title="collaboration (effective partners / (E − 1))", range=[0, 1.02])
    fig.update_yaxes(title=f"specialization (share of co-activations with its Top-{top_t or 'T'})", range=[0, 1.02])
    return style(fig, height=460)


# ---------------------------------------------------------------------------- one expert
def ranked_bars(names: Sequence[str], values: Sequence[float], title: str, x_title: str,
                colors: Sequence[str] | str = ACCENT, hover: Sequence[str] | None = None, value_format: str = ".1%",
                reference: float | None = None, reference_label: str = "") -> go.Figure:
    """Horizontal bars, largest on top (``names`` in the order given, first = top)."""
    fig = go.Figure(go.Bar(
        y=list(names), x=list(values), orientation="h", marker_color=colors,
        text=[format(v, value_format) for v in values], textposition="outside", cliponaxis=False,
        customdata=list(hover) if hover is not None else list(names),
        hovertemplate="%{customdata}<br>%{x:" + value_format + "}<extra></extra>",
    ))
    if reference is not None:
        # No label on the line itself (it would sit on the title): the axis title names it.
        fig.add_vline(x=reference, line_dash="dot", line_color="#495057")
        x_title = f"{x_title} · dotted: {reference_label}" if reference_label else x_title
    fig.update_yaxes(autorange="reversed", type="category")
    top = max([float(v) for v in values] + [reference or 0.0, 1e-12])
    fig.update_xaxes(title=x_title, range=[0, top * 1.18],  # room for the value labels
                     tickformat=value_format.replace(".1", ".0") if "%" in value_format else None)
    return style(fig, height=max(240, 70 + 24 * len(names)), title=title)


def layer_bars(layer_labels: Sequence[str], values: Sequence[float], title: str, y_title: str,
               highlight: int | None = None, reference: float | None = None, reference_label: str = "",
               value_format: str = ".2f", text_suffix: str = "") -> go.Figure:
    """One bar per MoE layer (``highlight`` = position drawn in orange)."""
    colors = [WARN if i == highlight else ACCENT for i in range(len(values))]
    fig = go.Figure(go.Bar(x=list(layer_labels), y=list(values), marker_color=colors,
                           text=[format(v, value_format) + text_suffix for v in values], textposition="outside",
                           cliponaxis=False, hovertemplate="%{x}: %{y:" + value_format + "}<extra></extra>"))
    if reference is not None:
        fig.add_hline(y=reference, line_dash="dot", line_color="#495057", annotation_text=reference_label,
                      annotation_position="top right", annotation_bgcolor="rgba(255,255,255,0.85)")
    fig.update_yaxes(title=y_title, rangemode="tozero")
    return style(fig, height=300, title=title)


def visible_token(text: str) -> str:
    """A token string with its whitespace made visible: ``' foo\\n'`` → ``'·foo⏎'``."""
    return text.replace(" ", "·").replace("\n", "⏎").replace("\t", "⇥") if text else "∅"


# ---------------------------------------------------------------------------- cross-layer flow
def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha})"


def flow_sankey(layers: Sequence[int], transitions: Sequence[np.ndarray], groups: Sequence[np.ndarray],
                group_names: Sequence[Sequence[str]], group_colors: Sequence[Sequence[str]],
                max_links: int | None = None, title: str | None = None) -> go.Figure:
    """Sankey of token flow between consecutive layers, experts pooled into groups.

    Args:
        layers: ``[n + 1]`` trace layer indices, in order.
        transitions: ``n`` count matrices ``[E_l, E_l+1]`` (layer ``l`` → ``l + 1``).
        groups: ``n + 1`` arrays ``[E_l]``: the group (community, or the expert itself) of each
            expert, ``-1`` = left out.
        group_names, group_colors: per layer, the name and colour of each group id.
        max_links: draw only the strongest links of each layer pair (None = all); groups left
            without a link are not drawn.
    """
    node_index: dict[tuple[int, int], int] = {}
    labels, colors, xs = [], [], []

    def node(p: int, g: int) -> int:
        if (p, g) not in node_index:
            node_index[(p, g)] = len(labels)
            labels.append(group_names[p][g])
            colors.append(group_colors[p][g])
            xs.append(0.001 + 0.998 * p / max(len(layers) - 1, 1))
        return node_index[(p, g)]

    sources, targets, values, link_colors, hovers = [], [], [], [], []
    for p, counts in enumerate(transitions):
        a, b = np.asarray(groups[p]), np.asarray(groups[p + 1])
        pooled = np.zeros((len(group_names[p]), len(group_names[p + 1])))
        ia, ib = np.flatnonzero(a >= 0), np.flatnonzero(b >= 0)
        np.add.at(pooled, (a[ia][:, None], b[ib][None, :]), np.asarray(counts, dtype=np.float64)[np.ix_(ia, ib)])
        total = pooled.sum()
        flat = np.argsort(-pooled, axis=None)
        flat = flat[pooled.ravel()[flat] > 0]
        if max_links is not None:
            flat = flat[:max_links]
        for g, h in zip(*np.unravel_index(np.sort(flat), pooled.shape)):
            sources.append(node(p, int(g)))
            targets.append(node(p + 1, int(h)))
            values.append(float(pooled[g, h]))
            link_colors.append(_rgba(group_colors[p][g], 0.35))
            hovers.append(f"{pooled[g, h] / total:.1%} of layer {layers[p]}→{layers[p + 1]} flow" if total else "")
    # Plotly honours node x only with y too: stack each layer's nodes in group order, sized by flow.
    flow = np.zeros(len(labels))
    np.add.at(flow, sources, values)
    inflow = np.zeros(len(labels))
    np.add.at(inflow, targets, values)
    flow = np.maximum(flow, inflow)
    ys = np.zeros(len(labels))
    for p in range(len(layers)):
        members = sorted((g, i) for (q, g), i in node_index.items() if q == p)
        total = sum(flow[i] for _, i in members) or 1.0
        position = 0.0
        for _, i in members:
            ys[i] = 0.001 + 0.998 * (position + flow[i] / 2) / total
            position += flow[i]
    fig = go.Figure(go.Sankey(
        arrangement="snap",
        node=dict(label=labels, color=colors, pad=6, thickness=14, line=dict(width=0), x=xs, y=ys.tolist(),
                  hovertemplate="%{label}<br>%{value:,.0f} token slots<extra></extra>"),
        link=dict(source=sources, target=targets, value=values, color=link_colors, customdata=hovers,
                  hovertemplate="%{source.label} → %{target.label}<br>%{value:,.0f} token slot pairs · "
                                "%{customdata}<extra></extra>"),
    ))
    fig = style(fig, height=640, title=title)
    for p, layer in enumerate(layers):
        fig.add_annotation(x=p / max(len(layers) - 1, 1), y=1.0, xref="paper", yref="paper", yanchor="bottom",
                           text=f"<b>layer {layer}</b>", showarrow=False, font=dict(size=13))
    fig.update_layout(margin=dict(t=fig.layout.margin.t + 24))
    return fig


def grouped_layer_bars(layer_labels: Sequence[str], series: dict[str, Sequence[float | None]], title: str,
                       y_title: str, y_range: tuple[float, float] | None = None) -> go.Figure:
    """One group of bars per layer, one bar per named series."""
    fig = go.Figure([
        go.Bar(name=name, x=list(layer_labels), y=[np.nan if v is None else v for v in values],
               marker_color=QUALITATIVE[i % len(QUALITATIVE)],
               hovertemplate="%{x} · " + name + ": %{y:.3f}<extra></extra>")
        for i, (name, values) in enumerate(series.items())
    ])
    fig.update_layout(barmode="group", bargap=0.25)
    fig.update_yaxes(title=y_title, range=list(y_range) if y_range else None)
    return style(fig, title=title)


# ---------------------------------------------------------------------------- placement
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


def plan_metric_ratios(results: dict[str, dict], highlight: str, baseline: str = "contiguous",
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
