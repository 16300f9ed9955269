"""Host-side routing: token layout, destinations, predicted dispatch matrix (pure numpy).

That the runner's routes equal the cost model's and the re-routing metrics' on random plans with
replicas is tests/placement/test_traffic.py; here: plain-loop counts and the runner's own helpers.
"""

from __future__ import annotations

import numpy as np
import pytest

from routelens.errors import InputError, PlanError
from routelens.placement.traffic import dispatch_matrix_from_dest
from routelens.plan import Plan
from routelens.runner.routing import contiguous_plan, plan_routes, rank_token_range, tiled_token_index, token_source_gpu


def brute_force_dispatch(topk_ids, owner, num_gpus):
    """Copies per (source, destination) GPU, one per token and distinct other GPU, by a plain loop."""
    T = len(topk_ids)
    matrix = np.zeros((num_gpus, num_gpus), dtype=np.int64)
    for t, row in enumerate(topk_ids):
        src = t * num_gpus // T
        for dst in {int(owner[e]) for e in row} - {src}:
            matrix[src, dst] += 1
    return matrix


@pytest.mark.parametrize("T,G", [(10, 3), (4096, 4), (7, 7), (1000, 8)])
def test_rank_ranges_tile_tokens_and_match_source_gpu(T, G):
    source = token_source_gpu(T, G)
    ranges = [rank_token_range(T, G, r) for r in range(G)]
    assert ranges[0][0] == 0 and ranges[-1][1] == T
    for r, (start, end) in enumerate(ranges):
        assert np.all(source[start:end] == r)
        if r:
            assert start == ranges[r - 1][1]
    sizes = [end - start for start, end in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_dispatch_matrix_counts_one_copy_per_distinct_other_gpu():
    rng = np.random.default_rng(0)
    topk = np.stack([rng.choice(16, 4, replace=False) for _ in range(500)])
    owner = rng.permutation(np.repeat(np.arange(4), 4))
    dest = owner[topk]
    got = dispatch_matrix_from_dest(token_source_gpu(500, 4), dest, 4)
    assert np.array_equal(got, brute_force_dispatch(topk, owner, 4))
    assert np.all(np.diag(got) == 0)
    # a token whose 4 experts all sit on 2 other GPUs is sent exactly twice
    one = dispatch_matrix_from_dest(np.array([0]), np.array([[1, 1, 2, 2]]), 4)
    assert one.sum() == 2


def test_contiguous_plan_puts_expert_blocks_in_order():
    plan = contiguous_plan(["a", "b"], 16, 4)
    assert plan.gpu_experts["a"].tolist()[1] == [4, 5, 6, 7]
    assert np.array_equal(plan.expert_to_gpu("b"), np.repeat(np.arange(4), 4))
    assert plan.method == "contiguous" and plan.replica_policy == "first"
    with pytest.raises(PlanError, match="evenly"):
        contiguous_plan(["a"], 10, 4)


def test_tiled_index_repeats_trace_tokens():
    assert tiled_token_index(5, 12).tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    with pytest.raises(InputError):
        tiled_token_index(0, 4)


def test_plan_routes_predict_brute_force_counts(synthetic_trace):
    rng = np.random.default_rng(3)
    table = rng.permutation(16).reshape(4, 4)
    plan = Plan({layer: table for layer in synthetic_trace.layers}, 16)
    index = tiled_token_index(synthetic_trace.num_tokens, 6000)
    routes = plan_routes(synthetic_trace, plan, synthetic_trace.layers[:2], index)
    owner = plan.expert_to_gpu(synthetic_trace.layers[0])
    for route, layer in zip(routes, synthetic_trace.layers[:2]):
        ids = synthetic_trace.topk_ids(layer).astype(np.int64)[index]
        assert np.array_equal(route.topk_ids, ids)
        assert np.array_equal(route.dest_gpu, owner[ids])
        assert np.array_equal(route.predicted, brute_force_dispatch(ids, owner, 4))


def test_dropped_slots_are_not_sent():
    dest = np.array([[-1, -1], [1, -1], [0, 1]])
    matrix = dispatch_matrix_from_dest(np.array([0, 0, 1]), dest, 2)
    assert matrix.tolist() == [[0, 1], [1, 0]]
