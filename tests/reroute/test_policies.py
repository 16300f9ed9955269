"""Re-routing policies on hand-made logits with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from routelens.capture.adapters import RoutingRule
from routelens.errors import InputError
from routelens.plan import Plan
from routelens.reroute import (
    c2r_choose, c2r_policy, collaborators, gpu_limited_choose, gpus_per_token, gpus_visited, load_max_over_mean,
    none_policy, routing_stats,
)


def logits_from_probs(probs) -> torch.Tensor:
    """Logits whose softmax is ``probs`` (rows sum to 1)."""
    return torch.log(torch.tensor(probs, dtype=torch.float32))


def as_sets(ids: torch.Tensor) -> list[set[int]]:
    return [set(int(i) for i in row if i >= 0) for row in ids]


# ---------------------------------------------------------------------------- C2R
def test_collaborators_rank_by_coactivation_exclude_self_and_break_ties_by_id():
    counts = np.array([
        [9, 5, 1, 5],
        [5, 9, 2, 0],
        [1, 2, 9, 7],
        [5, 0, 7, 9],
    ])
    table = collaborators(counts, 2)
    assert table.tolist() == [[1, 3], [0, 2], [3, 1], [2, 0]]


def test_collaborators_reject_group_size_out_of_range():
    with pytest.raises(InputError, match="group size"):
        collaborators(np.ones((4, 4)), 4)


def test_c2r_keeps_top1_and_takes_the_rest_from_its_collaborators_only():
    # expert 0 is the top-1; expert 5 scores second overall but is not a collaborator of 0
    probs = [[0.40, 0.10, 0.08, 0.02, 0.05, 0.30, 0.05]]
    rule = RoutingRule("softmax", num_experts=7, top_k=3, norm_topk_prob=True)
    table = torch.tensor([[1, 2], [0, 2], [0, 1], [4, 5], [3, 5], [3, 4], [0, 1]])
    ids, weights = c2r_choose(logits_from_probs(probs), rule, table)
    assert ids[0].tolist() == [0, 1, 2]
    expected = torch.tensor([0.40, 0.10, 0.08]) / 0.58
    assert torch.allclose(weights[0], expected, atol=1e-6)


def test_c2r_without_renormalisation_keeps_the_model_probabilities_and_scaling():
    probs = [[0.40, 0.10, 0.08, 0.02, 0.05, 0.30, 0.05]]
    rule = RoutingRule("softmax", num_experts=7, top_k=2, norm_topk_prob=False, routed_scaling_factor=2.0)
    table = torch.tensor([[2], [0], [0], [4], [3], [3], [0]])
    ids, weights = c2r_choose(logits_from_probs(probs), rule, table)
    assert ids[0].tolist() == [0, 2]
    assert torch.allclose(weights[0], torch.tensor([0.80, 0.16]), atol=1e-6)


def test_c2r_with_all_collaborators_equals_the_unconstrained_choice():
    torch.manual_seed(0)
    logits = torch.randn(256, 8)
    rule = RoutingRule("softmax", 8, 3, True)
    table = collaborators(np.random.default_rng(0).random((8, 8)), 7)
    ids, weights = c2r_choose(logits, rule, table)
    ref_ids, ref_weights = rule.choose(logits)
    assert as_sets(ids) == as_sets(ref_ids)
    assert torch.allclose(weights.sort(1).values, ref_weights.sort(1).values, atol=1e-6)


def test_c2r_selects_with_the_bias_but_weights_without_it():
    # sigmoid scores with a bias that promotes expert 3 to top-1 (DeepSeek-V3 style)
    logits = torch.tensor([[2.0, 1.0, 0.0, 1.5]])
    bias = torch.tensor([0.0, 0.0, 0.0, 0.2])
    rule = RoutingRule("sigmoid", 4, 2, norm_topk_prob=False, bias=bias)
    table = torch.tensor([[1], [2], [3], [1]])
    ids, weights = c2r_choose(logits, rule, table)
    assert ids[0].tolist() == [3, 1]
    assert torch.allclose(weights[0], torch.sigmoid(torch.tensor([1.5, 1.0])))


def test_c2r_policy_needs_group_size_of_at_least_k_minus_1():
    policy = c2r_policy({"layer": np.ones((8, 8))}, 1)
    with pytest.raises(InputError, match="K-1"):
        policy.choose("layer", torch.randn(4, 8), RoutingRule("softmax", 8, 3, True))


# ---------------------------------------------------------------------------- GPU-limited
def two_gpu_table():
    return np.array([[0, 1, 2, 3], [4, 5, 6, 7]])


def test_gpu_limited_max_picks_the_gpu_of_the_best_expert():
    probs = [[0.30, 0.05, 0.02, 0.01, 0.25, 0.24, 0.10, 0.03]]
    rule = RoutingRule("softmax", 8, 3, True)
    ids, weights = gpu_limited_choose(logits_from_probs(probs), rule, two_gpu_table(), max_gpus=1, gpu_score="max")
    assert as_sets(ids) == [{0, 1, 2}]
    assert math.isclose(float(weights.sum()), 1.0, rel_tol=1e-6)


def test_gpu_limited_mass_picks_the_gpu_holding_most_of_the_top_k_weight():
    probs = [[0.30, 0.05, 0.02, 0.01, 0.25, 0.24, 0.10, 0.03]]  # top-3 = {0, 4, 5}: GPU 1 holds 0.49
    rule = RoutingRule("softmax", 8, 3, True)
    ids, _ = gpu_limited_choose(logits_from_probs(probs), rule, two_gpu_table(), max_gpus=1, gpu_score="mass")
    assert as_sets(ids) == [{4, 5, 6}]


@pytest.mark.parametrize("gpu_score", ["max", "mass"])
def test_gpu_limited_keeps_the_model_choice_when_it_already_fits(gpu_score):
    torch.manual_seed(1)
    logits = torch.randn(512, 16)
    rule = RoutingRule("softmax", 16, 4, True)
    table = np.arange(16).reshape(4, 4)
    ids, _ = gpu_limited_choose(logits, rule, table, max_gpus=4, gpu_score=gpu_score)
    assert as_sets(ids) == as_sets(rule.choose(logits)[0])
    limited, _ = gpu_limited_choose(logits, rule, table, max_gpus=2, gpu_score=gpu_score)
    visits = gpus_visited(limited, table).sum(1)
    assert int(visits.max()) <= 2
    fits = gpus_visited(rule.choose(logits)[0], table).sum(1) <= 2
    assert as_sets(limited[fits]) == as_sets(rule.choose(logits)[0][fits])


def test_gpu_limited_works_with_replicas():
    probs = [[0.30, 0.05, 0.02, 0.01, 0.25, 0.24, 0.10, 0.03]]
    rule = RoutingRule("softmax", 8, 3, True)
    table = np.array([[0, 1, 2, 4, 5], [4, 5, 6, 7, 3]])  # experts 4 and 5 replicated on GPU 0
    ids, _ = gpu_limited_choose(logits_from_probs(probs), rule, table, max_gpus=1)
    assert as_sets(ids) == [{0, 4, 5}]
    assert gpus_per_token(ids, table) == 1.0


def test_gpu_limited_rejects_a_limit_that_cannot_hold_k_experts():
    with pytest.raises(InputError, match="cannot hold"):
        gpu_limited_choose(torch.randn(2, 8), RoutingRule("softmax", 8, 6, True), two_gpu_table(), max_gpus=1)


# ---------------------------------------------------------------------------- identity and metrics
@pytest.mark.parametrize("rule", [
    RoutingRule("softmax", 8, 2, True),
    RoutingRule("softmax", 8, 2, False, routed_scaling_factor=1.5, n_group=2, topk_group=1),
    RoutingRule("sigmoid", 8, 2, True, routed_scaling_factor=2.5, n_group=4, topk_group=2,
                bias=torch.linspace(-0.1, 0.1, 8)),
    RoutingRule("softmax", 8, 2, False, softmax_after_topk=True),
    RoutingRule("topk_sigmoid", 8, 1, False),
], ids=["softmax", "deepseek-v2-groups", "deepseek-v3", "gpt-oss", "llama4"])
def test_none_policy_reproduces_the_routing_rule(rule):
    torch.manual_seed(2)
    logits = torch.randn(300, 8) * 2
    ids, weights = none_policy().choose("layer", logits, rule)
    ref_ids, ref_weights = rule.choose(logits)
    assert as_sets(ids) == as_sets(ref_ids)
    assert torch.allclose(weights.sort(1).values, ref_weights.sort(1).values, atol=1e-6)


def test_routing_stats_on_a_hand_made_choice():
    ids = torch.tensor([[0, 1], [0, 2], [2, 3], [0, -1]])
    table = np.array([[0, 1], [2, 3]])  # GPU 0: experts 0, 1; GPU 1: 2, 3
    stats = routing_stats(ids, 4, table)
    assert stats["gpus_per_token"] == pytest.approx((1 + 2 + 1 + 1) / 4)
    # tokens start on GPUs [0, 0, 1, 1]; GPU 1 receives token 1, GPU 0 token 3: 1 copy = 0.5 x (N/G)
    assert stats["busiest_gpu_recv"] == pytest.approx(0.5)
    assert stats["dropped_fraction"] == pytest.approx(1 / 8)
    assert load_max_over_mean(ids, 4) == pytest.approx(3 / (7 / 4))


def test_gpus_visited_follow_the_plans_replica_policy():
    # experts 1 and 2 are both on GPU 1, and expert 1 also on GPU 0, where the only token starts:
    # the token is served at home for expert 1 (no copy) and on GPU 1 for expert 2 (one copy), as the
    # cost model and the runner count it; the fewest GPUs holding both experts would be GPU 1 alone
    table = np.array([[0, 1], [1, 2], [2, 3]])
    assert gpus_visited(torch.tensor([[1, 2]]), table).tolist() == [[True, True, False]]
    assert gpus_visited(torch.tensor([[1, 2]]), table, "round-robin").tolist() == [[True, True, False]]
    stats = routing_stats(torch.tensor([[1, 2]]), 4, table)
    assert stats["gpus_per_token"] == 2.0 and stats["busiest_gpu_recv"] == pytest.approx(1 / (1 / 3))


def test_plan_driven_policy_covers_every_plan_layer():
    plan = Plan({"a": np.arange(8).reshape(2, 4), "b": np.arange(8)[::-1].reshape(2, 4)}, 8)
    from routelens.reroute import gpu_limited_policy

    policy = gpu_limited_policy(plan, 1)
    rule = RoutingRule("softmax", 8, 2, True)
    for layer in ("a", "b"):
        ids, _ = policy.choose(layer, torch.randn(64, 8), rule)
        assert gpus_per_token(ids, plan.gpu_experts[layer]) == 1.0
    with pytest.raises(InputError, match="not fitted"):
        policy.choose("c", torch.randn(4, 8), rule)


# ---------------------------------------------------------------------------- adaptive GPU limit, weights
def test_gpu_adaptive_drops_only_gpus_holding_little_of_the_routing_weight():
    probs = [[0.30, 0.05, 0.02, 0.01, 0.25, 0.24, 0.10, 0.03]]  # top-3 {0, 4, 5}: GPU 0 holds 0.38, GPU 1 0.62
    rule = RoutingRule("softmax", 8, 3, True)
    logits = logits_from_probs(probs)
    from routelens.reroute import gpu_share_choose

    kept, _ = gpu_share_choose(logits, rule, two_gpu_table(), min_share=0.3)
    assert as_sets(kept) == [{0, 4, 5}]
    cut, weights = gpu_share_choose(logits, rule, two_gpu_table(), min_share=0.4)
    assert as_sets(cut) == [{4, 5, 6}]
    assert torch.allclose(weights.sort(1).values, torch.tensor([[0.10, 0.24, 0.25]]) / 0.59, atol=1e-6)
    capped, _ = gpu_share_choose(logits, rule, two_gpu_table(), min_share=0.0, max_gpus=1)
    assert as_sets(capped) == [{4, 5, 6}]


def test_keep_weights_give_each_expert_its_unconstrained_weight():
    probs = [[0.30, 0.05, 0.02, 0.01, 0.25, 0.24, 0.10, 0.03]]
    rule = RoutingRule("softmax", 8, 3, True)
    from routelens.reroute import gpu_share_choose

    ids, weights = gpu_share_choose(logits_from_probs(probs), rule, two_gpu_table(), min_share=0.4, weights="keep")
    assert as_sets(ids) == [{4, 5, 6}]
    # divided by the unconstrained top-3's total (0.79), not by the new choice's (0.59)
    assert torch.allclose(weights.sort(1).values, torch.tensor([[0.10, 0.24, 0.25]]) / 0.79, atol=1e-6)


def test_keep_weights_for_a_softmax_over_the_chosen_logits():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    rule = RoutingRule("softmax", 4, 2, False, softmax_after_topk=True)
    from routelens.reroute.scores import finish_weights

    chosen = torch.tensor([[0, 2]])
    renorm = finish_weights(logits, None, chosen, rule)
    keep = finish_weights(logits, None, chosen, rule, reference_ids=torch.tensor([[0, 1]]))
    assert torch.allclose(renorm, torch.softmax(torch.tensor([[3.0, 1.0]]), -1))
    assert torch.allclose(keep, torch.exp(torch.tensor([[3.0, 1.0]])) / (math.exp(3) + math.exp(2)))


def test_policy_settings_reject_unknown_weighting():
    from routelens.reroute import C2RSettings

    with pytest.raises(InputError, match="--routing-weights"):
        C2RSettings(top_t=2, weights="sideways")


# ---------------------------------------------------------------------------- fill="drop"
def test_gpu_fill_drop_keeps_only_the_model_experts_on_the_gpus_kept():
    probs = [[0.30, 0.05, 0.02, 0.01, 0.25, 0.24, 0.10, 0.03]]  # top-3 {0, 4, 5}: GPU 0 holds 0.38, GPU 1 0.62
    rule = RoutingRule("softmax", 8, 3, True)
    from routelens.reroute import gpu_share_choose

    ids, weights = gpu_share_choose(logits_from_probs(probs), rule, two_gpu_table(), min_share=0.4, weights="keep",
                                    fill="drop")
    assert as_sets(ids) == [{4, 5}] and int((ids < 0).sum()) == 1  # expert 0 dropped, not replaced by 6
    assert float(weights[ids < 0].abs().sum()) == 0.0
    # keep: each kept expert has exactly its unconstrained weight (the output loses only expert 0's term)
    assert torch.allclose(weights[ids >= 0].sort().values, torch.tensor([0.24, 0.25]) / 0.79, atol=1e-6)
    limited, renormed = gpu_limited_choose(logits_from_probs(probs), rule, two_gpu_table(), max_gpus=1,
                                           gpu_score="max", fill="drop")
    assert as_sets(limited) == [{0}] and math.isclose(float(renormed.sum()), 1.0, rel_tol=1e-6)


def test_gpu_fill_drop_is_the_model_choice_when_nothing_is_cut():
    rule = RoutingRule("softmax", 8, 3, True)
    logits = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    ids, _ = gpu_limited_choose(logits, rule, two_gpu_table(), max_gpus=2, fill="drop")
    assert torch.equal(ids, rule_topk(logits, 3))


def rule_topk(logits: torch.Tensor, k: int) -> torch.Tensor:
    return logits.topk(k, dim=-1).indices


def test_policy_settings_reject_unknown_fill():
    from routelens.reroute import GpuLimitedSettings

    with pytest.raises(InputError, match="--gpu-fill"):
        GpuLimitedSettings(max_gpus=1, fill="sideways")
