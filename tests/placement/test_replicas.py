"""Filling free slots with expert copies: always a valid table, whatever the methods leave behind."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routelens.errors import PlanError
from routelens.placement.cost import CostModel
from routelens.placement.eplb import replicate_experts
from routelens.placement.hypergraph import mtkahypar_available
from routelens.placement.place import METHODS, PlaceSettings, layer_table
from routelens.placement.replicas import fill_slots
from routelens.placement.topology import Topology
from routelens.synthetic import synthetic_topk_ids


def _assert_valid(table, num_experts, num_gpus):
    assert (table >= 0).all(), "a slot stayed free"
    assert all(len(set(row.tolist())) == len(row) for row in table), "a GPU holds an expert twice"
    counts = np.bincount(table.ravel(), minlength=num_experts)
    assert counts.min() >= 1 and counts.max() <= num_gpus


@st.composite
def partial_tables(draw):
    """A table filled at random (no expert twice on a GPU) with the copies that did not fit, ``-1`` left free.

    Copies are dealt in a random order to random GPUs with room that lack them, and a random share is
    held back, so the free slots often sit on GPUs that already hold the held-back experts (the case
    that used to crash).
    """
    num_gpus = draw(st.integers(1, 8))
    slots = draw(st.integers(1, 8))
    num_experts = draw(st.integers(slots, num_gpus * slots))
    counts = np.ones(num_experts, dtype=np.int64)
    for _ in range(num_gpus * slots - num_experts):  # extra copies, at most G per expert
        counts[draw(st.sampled_from(np.flatnonzero(counts < num_gpus).tolist()))] += 1
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    keep = draw(st.floats(0, 1))
    table = np.full((num_gpus, slots), -1, dtype=np.int64)
    copies = []
    for e in rng.permutation(np.repeat(np.arange(num_experts), counts)):
        room = [g for g in range(num_gpus) if (table[g] < 0).any() and e not in table[g]]
        if room and rng.random() < keep:
            g = rng.choice(room)
            table[g, np.flatnonzero(table[g] < 0)[0]] = e
        else:
            copies.append(int(e))
    weight = rng.exponential(size=num_experts) * draw(st.sampled_from([0.0, 1.0]))
    return table, np.asarray(copies, dtype=np.int64), weight


@settings(max_examples=300, deadline=None)
@given(partial_tables())
def test_fill_slots_always_finds_a_valid_slot(case):
    table, copies, weight = case
    filled = fill_slots(table, copies, weight)
    _assert_valid(filled, weight.size, table.shape[0])
    expected = np.bincount(np.r_[table[table >= 0], copies], minlength=weight.size)
    assert np.array_equal(np.bincount(filled.ravel(), minlength=weight.size), expected)


def test_a_copy_with_no_valid_gpu_makes_room_by_one_move():
    # GPU 2 has the only free slot and already holds expert 0: expert 1 moves there, 0 takes its slot
    table = np.array([[1, 2], [3, 4], [0, -1]])
    assert fill_slots(table, np.array([0]), np.ones(5)).tolist() == [[0, 2], [3, 4], [0, 1]]
    # the move that leaves the busier of the two GPUs lightest: from the light GPU 1, not the heavy GPU 0
    weight = np.array([1.0, 1, 1, 5, 0.5])
    table = np.array([[3, 4], [1, 2], [0, -1]])
    assert fill_slots(table, np.array([0]), weight).tolist() == [[3, 4], [0, 2], [0, 1]]


def test_copies_go_to_the_least_loaded_gpu_that_lacks_them():
    table = np.array([[0, -1], [1, -1], [2, -1]])
    weight = np.array([5.0, 1, 3])
    assert fill_slots(table, np.array([1, 0, 2]), weight).tolist() == [[0, 2], [1, 0], [2, 1]]


def test_impossible_fills_are_refused():
    with pytest.raises(PlanError, match="3 copies but there are only 2 GPUs"):
        fill_slots(np.array([[0, -1], [0, -1]]), np.array([0, 1]), np.ones(2))
    with pytest.raises(PlanError, match="1 expert copies for 2 free slots"):
        fill_slots(np.array([[0, -1], [1, -1]]), np.array([0]), np.ones(2))


def test_eplb_replicas_can_be_capped_at_the_gpu_count():
    _, _, uncapped = replicate_experts(np.array([[100.0, 1, 1]]), 9)
    assert uncapped.max() > 3  # EPLB itself would need two replicas of expert 0 on one of 3 GPUs
    _, _, capped = replicate_experts(np.array([[100.0, 1, 1]]), 9, max_replicas=3)
    assert capped.tolist() == [[3, 3, 3]]


@settings(max_examples=40, deadline=None)
@given(num_gpus=st.sampled_from([2, 3, 4, 8]), num_experts=st.integers(2, 24), extra=st.integers(0, 40),
       skew=st.sampled_from([0.0, 1.0, 4.0]), seed=st.integers(0, 10**6))
def test_every_method_makes_a_valid_replica_table(num_gpus, num_experts, extra, skew, seed):
    """Regression: with replicas, routelens (its coact and Mt-KaHyPar seeds), kahypar, kahypar-load and eplb
    used to crash (IndexError) or put an expert twice on a GPU."""
    slots = min(num_experts, -(-num_experts // num_gpus) + extra // num_gpus)
    ids = synthetic_topk_ids(300, num_experts, min(2, num_experts), num_groups=2, skew=skew, seed=seed).astype(np.int64)
    cost = CostModel(Topology(num_nodes=1, gpus_per_node=num_gpus), token_bytes=1000, expert_flops_per_token=1e6)
    for method in METHODS:
        if method.startswith("kahypar") and not mtkahypar_available():
            continue
        settings_ = PlaceSettings(method=method, redundant=num_gpus * slots - num_experts, kicks=1, seed=seed)
        table, _ = layer_table(method, ids, num_experts, cost, settings_)
        assert table.shape == (num_gpus, slots), method
        _assert_valid(table, num_experts, num_gpus)
