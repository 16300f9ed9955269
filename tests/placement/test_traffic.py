"""The traffic model: token layout, replica policies, dispatch matrix — and its three callers agree.

The replica policies are checked against plain-Python loops written from their definitions; the
cost model, the re-routing metrics and the runner's host-side routes are checked to give identical
destinations, dispatch matrices, fan-out and receive volumes on random plans, with and without
replicas.
"""

from __future__ import annotations

import doctest
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routelens.errors import PlanError
from routelens.placement import traffic
from routelens.placement.baselines import contiguous_table
from routelens.placement.cost import CostModel, layer_traffic, score_table
from routelens.placement.topology import Topology
from routelens.placement.traffic import (POLICIES, assign_replicas, dispatch_matrix, dispatch_matrix_from_dest,
                                         gpus_per_token, gpus_visited, hit_matrix, plan_topology, rank_token_range,
                                         replica_lists, route_tokens, token_source_gpu)
from routelens.plan import REPLICA_POLICIES as PLAN_POLICY_NAMES
from routelens.plan import Plan
from routelens.reroute import metrics as reroute_metrics
from routelens.runner.routing import plan_routes, tiled_token_index
from routelens.synthetic import synthetic_trace_arrays
from routelens.trace import write_trace


# ---------------------------------------------------------------------------- references written from the definitions
def reference_assign(ids, source, table, policy, node_of_gpu, block):
    """assign_replicas by plain loops over tokens, one (block, slot) step at a time."""
    num_gpus = len(table)
    replicas = {}
    for g, row in enumerate(table):
        for e in row:
            replicas.setdefault(int(e), []).append(g)
    dest = [[replicas[int(e)][0] if e >= 0 else -1 for e in row] for row in ids]
    flexible = [[e >= 0 and len(replicas[int(e)]) > 1 for e in row] for row in ids]
    if policy == "round-robin":
        uses = {}
        for t, row in enumerate(ids):
            for j, e in enumerate(row):
                if flexible[t][j]:
                    r = uses.get(int(e), 0)
                    dest[t][j] = replicas[int(e)][r % len(replicas[int(e)])]
                    uses[int(e)] = r + 1
    elif policy == "nearest-then-least-loaded":
        load = [0] * num_gpus
        sent = [set() for _ in ids]
        for t, row in enumerate(ids):
            for j, e in enumerate(row):
                if e >= 0 and not flexible[t][j]:
                    load[dest[t][j]] += 1
                    sent[t].add(dest[t][j])
        k = len(ids[0]) if len(ids) else 0
        for first in range(0, len(ids), block):
            for j in range(k):
                seen = list(load)  # loads are refreshed once per (block, slot)
                for t in range(first, min(first + block, len(ids))):
                    if not flexible[t][j]:
                        continue
                    src = int(source[t])

                    def rank(g):
                        tier = 0 if g == src else 1 if g in sent[t] else 2 if node_of_gpu[g] == node_of_gpu[src] else 3
                        return tier, seen[g], g

                    g = min(replicas[int(ids[t][j])], key=rank)
                    dest[t][j] = g
                    sent[t].add(g)
                    load[g] += 1
    return np.array(dest, dtype=np.int64).reshape(np.shape(ids))


def brute_force_hits(source, dest, num_gpus):
    hits = np.zeros((num_gpus, num_gpus), dtype=np.int64)
    for src, row in zip(source, dest):
        for g in {int(d) for d in row if d >= 0}:
            hits[src, g] += 1
    return hits


def random_table(rng, num_experts, num_gpus, slots):
    """``[G, S]``: every expert once, the ``G·S - E`` extra slots as replicas, labels and GPUs shuffled."""
    table = contiguous_table(num_experts, num_gpus, num_gpus * slots - num_experts)
    return rng.permutation(num_experts)[table][rng.permutation(num_gpus)]


def random_choice(rng, num_tokens, num_experts, top_k, drop):
    ids = np.argsort(rng.random((num_tokens, num_experts)), axis=1)[:, :top_k]
    ids[rng.random(ids.shape) < drop] = -1
    return ids


# ---------------------------------------------------------------------------- hand-made cases
def test_docstring_examples_run():
    assert doctest.testmod(traffic).failed == 0


