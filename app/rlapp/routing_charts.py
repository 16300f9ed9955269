"""Figures of the routing pages: co-activation matrix, graph, collaboration vs specialization, cross-layer flow.

Inputs are what :mod:`routelens.graphs` computed (counts, lift, communities, scores, transitions);
these functions only order, colour and draw them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go

from .charts import DIVERGING, MUTED, QUALITATIVE, SEQUENTIAL, WARN, style


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
