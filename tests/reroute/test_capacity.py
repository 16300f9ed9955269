"""Capacity-aware token drop and reroute: known answers and the capacity guarantee."""

from __future__ import annotations

import pytest
import torch

from routelens.capture.adapters import RoutingRule
from routelens.errors import InputError
from routelens.reroute import (
    capacity_drop_choose, capacity_reroute_choose, expert_capacity, expert_load,
)


def test_expert_capacity_is_the_papers_formula():
    assert expert_capacity(num_tokens=1000, top_k=2, num_experts=8, capacity_factor=1.25) == 313  # ceil(312.5)
    assert expert_capacity(num_tokens=64, top_k=8, num_experts=64, capacity_factor=1.0) == 8
    assert expert_capacity(num_tokens=1, top_k=1, num_experts=64, capacity_factor=0.1) == 1
    with pytest.raises(InputError):
        expert_capacity(10, 1, 2, 0.0)


def four_tokens_all_prefer_expert_0():
    # probabilities of experts (0, 1): expert 0 preferred by all, most strongly by token 0
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    return torch.log(probs)


def test_token_drop_keeps_the_highest_scoring_tokens_and_drops_the_rest():
    # capacity = ceil(1.0 * 4 tokens * 1 / 2 experts) = 2
    rule = RoutingRule("softmax", 2, 1, norm_topk_prob=False)
    ids, weights = capacity_drop_choose(four_tokens_all_prefer_expert_0(), rule, 1.0)
    assert ids[:, 0].tolist() == [0, 0, -1, -1]
    assert torch.allclose(weights[:, 0], torch.tensor([0.9, 0.8, 0.0, 0.0]))


def test_token_drop_ranks_by_score_not_by_position():
    probs = torch.tensor([[0.6, 0.4], [0.9, 0.1], [0.7, 0.3], [0.8, 0.2]])
    rule = RoutingRule("softmax", 2, 1, norm_topk_prob=False)
    ids, _ = capacity_drop_choose(torch.log(probs), rule, 1.0)
    assert ids[:, 0].tolist() == [-1, 0, -1, 0]


def test_token_reroute_sends_the_overflow_to_the_best_expert_with_room():
    rule = RoutingRule("softmax", 2, 1, norm_topk_prob=False)
    ids, weights = capacity_reroute_choose(four_tokens_all_prefer_expert_0(), rule, 1.0)
    assert ids[:, 0].tolist() == [0, 0, 1, 1]
    # a moved token is weighted by the model's own score of its new expert
    assert torch.allclose(weights[:, 0], torch.tensor([0.9, 0.8, 0.3, 0.4]))


def test_token_reroute_drops_only_when_no_expert_has_room_and_renormalises():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.5, 0.2, 0.3]])
    rule = RoutingRule("softmax", 3, 2, norm_topk_prob=True)
    # capacity = ceil(1.0 * 3 * 2 / 3) = 2: expert 0 is chosen by all three tokens; token 2 leaves it
    # (equal score, later position), but expert 1 is full and expert 2 is already its own
    ids, weights = capacity_reroute_choose(torch.log(probs), rule, 1.0)
    assert [sorted(row.tolist()) for row in ids] == [[0, 1], [0, 1], [-1, 2]]
    assert torch.allclose(weights.sum(1), torch.ones(3))
    # with one more expert there is room, and token 2 moves to its best free one
    probs4 = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05], [0.5, 0.1, 0.3, 0.1]])
    rule4 = RoutingRule("softmax", 4, 2, norm_topk_prob=True)
    # capacity = ceil(0.75 * 3 * 2 / 4) = 2
    ids4, weights4 = capacity_reroute_choose(torch.log(probs4), rule4, 0.75)
    assert sorted(ids4[2].tolist()) == [2, 3]  # expert 1 is full (tokens 0, 1), 3 ties 1 and has room
    assert torch.allclose(weights4[2].sort().values, torch.tensor([0.25, 0.75]))


def test_token_drop_renormalises_the_remaining_experts():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.7, 0.2, 0.1]])
    rule = RoutingRule("softmax", 3, 2, norm_topk_prob=True)
    ids, weights = capacity_drop_choose(torch.log(probs), rule, 1.0)
    assert ids[0].tolist().count(-1) == 1  # token 0 has the lowest score at expert 0
    kept = ids[0] >= 0
    assert torch.allclose(weights[0][kept], torch.tensor([1.0]))


@pytest.mark.parametrize("policy", [capacity_drop_choose, capacity_reroute_choose])
@pytest.mark.parametrize("factor", [0.5, 1.0, 1.25, 2.0])
@pytest.mark.parametrize("rule", [
    RoutingRule("softmax", 16, 4, True),
    RoutingRule("sigmoid", 16, 4, True, n_group=4, topk_group=2, bias=torch.linspace(-0.2, 0.2, 16)),
    RoutingRule("softmax", 16, 4, False, softmax_after_topk=True),
], ids=["softmax", "sigmoid-groups", "gpt-oss"])
def test_capacity_is_never_exceeded_and_experts_stay_distinct(policy, factor, rule):
    torch.manual_seed(3)
    skew = torch.linspace(0, 3, 16)  # a few experts are much more popular
    logits = torch.randn(777, 16) + skew
    ids, weights = policy(logits, rule, factor)
    capacity = expert_capacity(777, 4, 16, factor)
    assert int(expert_load(ids, 16).max()) <= capacity
    for row in ids.tolist():
        kept = [e for e in row if e >= 0]
        assert len(kept) == len(set(kept))
    assert torch.all(weights[ids < 0] == 0)
    assert torch.all(weights[ids >= 0] > 0)


def test_reroute_drops_nothing_when_capacity_covers_every_slot_and_changes_nothing_without_overflow():
    torch.manual_seed(4)
    logits = torch.randn(500, 16) + torch.linspace(0, 3, 16)
    rule = RoutingRule("softmax", 16, 4, True)
    ids, _ = capacity_reroute_choose(logits, rule, 1.25)
    assert (ids < 0).float().mean() < 0.005
    roomy, weights = capacity_reroute_choose(logits, rule, 100.0)
    ref_ids, ref_weights = rule.choose(logits)
    assert torch.equal(roomy, ref_ids)
    assert torch.allclose(weights, ref_weights)


def test_reroute_flattens_the_load_that_drop_only_cuts():
    torch.manual_seed(5)
    logits = torch.randn(2048, 16) + torch.linspace(0, 3, 16)
    rule = RoutingRule("softmax", 16, 4, True)
    before = expert_load(rule.choose(logits)[0], 16).double()
    after = expert_load(capacity_reroute_choose(logits, rule, 1.25)[0], 16).double()
    assert before.max() / before.mean() > 1.5
    assert after.max() / after.mean() <= 1.25 + 1e-3
    assert after.sum() == before.sum()