def test_tokens_start_in_contiguous_blocks_and_ranks_hold_them():
    source = token_source_gpu(10, 4)
    assert source.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    for T, G in [(10, 3), (4096, 4), (7, 7), (1000, 8)]:
        source = token_source_gpu(T, G)
        ranges = [rank_token_range(T, G, r) for r in range(G)]
        assert ranges[0][0] == 0 and ranges[-1][1] == T
        for r, (start, end) in enumerate(ranges):
            assert np.flatnonzero(source == r).tolist() == list(range(start, end))


def test_a_token_is_sent_once_per_distinct_remote_gpu():
    table = np.array([[0, 1], [2, 3]])  # GPU 0: experts 0, 1; GPU 1: experts 2, 3
    ids = np.array([[0, 2], [0, 1], [2, 3], [1, 3]])
    source = np.array([0, 1, 1, 0])
    # token 0 (GPU 0) -> GPU 1 once; token 1 (GPU 1) -> GPU 0 once (two experts there);
    # token 2 stays home; token 3 (GPU 0) -> GPU 1 once
    assert dispatch_matrix(ids, source, table).tolist() == [[0, 2], [1, 0]]
    dest = assign_replicas(ids, source, table)
    # the diagonal: tokens 0, 3 and 2 are (also) served at home
    assert hit_matrix(source, dest, 2).tolist() == [[2, 2], [1, 1]]
    assert gpus_per_token(dest) == pytest.approx((2 + 1 + 1 + 2) / 4)
    assert gpus_visited(dest, 2).tolist() == [[True, True], [True, False], [False, True], [True, True]]


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
    assert gpus_per_token(np.array([[-1, -1]])) == 0.0
    with pytest.raises(PlanError, match="expert 2"):
        assign_replicas(np.array([[0, 2]]), np.array([0]), table)
    with pytest.raises(PlanError, match="replica policy 'closest'"):
        assign_replicas(np.array([[0, 1]]), np.array([0]), table, "closest")
    with pytest.raises(PlanError, match="topology"):
        assign_replicas(np.array([[0, 1]]), np.array([0]), np.array([[0, 1], [1, 0]]), topology=Topology(1, 4))


def test_the_policy_registry_is_the_plan_formats_vocabulary():
    assert POLICIES == PLAN_POLICY_NAMES
    assert all(traffic.replica_policy(name).name == name for name in POLICIES)


def test_replica_lists_hold_each_experts_gpus_ascending_padded_with_g():
    table = np.array([[0, 3], [1, 0], [2, 0]])
    assert replica_lists(traffic.expert_holders(table)).tolist() == [[0, 1, 2], [1, 3, 3], [2, 3, 3], [0, 3, 3]]


def test_plan_topology_is_the_stored_one_else_the_plans_nodes():
    table = np.arange(8).reshape(4, 2)
    assert plan_topology(Plan({"a": table}, 8, num_nodes=2)) == Topology(num_nodes=2, gpus_per_node=2)
    stored = Topology(num_nodes=4, gpus_per_node=1, intra_gbps=7.0)
    assert plan_topology(Plan({"a": table}, 8, num_nodes=4, meta={"topology": stored.to_json()})) == stored


# ---------------------------------------------------------------------------- property tests against the references
@settings(max_examples=60, deadline=None)
@given(num_gpus=st.sampled_from([1, 2, 3, 4, 6]), extra_slots=st.integers(0, 3), num_experts=st.integers(2, 9),
       top_k=st.integers(1, 4), tokens=st.integers(0, 40), block=st.sampled_from([1, 3, 7, 256]),
       chunk_blocks=st.sampled_from([1, 2, 64]), nodes=st.sampled_from([1, 2, 3]), policy=st.sampled_from(POLICIES),
       seed=st.integers(0, 2**31 - 1))
