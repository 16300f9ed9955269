"""Replicas placed by the cost model: the estimate follows its definition, the result is valid, beats EPLB's."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routelens.errors import PlanError
from routelens.graphs import load_counts
from routelens.placement.baselines import eplb_table
from routelens.placement.cost import CostModel, score_table
from routelens.placement.optimizer import _Problem, default_batches, optimize_layer
from routelens.placement.replica_search import add_replicas, complete_table, replica_effects
from routelens.placement.topology import Topology
from routelens.placement.traffic import assign_replicas, expert_holders, token_source_gpu
from routelens.synthetic import synthetic_topk_ids


def _valid(table, base, num_experts):
    assert (table >= 0).all(), "a slot stayed free"
    assert all(len(set(row.tolist())) == len(row) for row in table), "a GPU holds an expert twice"
    assert set(table.ravel().tolist()) == set(range(num_experts))
    assert np.array_equal(table[:, : base.shape[1]], base), "an expert already placed moved"


def test_the_worked_example_puts_the_replica_where_its_tokens_start():
    # tokens starting on GPU 1 use experts {0, 2}: each is sent to GPU 0 for expert 0 alone
    ids = np.array([[0, 1]] * 8 + [[0, 2]] * 8)
    partial = np.array([[0, 1, -1], [2, 3, -1]])
    table = add_replicas(partial, ids, CostModel(Topology(1, 2), token_bytes=1e6), num_experts=4)
    _valid(table, partial[:, :2], 4)
    assert 0 in table[1].tolist()
    source = token_source_gpu(len(ids), 2)
    dest = assign_replicas(ids, source, table)
    assert (dest == source[:, None]).all()  # every token is now served at home: no copy at all


def _loop_effects(ids, source, dest, num_experts, link):
    """``replica_effects`` from its docstring, one slot at a time."""
    num_gpus = link.shape[0]
    saved = np.zeros((num_experts, num_gpus, num_gpus))
    moved = np.zeros((num_experts, num_gpus, num_gpus))
    for t in range(ids.shape[0]):
        near = {int(d) for d in dest[t] if d >= 0} | {int(source[t])}
        for j in range(ids.shape[1]):
            e, h = int(ids[t, j]), int(dest[t, j])
            if e < 0 or h == source[t]:
                continue
            alone = sum(1 for jj in range(ids.shape[1]) if ids[t, jj] >= 0 and dest[t, jj] == h) == 1
            if alone:
                for g in near:
                    saved[e, h, g] += link[source[t], h]
                    moved[e, h, g] += 1
            else:
                moved[e, h, source[t]] += 1
    return saved, moved


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), num_gpus=st.sampled_from([2, 3, 4]), redundant=st.sampled_from([0, 1]))
def test_replica_effects_follow_their_definition(seed, num_gpus, redundant):
    rng = np.random.default_rng(seed)
    num_experts, top_k = 3 * num_gpus - redundant * num_gpus, 3
    ids = np.array([rng.choice(num_experts, size=top_k, replace=False) for _ in range(40)])
    ids[rng.random(ids.shape) < 0.1] = -1  # dropped slots
    table = rng.permutation(np.r_[np.arange(num_experts), rng.choice(num_experts, redundant * num_gpus, replace=False)])
    table = table.reshape(num_gpus, -1)
    if any(len(set(row)) < len(row) for row in table.tolist()):
        return  # a duplicate on one GPU is no placement
    source = token_source_gpu(len(ids), num_gpus)
    dest = assign_replicas(ids, source, table)
    link = rng.random((num_gpus, num_gpus))
    np.fill_diagonal(link, 0)
    saved, moved = replica_effects(ids, source, dest, num_experts, link)
    want_saved, want_moved = _loop_effects(ids, source, dest, num_experts, link)
    assert np.allclose(saved, want_saved) and np.allclose(moved, want_moved)


@pytest.mark.parametrize("num_gpus,redundant", [(4, 4), (4, 8), (8, 8)])
def test_replicas_fill_every_free_slot_and_leave_the_placed_experts_alone(num_gpus, redundant):
    ids = synthetic_topk_ids(3000, 32, 4, num_groups=8, in_group=0.8, skew=0.8, seed=num_gpus).astype(np.int64)
    base = np.arange(32).reshape(num_gpus, -1)
    partial = np.c_[base, np.full((num_gpus, redundant // num_gpus), -1)]
    table = add_replicas(partial, ids, CostModel(Topology(1, num_gpus), token_bytes=8192, expert_flops_per_token=1e8))
    _valid(table, base, 32)


def test_complete_table_keeps_the_holders_and_refuses_an_empty_gpu():
    partial = np.array([[3, -1, 1], [0, 2, -1]])
    assert np.array_equal(expert_holders(complete_table(partial), 4), expert_holders(np.array([[3, 1], [0, 2]]), 4))
    with pytest.raises(PlanError, match="holds no expert"):
        complete_table(np.array([[0, 1], [-1, -1]]))


@pytest.mark.parametrize("nodes,gpus_per_node,redundant", [(1, 8, 8), (2, 4, 8), (1, 4, 4)])
def test_optimizer_replicas_are_valid_and_never_worse_than_eplbs_on_the_fit_tokens(nodes, gpus_per_node, redundant):
    num_gpus = nodes * gpus_per_node
    ids = synthetic_topk_ids(4000, 32, 4, num_groups=8, in_group=0.8, skew=1.0, seed=redundant).astype(np.int64)
    cost = CostModel(Topology(nodes, gpus_per_node), token_bytes=8192, expert_flops_per_token=1e8)
    result = optimize_layer(ids, 32, num_gpus, cost, redundant=redundant, seeds=("coact",), kicks=2)
    slots = (32 + redundant) // num_gpus
    assert result.table.shape == (num_gpus, slots)
    assert all(len(set(row.tolist())) == slots for row in result.table)
    assert set(result.table.ravel().tolist()) == set(range(32))
    assert result.info()["replicas"] in ("cost model", "eplb")
    eplb = eplb_table(load_counts(ids, 32), num_gpus, redundant, nodes)
    # the floor holds for the estimate the optimizer minimises: the mean over the fit tokens' batches
    problem = _Problem(ids, 32, num_gpus, redundant, cost, "nearest-then-least-loaded", result.batches)
    assert result.batches == default_batches(32)
    assert problem.layer_seconds(problem.state(result.table)) <= problem.layer_seconds(problem.state(eplb))


def test_replicas_next_to_collaborators_cut_the_busiest_receive_below_eplbs():
    # planted co-activation groups: a replica where its group's tokens already go saves whole copies
    ids = synthetic_topk_ids(6000, 32, 4, num_groups=8, in_group=0.85, skew=1.0, seed=3).astype(np.int64)
    fit, held = ids[:3000], ids[3000:]
    cost = CostModel(Topology(1, 8), token_bytes=8192, expert_flops_per_token=1e8)
    result = optimize_layer(fit, 32, 8, cost, redundant=8, seeds=("coact",), kicks=2)
    eplb = eplb_table(load_counts(fit, 32), 8, 8)
    assert result.info()["replicas"] == "cost model"
    for tokens in (fit, held):
        assert score_table(tokens, result.table, cost)["busiest_gpu_recv"] < 0.9 * score_table(tokens, eplb, cost)["busiest_gpu_recv"]


def test_past_its_deadline_the_search_still_fills_every_slot_with_the_estimates_best(monkeypatch):
    import routelens.placement.replica_search as replica_search

    ids = synthetic_topk_ids(2000, 32, 4, num_groups=8, in_group=0.8, skew=0.8, seed=3).astype(np.int64)
    base = np.arange(32).reshape(4, -1)
    partial = np.c_[base, np.full((4, 2), -1)]
    cost = CostModel(Topology(1, 4), token_bytes=8192, expert_flops_per_token=1e8)
    scored = []
    original = replica_search.assign_replicas
    monkeypatch.setattr(replica_search, "assign_replicas", lambda *a, **k: scored.append(1) or original(*a, **k))
    table = add_replicas(partial, ids, cost, deadline=0.0)  # perf_counter() is past 0 from the start
    _valid(table, base, 32)
    assert len(scored) == 1 + 8  # the start, then one exact score per free slot (not up to 6)
