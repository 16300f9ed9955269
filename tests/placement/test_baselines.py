"""Baselines: shapes, slot counts, no GPU holding an expert twice, and what each optimises."""

from __future__ import annotations

import numpy as np
import pytest

from routelens.errors import InputError
from routelens.placement.baselines import (contiguous_plan, contiguous_table, eplb_table, greedy_table, random_table,
                                           separate_duplicates, slots_per_gpu)
from routelens.placement.cost import CostModel, score_table
from routelens.placement.hypergraph import kahypar_table, mtkahypar_available, repair_block_sizes
from routelens.placement.topology import Topology
from routelens.synthetic import synthetic_topk_ids


def _valid(table, num_experts):
    assert all(len(set(row.tolist())) == len(row) for row in table), "a GPU holds an expert twice"
    assert set(table.ravel().tolist()) == set(range(num_experts)), "an expert is placed nowhere"


def test_contiguous_is_the_engines_trivial_layout():
    assert contiguous_table(6, 3).tolist() == [[0, 1], [2, 3], [4, 5]]
    assert contiguous_table(6, 4, redundant=2).tolist() == [[0, 1], [2, 3], [4, 5], [0, 1]]
    plan = contiguous_plan(["a", "b"], 8, 4)
    assert plan.method == "contiguous" and plan.gpu_experts["b"].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_slot_counts_must_divide_evenly():
    assert slots_per_gpu(64, 8, 8) == 9
    with pytest.raises(InputError, match="--redundant 2"):
        slots_per_gpu(6, 4)


@pytest.mark.parametrize("redundant", [0, 8])
def test_every_baseline_places_every_expert_once_per_gpu(redundant):
    rng = np.random.default_rng(0)
    load = rng.integers(1, 500, size=32).astype(float)
    for table in (random_table(32, 8, redundant, seed=3), greedy_table(load, 8, redundant),
                  eplb_table(load, 8, redundant, num_nodes=2, num_groups=4), eplb_table(load, 8, redundant)):
        assert table.shape == (8, (32 + redundant) // 8)
        _valid(table, 32)


def test_greedy_balances_load_better_than_contiguous():
    load = np.array([100.0, 90, 80, 70, 5, 4, 3, 2])
    def spread(table):
        per_gpu = load[table].sum(1)
        return per_gpu.max() - per_gpu.min()
    assert spread(greedy_table(load, 4)) < spread(contiguous_table(8, 4))
    # replicas of the hot experts (load split evenly over them) lower the heaviest GPU
    replicated = greedy_table(load, 4, redundant=4)
    share = load / np.bincount(replicated.ravel(), minlength=8)
    assert share[replicated].sum(1).max() < load[greedy_table(load, 4)].sum(1).max()


def test_duplicates_are_swapped_apart():
    table = np.array([[0, 0], [1, 2], [3, 1]])
    fixed = separate_duplicates(table, np.array([4.0, 2, 1, 1]))
    assert sorted(fixed.ravel().tolist()) == sorted(table.ravel().tolist())
    assert all(len(set(row.tolist())) == 2 for row in fixed)


def test_repair_moves_experts_until_sizes_match():
    coact = np.ones((6, 6))
    block = repair_block_sizes(np.array([0, 0, 0, 0, 1, 2]), np.array([2, 2, 2]), coact)
    assert np.bincount(block, minlength=3).tolist() == [2, 2, 2]


@pytest.mark.skipif(not mtkahypar_available(), reason="mtkahypar not installed")
def test_kahypar_cuts_fan_out_with_exact_slot_counts():
    ids = synthetic_topk_ids(3000, 16, 4, num_groups=4, in_group=0.95, skew=0.0, seed=2)
    table = kahypar_table(ids, 16, 4, seed=0)
    _valid(table, 16)
    assert table.shape == (4, 4)
    cost = CostModel(Topology(1, 4), token_bytes=1000)
    assert score_table(ids, table, cost)["gpus_per_token"] < 0.8 * score_table(ids, contiguous_table(16, 4), cost)["gpus_per_token"]
    loaded = kahypar_table(ids, 16, 4, redundant=4, weights="load")
    assert loaded.shape == (4, 5)
    _valid(loaded, 16)
    assert np.array_equal(kahypar_table(ids, 16, 4, seed=0), table)  # deterministic preset
