"""Cost model: hand-made cases with known traffic and time (the traffic itself: test_traffic.py)."""

from __future__ import annotations

import numpy as np
import pytest

from routelens.placement.cost import CostModel, estimate_time, layer_metrics, layer_traffic, score_table, traffic_from_hits
from routelens.placement.topology import Topology, make_topology
from routelens.placement.traffic import assign_replicas, token_source_gpu


def test_traffic_splits_by_link_class_and_time_is_the_bottleneck():
    topo = make_topology(4, num_nodes=2, intra_gbps=100, inter_gbps=10, intra_latency_us=1, inter_latency_us=5)
    table = np.array([[0], [1], [2], [3]])
    ids = np.array([[1, 2], [1, 3], [0, 1], [0, 1]])  # all tokens start on GPU 0 or 1 (node 0)
    source = np.array([0, 0, 1, 1])
    traffic = layer_traffic(source, assign_replicas(ids, source, table, topology=topo), topo)
    assert traffic.matrix.tolist() == [[0, 2, 1, 1], [2, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert traffic.send.tolist() == [[2, 2], [2, 0], [0, 0], [0, 0]]  # [intra, inter]
    assert traffic.recv.tolist() == [[2, 0], [2, 0], [0, 1], [0, 1]]
    assert traffic.compute.tolist() == [2, 4, 1, 1]
    cost = CostModel(topo, token_bytes=1e6, expert_flops_per_token=1e12)
    est = estimate_time(traffic, cost)
    intra = 1e-6 + 2 * 1e6 / 100e9
    inter = 5e-6 + 2 * 1e6 / 10e9  # GPU 0 sends 2 tokens across nodes
    assert est["dispatch_s"] == pytest.approx(max(intra, inter))
    assert est["a2a_s"] == pytest.approx(2 * max(intra, inter))
    assert est["compute_s"] == pytest.approx(4 * 1e12 / 400e12)
    assert est["bottleneck"] == "GPU 0 inter-node send"
    metrics = layer_metrics(traffic, cost)
    assert metrics["busiest_gpu_recv"] == pytest.approx(2 / 1.0)  # T/G = 1 token
    assert metrics["inter_node_share"] == pytest.approx(2 / 6)


def test_hits_give_the_same_traffic_as_destinations():
    rng = np.random.default_rng(0)
    ids = np.stack([rng.choice(12, 3, replace=False) for _ in range(200)])
    table = rng.permutation(12).reshape(4, 3)
    source = token_source_gpu(200, 4)
    dest = assign_replicas(ids, source, table)
    direct = layer_traffic(source, dest, None, 4)
    hits = np.zeros((4, 4), dtype=np.int64)
    for t in range(200):
        for g in set(dest[t].tolist()):
            hits[source[t], g] += 1
    via = traffic_from_hits(hits, direct.compute, 200)
    assert np.array_equal(via.matrix, direct.matrix) and np.array_equal(via.recv, direct.recv)
    assert via.gpus_per_token == pytest.approx(direct.gpus_per_token)


def test_score_table_ranks_a_co_located_layout_above_a_scattered_one():
    ids = np.array([[0, 1], [2, 3]] * 50)
    cost = CostModel(Topology(1, 2), token_bytes=1000)
    together = score_table(ids, np.array([[0, 1], [2, 3]]), cost)
    apart = score_table(ids, np.array([[0, 2], [1, 3]]), cost)
    assert together["gpus_per_token"] == 1.0 and apart["gpus_per_token"] == 2.0
    assert together["a2a_us"] < apart["a2a_us"]
