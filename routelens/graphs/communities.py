"""The co-activation graph of one layer: communities (Louvain, networkx), modularity, and exports.

Nodes are experts (attributes: load and scores); an edge ``i — j`` exists when some token chose both,
weighted by the co-activation count, and carries the normalised forms (``P(j|i)``, ``P(i|j)``,
Jaccard, lift, PMI). Communities are found by Louvain modularity maximisation
(``networkx.community.louvain_communities``; Blondel et al., "Fast unfolding of communities in large
networks", J. Stat. Mech. 2008) on the count weights, with a fixed seed so the result is
reproducible. They are the groups of experts that C2R-style placement wants on one device.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import atomic_write, atomic_write_json
from . import metrics

EXPORT_FORMATS = ("graphml", "gexf", "json")


def _weighted_graph(counts: np.ndarray):
    import networkx as nx

    counts = np.asarray(counts)
    used = np.flatnonzero(np.diag(counts) > 0)
    graph = nx.Graph()
    graph.add_nodes_from(used.tolist())
    iu, ju = np.triu_indices(counts.shape[0], 1)
    weights = counts[iu, ju]
    keep = weights > 0
    graph.add_weighted_edges_from(zip(iu[keep].tolist(), ju[keep].tolist(), weights[keep].tolist()))
    return graph


def detect_communities(counts: np.ndarray, seed: int = 0, resolution: float = 1.0) -> tuple[np.ndarray, float | None]:
    """Louvain communities of a layer's co-activation graph and their modularity.

    Args:
        counts: ``[E, E]`` co-activation counts (load on the diagonal; edges = off-diagonal).
        seed: random seed of Louvain (fixed: same counts → same communities).
        resolution: Louvain resolution (> 1 favours smaller communities).

    Returns:
        ``(labels [E] int64, modularity)``: community of each expert, numbered by decreasing size
        (ties by smallest member), ``-1`` for unused experts; modularity (Newman 2006) of that
        partition on the count-weighted graph, None when the graph has no edge.

    Example:
        >>> counts = np.array([[5, 5, 0, 0], [5, 5, 0, 0], [0, 0, 5, 5], [0, 0, 5, 5]])
        >>> labels, q = detect_communities(counts)
        >>> labels.tolist(), round(q, 2)
        ([0, 0, 1, 1], 0.5)
    """
    import networkx as nx

    counts = np.asarray(counts)
    labels = np.full(counts.shape[0], -1, dtype=np.int64)
    graph = _weighted_graph(counts)
    if graph.number_of_nodes() == 0:
        return labels, None
    if graph.number_of_edges() == 0:
        for c, node in enumerate(sorted(graph.nodes)):
            labels[node] = c
        return labels, None
    parts = nx.community.louvain_communities(graph, weight="weight", resolution=resolution, seed=seed)
    parts = sorted((sorted(p) for p in parts), key=lambda p: (-len(p), p[0]))
    for c, members in enumerate(parts):
        labels[members] = c
    return labels, modularity(counts, labels, resolution=resolution)


def modularity(counts: np.ndarray, labels: np.ndarray, resolution: float = 1.0) -> float | None:
    """Newman modularity of a partition of the count-weighted co-activation graph (numpy, exact).

    ``Q = sum_c [ W_c / W - resolution * (D_c / 2W)^2 ]`` with ``W`` the total edge weight
    (off-diagonal counts, each pair once), ``W_c`` the weight inside community ``c`` and ``D_c``
    the summed weighted degree of its experts; equals ``networkx.community.modularity``.
    Experts labelled ``-1`` (unused, isolated) are ignored. None when there is no edge.
    """
    w = np.asarray(counts, dtype=np.float64).copy()
    np.fill_diagonal(w, 0.0)
    labels = np.asarray(labels)
    keep = labels >= 0
    w, lab = w[np.ix_(keep, keep)], labels[keep]
    total = w.sum() / 2.0
    if total <= 0:
        return None
    degree = w.sum(axis=1)
    onehot = np.zeros((lab.size, int(lab.max()) + 1))
    onehot[np.arange(lab.size), lab] = 1.0
    inside = np.einsum("ic,ij,jc->c", onehot, w, onehot) / 2.0
    d_c = onehot.T @ degree
    return float(np.sum(inside / total - resolution * (d_c / (2.0 * total)) ** 2))


def communities_from_labels(labels: np.ndarray) -> list[list[int]]:
    """``[[experts of community 0], [community 1], ...]`` from :func:`detect_communities` labels."""
    labels = np.asarray(labels)
    return [np.flatnonzero(labels == c).tolist() for c in range(int(labels.max()) + 1)] if (labels >= 0).any() else []


def coactivation_graph(
    counts: np.ndarray,
    num_tokens: int,
    load_weight: np.ndarray | None = None,
    scores: dict[str, np.ndarray] | None = None,
    communities: np.ndarray | None = None,
):
    """The layer as a ``networkx.Graph`` ready for export.

    Args:
        counts: ``[E, E]`` co-activation counts (load on the diagonal).
        num_tokens: tokens of the layer (for lift / PMI).
        load_weight: ``[E]`` routing-weight mass (node attribute ``load_weight``).
        scores: ``{name: [E]}`` per-expert scores (node attributes; ``role`` becomes its name).
        communities: ``[E]`` community labels (node attribute ``community``).

    Returns:
        Every expert is a node (``load_tokens``, ``load_weight``, scores, ``community``); an edge
        for every pair that co-activated at least once, with ``count`` (= ``weight``),
        ``p_j_given_i`` / ``p_i_given_j`` (for ``i < j``), ``jaccard``, ``lift``, ``pmi``.
    """
    import networkx as nx

    counts = np.asarray(counts)
    e = counts.shape[0]
    load = np.diag(counts)
    cond, jac, lif = metrics.conditional_probability(counts), metrics.jaccard(counts), metrics.lift(counts, num_tokens)
    graph = nx.Graph(num_tokens=int(num_tokens))
    for i in range(e):
        attrs: dict[str, Any] = {"load_tokens": int(load[i])}
        if load_weight is not None:
            attrs["load_weight"] = float(load_weight[i])
        for name, values in (scores or {}).items():
            value = values[i]
            if name == "role":
                attrs[name] = metrics.ROLE_NAMES[int(value)]
            else:
                attrs[name] = float(value)
        if communities is not None:
            attrs["community"] = int(communities[i])
        graph.add_node(i, **attrs)
    iu, ju = np.triu_indices(e, 1)
    keep = counts[iu, ju] > 0
    for i, j in zip(iu[keep].tolist(), ju[keep].tolist()):
        c = int(counts[i, j])
        graph.add_edge(i, j, weight=c, count=c, p_j_given_i=float(cond[i, j]), p_i_given_j=float(cond[j, i]),
                       jaccard=float(jac[i, j]), lift=float(lif[i, j]), pmi=float(math.log(lif[i, j])))
    return graph


def graph_to_json(graph) -> dict[str, Any]:
    """Node-link JSON of :func:`coactivation_graph` (NaN scores become null)."""
    def clean(attrs: dict[str, Any]) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in attrs.items()}

    return {
        "directed": False,
        "graph": clean(dict(graph.graph)),
        "nodes": [{"id": int(n), **clean(a)} for n, a in graph.nodes(data=True)],
        "edges": [{"source": int(u), "target": int(v), **clean(a)} for u, v, a in graph.edges(data=True)],
    }


def export_graph(graph, path: str | Path, fmt: str) -> Path:
    """Write ``graph`` atomically as ``graphml``, ``gexf`` or ``json`` (node-link) to ``path``."""
    import networkx as nx

    path = Path(path)
    if fmt == "json":
        return atomic_write_json(path, graph_to_json(graph), indent=None)
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"unknown graph export format {fmt!r}: choose from {', '.join(EXPORT_FORMATS)}")
    writer = nx.write_graphml if fmt == "graphml" else nx.write_gexf
    return atomic_write(path, lambda tmp: writer(graph, tmp))


def parse_export_formats(spec: str | None) -> list[str]:
    """``"graphml,json"`` → ``["graphml", "json"]`` (``all`` = every format)."""
    if not spec:
        return []
    names = [s.strip().lower() for s in spec.split(",") if s.strip()]
    if "all" in names:
        return list(EXPORT_FORMATS)
    bad = [n for n in names if n not in EXPORT_FORMATS]
    if bad:
        raise InputError(f"unknown --export format {bad[0]!r}: choose from {', '.join(EXPORT_FORMATS)} or all")
    return list(dict.fromkeys(names))


def load_graph_json(path: str | Path):
    """Read a graph written by :func:`export_graph` in ``json`` format back into networkx."""
    import networkx as nx

    data = json.loads(Path(path).read_text())
    graph = nx.Graph(**data.get("graph", {}))
    for node in data["nodes"]:
        node = dict(node)
        graph.add_node(node.pop("id"), **node)
    for edge in data["edges"]:
        edge = dict(edge)
        graph.add_edge(edge.pop("source"), edge.pop("target"), **edge)
    return graph
