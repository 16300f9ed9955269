"""DeepSeek EPLB re-implementation: the README's worked example and the algorithm's invariants."""

from __future__ import annotations

import numpy as np
import pytest

from routelens.placement.eplb import balanced_packing, rebalance_experts, replicate_experts

# github.com/deepseek-ai/EPLB README: 2 layers, 12 experts, 16 replicas, 4 groups, 2 nodes, 8 GPUs
README_WEIGHT = np.array([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                          [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]])
README_PHY2LOG = [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                  [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]


def test_reproduces_the_readme_example_exactly():
    phy2log, log2phy, logcnt = rebalance_experts(README_WEIGHT, 16, 4, 2, 8)
    assert phy2log.tolist() == README_PHY2LOG
    assert logcnt.sum(1).tolist() == [16, 16]
    for layer in range(2):  # log2phy lists exactly the physical slots of each expert
        for expert in range(12):
            slots = sorted(p for p in log2phy[layer, expert] if p >= 0)
            assert slots == np.flatnonzero(phy2log[layer] == expert).tolist()
            assert len(slots) == logcnt[layer, expert]


def test_hierarchical_keeps_each_group_on_one_node():
    phy2log, _, _ = rebalance_experts(README_WEIGHT, 16, 4, 2, 8)
    group_of = np.arange(12) // 3
    for layer in range(2):
        node_of_slot = np.arange(16) // 8
        for group in range(4):
            nodes = set(node_of_slot[np.isin(phy2log[layer], np.flatnonzero(group_of == group))].tolist())
            assert len(nodes) == 1


def test_global_policy_balances_load_when_groups_do_not_divide_nodes():
    rng = np.random.default_rng(0)
    weight = rng.integers(1, 1000, size=(3, 32)).astype(float)
    phy2log, _, logcnt = rebalance_experts(weight, 40, 1, 2, 8)  # 1 group on 2 nodes -> global
    for layer in range(3):
        assert set(phy2log[layer].tolist()) == set(range(32))
        per_slot = weight[layer][phy2log[layer]] / logcnt[layer][phy2log[layer]]
        gpu_load = per_slot.reshape(8, 5).sum(1)
        assert gpu_load.max() - gpu_load.min() <= per_slot.max()  # greedy packing's guarantee


def test_balanced_packing_fills_every_pack_exactly():
    weight = np.array([[5.0, 1, 4, 2, 3, 6]])
    pack, rank = balanced_packing(weight, 3)
    assert np.bincount(pack[0], minlength=3).tolist() == [2, 2, 2]
    assert sorted(zip(pack[0].tolist(), rank[0].tolist())) == [(p, r) for p in range(3) for r in range(2)]
    loads = np.bincount(pack[0], weights=weight[0], minlength=3)
    assert loads.tolist() == [7.0, 7.0, 7.0]


def test_replicas_go_to_the_highest_load_per_replica():
    phy2log, rank, logcnt = replicate_experts(np.array([[10.0, 1, 4]]), 6)
    assert logcnt.tolist() == [[3, 1, 2]]  # 10 -> 5 -> 4 (expert 2) -> 3.33
    assert phy2log[0, :3].tolist() == [0, 1, 2]
    with pytest.raises(Exception, match="cannot hold"):
        replicate_experts(np.array([[1.0, 2]]), 1)
