"""Plotly figures every page shares: the palette, the common look, and generic bars and heatmaps.

Pure functions from arrays (already computed by routelens) to figures: no analysis happens here,
only marks, colours, labels and order. Page-specific figures are in :mod:`.routing_charts` and
:mod:`.systems_charts`.
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


def short_path(label: str, parts: int = 2) -> str:
    """``/runs/demo/plans/eplb-g8.json`` → ``plans/eplb-g8.json`` (labels that are not paths stay)."""
    if "/" not in label:
        return label
    return "/".join(label.rstrip("/").split("/")[-parts:])


def visible_token(text: str) -> str:
    """A token string with its whitespace made visible: ``' foo\\n'`` → ``'·foo⏎'``."""
    return text.replace(" ", "·").replace("\n", "⏎").replace("\t", "⇥") if text else "∅"


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
