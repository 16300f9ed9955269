"""Cost model: hand-made cases with known traffic, and the replica policies."""

from __future__ import annotations

import numpy as np
import pytest

from routelens.errors import PlanError
from routelens.placement.cost import (CostModel, assign_replicas, dispatch_matrix, dispatch_matrix_from_dest,
                                      estimate_time, gpus_per_token, layer_metrics, layer_traffic, score_table,
                                      token_source_gpu, traffic_from_hits)
from routelens.placement.topology import Topology, make_topology


def test_tokens_start_in_contiguous_blocks_like_the_runner():
    source = token_source_gpu(10, 4)
    assert source.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    for rank in range(4):  # rank r holds [ceil(r·T/G), ceil((r+1)·T/G))
        start, end = -(-rank * 10 // 4), -(-(rank + 1) * 10 // 4)
        assert np.flatnonzero(source == rank).tolist() == list(range(start, end))


def test_a_token_is_sent_once_per_distinct_remote_gpu():
    table = np.array([[0, 1], [2, 3]])  # GPU 0: experts 0, 1; GPU 1: experts 2, 3
    ids = np.array([[0, 2], [0, 1], [2, 3], [1, 3]])
    source = np.array([0, 1, 1, 0])
    matrix = dispatch_matrix(ids, source, table)
    # token 0 (GPU 0) -> GPU 1 once; token 1 (GPU 1) -> GPU 0 once (two experts there);
    # token 2 stays home; token 3 (GPU 0) -> GPU 1 once
    assert matrix.tolist() == [[0, 2], [1, 0]]
    dest = assign_replicas(ids, source, table)
    assert gpus_per_token(ids, np.array([0, 0, 1, 1])) == pytest.approx((2 + 1 + 1 + 2) / 4)
    assert gpus_per_token(ids, dest) == pytest.approx(1.5)


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


def test_nearest_replica_prefers_own_gpu_then_visited_then_node_then_least_loaded():
    topo = Topology(num_nodes=2, gpus_per_node=2)
    # expert 0 on GPUs 1, 2 and 3; experts 1..5 once each
    table = np.array([[2, 3], [0, 4], [0, 1], [0, 5]])
    ids = np.array([[0, 2],   # starts on GPU 1, which holds expert 0: home
                    [1, 0],   # on GPU 0, already sent to GPU 2 for expert 1: GPU 2 costs no extra copy
                    [0, 2],   # on GPU 0, nothing visited: GPU 1 is in its node
                    [0, 4]])  # on GPU 3, which holds expert 0: home
    source = np.array([1, 0, 0, 3])
    dest = assign_replicas(ids, source, table, "nearest-then-least-loaded", topo)
    assert dest.tolist() == [[1, 0], [2, 2], [1, 0], [3, 1]]
    # a tie between replicas goes to the least-loaded GPU: expert 0 on GPUs 2 and 3, GPU 2 serves expert 3 twice
    table = np.array([[5, 1], [6, 2], [0, 3], [0, 4]])
    dest = assign_replicas(np.array([[3, 5], [3, 6], [0, 5]]), np.array([0, 0, 1]), table, topology=Topology(1, 4))
    assert dest[2, 0] == 3


def test_round_robin_and_first_policies():
    table = np.array([[0, 1], [0, 2]])
    ids = np.array([[0, 1]] * 4)
    source = np.zeros(4, dtype=np.int64)
    assert assign_replicas(ids, source, table, "round-robin")[:, 0].tolist() == [0, 1, 0, 1]
    assert assign_replicas(ids, source, table, "first")[:, 0].tolist() == [0, 0, 0, 0]


def test_dropped_slots_go_nowhere_and_unplaced_experts_are_an_error():
    table = np.array([[0], [1]])
    dest = assign_replicas(np.array([[0, -1], [1, 0]]), np.array([0, 1]), table)
    assert dest.tolist() == [[0, -1], [1, 0]]
    assert dispatch_matrix_from_dest(np.array([0, 1]), dest, 2).tolist() == [[0, 0], [1, 0]]
    with pytest.raises(PlanError, match="expert 2"):
        assign_replicas(np.array([[0, 2]]), np.array([0]), table)
    with pytest.raises(PlanError, match="replica policy"):
        assign_replicas(np.array([[0, 1]]), np.array([0]), table, "closest")


def test_dispatch_matrix_matches_a_brute_force_count_with_replicas():
    rng = np.random.default_rng(1)
    num_experts, num_gpus = 10, 4
    table = np.array([[0, 1, 2], [3, 4, 0], [5, 6, 7], [8, 9, 3]])
    ids = np.stack([rng.choice(num_experts, 3, replace=False) for _ in range(700)])
    source = token_source_gpu(700, num_gpus)
    topo = Topology(num_nodes=2, gpus_per_node=2)
    for policy in ("nearest-then-least-loaded", "round-robin", "first"):
        dest = assign_replicas(ids, source, table, policy, topo)
        assert all(ids[t, j] in table[dest[t, j]] for t in range(700) for j in range(3))
        brute = np.zeros((num_gpus, num_gpus), dtype=np.int64)
        for t in range(700):
            for g in set(dest[t].tolist()) - {source[t]}:
                brute[source[t], g] += 1
        assert np.array_equal(dispatch_matrix(ids, source, table, policy, topo), brute)
        assert np.array_equal(assign_replicas(ids, source, table, policy, topo), dest)  # deterministic


def test_score_table_ranks_a_co_located_layout_above_a_scattered_one():
    ids = np.array([[0, 1], [2, 3]] * 50)
    cost = CostModel(Topology(1, 2), token_bytes=1000)
    together = score_table(ids, np.array([[0, 1], [2, 3]]), cost)
    apart = score_table(ids, np.array([[0, 2], [1, 3]]), cost)
    assert together["gpus_per_token"] == 1.0 and apart["gpus_per_token"] == 2.0
    assert together["a2a_us"] < apart["a2a_us"]