def test_replica_policies_match_their_definitions(num_gpus, extra_slots, num_experts, top_k, tokens, block,
                                                    chunk_blocks, nodes, policy, seed):
    rng = np.random.default_rng(seed)
    slots = min(-(-num_experts // num_gpus) + extra_slots, num_experts)
    nodes = nodes if num_gpus % nodes == 0 else 1
    table = random_table(rng, num_experts, num_gpus, slots)
    ids = random_choice(rng, tokens, num_experts, min(top_k, num_experts), drop=0.1)
    source = token_source_gpu(tokens, num_gpus)
    topo = Topology(num_nodes=nodes, gpus_per_node=num_gpus // nodes)
    # small blocks refresh the loads often; small chunks prepare few blocks at once (must not change the result)
    with mock.patch.object(traffic, "REPLICA_BLOCK_TOKENS", block), \
            mock.patch.object(traffic, "NEAREST_CHUNK_BLOCKS", chunk_blocks):
        dest = assign_replicas(ids, source, table, policy, topo)
    assert np.array_equal(dest, reference_assign(ids, source, table, policy, topo.node_of_gpu(), block))
    kept = ids >= 0
    assert np.all((dest >= 0) == kept)
    assert all(ids[t, j] in table[dest[t, j]] for t, j in zip(*np.nonzero(kept)))
    hits = brute_force_hits(source, dest, num_gpus)
    assert np.array_equal(hit_matrix(source, dest, num_gpus), hits)
    assert np.array_equal(dispatch_matrix_from_dest(source, dest, num_gpus), hits - np.diag(np.diag(hits)))
    assert gpus_per_token(dest) == pytest.approx(hits.sum() / tokens if tokens else 0.0)


# ---------------------------------------------------------------------------- the three callers agree
@pytest.fixture(scope="module")
def small_trace(tmp_path_factory):
    """2 layers, 16 experts, top-4, 700 tokens; layer 1 has 5% of its slots dropped (-1), as a re-routed trace."""
    a = synthetic_trace_arrays(num_tokens=700, num_layers=2, num_experts=16, top_k=4, seed=11)
    dropped = np.random.default_rng(0).random(a["topk_ids"][1].shape) < 0.05
    a["topk_ids"][1] = np.where(dropped, -1, a["topk_ids"][1])
    a["topk_weights"][1] = np.where(dropped, 0.0, a["topk_weights"][1]).astype(np.float32)
    return write_trace(tmp_path_factory.mktemp("traffic") / "run", a["header"], a["token_ids"], a["seq_ids"],
                       a["positions"], a["topk_ids"], a["topk_weights"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(num_gpus=st.sampled_from([1, 2, 4, 8]), extra_slots=st.integers(0, 2), nodes=st.sampled_from([1, 2]),
       stored_topology=st.booleans(), policy=st.sampled_from(POLICIES), tokens=st.integers(1, 1500),
       seed=st.integers(0, 2**31 - 1))
def test_cost_model_reroute_metrics_and_runner_routes_agree(small_trace, num_gpus, extra_slots, nodes, stored_topology,
                                                            policy, tokens, seed):
    rng = np.random.default_rng(seed)
    num_experts = small_trace.num_experts
    slots = min(num_experts // num_gpus + extra_slots, num_experts)
    nodes = nodes if num_gpus % nodes == 0 else 1
    topo = Topology(num_nodes=nodes, gpus_per_node=num_gpus // nodes)
    tables = {layer: random_table(rng, num_experts, num_gpus, slots) for layer in small_trace.layers}
    plan = Plan(tables, num_experts, num_nodes=nodes, replica_policy=policy,
                meta={"topology": topo.to_json()} if stored_topology else {})
    index = tiled_token_index(small_trace.num_tokens, tokens)
    routes = plan_routes(small_trace, plan, small_trace.layers, index)
    cost = CostModel(plan_topology(plan))
    for route, layer in zip(routes, small_trace.layers):
        ids, table = route.topk_ids, plan.gpu_experts[layer]
        # the cost model: the same destinations and dispatch matrix as the runner's routes
        source, dest = route_tokens(ids, table, policy, plan_topology(plan))
        assert np.array_equal(dest, route.dest_gpu)
        flow = layer_traffic(source, dest, cost.topology, num_gpus)
        assert np.array_equal(flow.matrix, route.predicted)
        scored = score_table(ids, table, cost, policy)
        # the re-routing metrics of the same batch: the same fan-out and receive volumes
        stats = reroute_metrics.routing_stats(ids, num_experts, table, policy, plan_topology(plan))
        assert stats["gpus_per_token"] == scored["gpus_per_token"] == flow.gpus_per_token
        assert stats["busiest_gpu_recv"] == pytest.approx(scored["busiest_gpu_recv"], rel=1e-12)
        assert reroute_metrics.gpu_recv(ids, table, policy, plan_topology(plan)).tolist() == flow.recv.sum(1).tolist()
        visited = reroute_metrics.gpus_visited(ids, table, policy, plan_topology(plan)).numpy()
        assert np.array_equal(visited, gpus_visited(dest, num_gpus))
        assert visited.sum() == pytest.approx(scored["gpus_per_token"] * tokens)
