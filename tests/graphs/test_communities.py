"""Louvain recovers planted expert groups; modularity equals networkx; exports read back."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest

from routelens.errors import InputError
from routelens.graphs import coactivation_counts, coactivation_graph, detect_communities, expert_roles, export_graph
from routelens.graphs.communities import (
    _weighted_graph,
    communities_from_labels,
    load_graph_json,
    modularity,
    parse_export_formats,
)
from routelens.synthetic import synthetic_topk_ids


def planted_counts(seed: int = 0) -> tuple[np.ndarray, list[set[int]]]:
    """16 experts in 4 groups of 4; every token takes 2 experts of one group."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(16)
    groups = [set(perm[4 * g: 4 * g + 4].tolist()) for g in range(4)]
    rows = []
    for _ in range(4000):
        g = sorted(groups[rng.integers(4)])
        rows.append(rng.choice(g, 2, replace=False))
    return coactivation_counts(np.array(rows), 16), groups


def test_louvain_recovers_planted_groups():
    counts, groups = planted_counts()
    labels, q = detect_communities(counts, seed=0)
    found = [set(c) for c in communities_from_labels(labels)]
    assert sorted(map(sorted, found)) == sorted(map(sorted, groups))
    assert q == pytest.approx(0.75, abs=0.01)  # 4 equal disjoint groups: 1 - 4 * (1/4)^2


def test_modularity_equals_networkx_on_noisy_graph():
    ids = synthetic_topk_ids(3000, 24, 4, num_groups=4, in_group=0.6, seed=3)
    counts = coactivation_counts(ids, 24)
    labels, q = detect_communities(counts, seed=1)
    graph = _weighted_graph(counts)
    assert q == pytest.approx(nx.community.modularity(graph, communities_from_labels(labels), weight="weight"))
    assert modularity(counts, labels, resolution=1.5) == pytest.approx(
        nx.community.modularity(graph, communities_from_labels(labels), weight="weight", resolution=1.5))


def test_unused_experts_get_no_community_and_same_seed_same_result():
    counts, _ = planted_counts()
    counts = np.pad(counts, ((0, 2), (0, 2)))  # experts 16, 17 never chosen
    labels, _ = detect_communities(counts, seed=5)
    assert labels[16] == -1 and labels[17] == -1
    assert np.array_equal(labels, detect_communities(counts, seed=5)[0])


@pytest.mark.parametrize("fmt", ["graphml", "gexf", "json"])
def test_graph_exports_read_back_with_attributes(tmp_path, fmt):
    counts, _ = planted_counts()
    scores = expert_roles(counts, top_t=1)
    labels, _ = detect_communities(counts)
    graph = coactivation_graph(counts, 4000, load_weight=np.diag(counts) * 0.5, scores=scores, communities=labels)
    path = export_graph(graph, tmp_path / f"layer.{fmt}", fmt)
    back = {"graphml": nx.read_graphml, "gexf": nx.read_gexf, "json": load_graph_json}[fmt](path)
    assert back.number_of_nodes() == 16 and back.number_of_edges() == graph.number_of_edges()
    node = back.nodes[next(iter(back.nodes))]
    assert {"load_tokens", "load_weight", "specialization", "role", "community"} <= set(node)
    u, v = next(iter(back.edges))
    edge = back.edges[u, v]
    i, j = int(u), int(v)
    assert edge["count"] == counts[i, j] and edge["jaccard"] == pytest.approx(graph.edges[i, j]["jaccard"])
    if fmt == "json":
        json.loads(path.read_text())  # strict JSON (no NaN)


def test_export_format_parsing():
    assert parse_export_formats("graphml, JSON") == ["graphml", "json"]
    assert parse_export_formats("all") == ["graphml", "gexf", "json"]
    with pytest.raises(InputError, match="unknown --export format 'dot'"):
        parse_export_formats("graphml,dot")
