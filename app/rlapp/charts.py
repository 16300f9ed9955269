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
    fig.update_layout(
        template="plotly_white",
        height=height,
        margin=dict(l=10, r=10, t=48 if title else 16, b=10),
        font=dict(size=13),
        title=dict(text=title, x=0, xanchor="left", font=dict(size=15)) if title else None,
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1),
        hoverlabel=dict(font_size=12),
    )
    return fig


def layer_imbalance_bars(layer_labels: Sequence[str], load_max_over_mean: Sequence[float | None]) -> go.Figure:
    """Bar per MoE layer of the busiest expert's load over the mean (1.0 = balanced)."""
    values = [np.nan if v is None else float(v) for v in load_max_over_mean]
    fig = go.Figure(go.Bar(
        x=list(layer_labels), y=values, marker_color=ACCENT,
        hovertemplate="%{x}<br>busiest expert: %{y:.2f}× the mean load<extra></extra>",
    ))
    fig.add_hline(y=1.0, line_dash="dot", line_color=MUTED, annotation_text="balanced", annotation_position="top left")
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
    fig.add_hline(y=mean, line_dash="dot", line_color=MUTED, annotation_text="mean", annotation_position="top left")
    fig.update_xaxes(title="expert")
    fig.update_yaxes(title="tokens routed")
    return style(fig, title=title)
