"""The one routing rule: worked examples, properties, and every family's own choice reproduced from its logits.

Capture (``RouterSite.rule``) and re-routing (every registered policy) use the functions of
``routelens.routing_rule``. The family test runs each tiny random-init transformers model of
``tests/capture/tiny_models.py``, records what its routers chose from which logits, and checks that
the rule *and every re-routing policy at a setting that does not bind* give back the same experts
and weights.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from routelens.capture.adapters import find_router_sites
from routelens.errors import InputError
from routelens.plan import Plan
from routelens.reroute import (C2RSettings, CapacitySettings, FitData, GpuAdaptiveSettings, GpuLimitedSettings,
                               NoSettings, fit_policy, policy_names)
from routelens.routing_rule import (DROPPED, RoutingRule, choose, finish_weights, group_allowed, rule_scores,
                                    topk_choice)

_spec = importlib.util.spec_from_file_location("tiny_models", Path(__file__).with_name("capture") / "tiny_models.py")
tiny_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_models)


def as_sets(ids: torch.Tensor) -> list[set[int]]:
    return [set(int(i) for i in row if i >= 0) for row in ids]


def by_id(ids: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = ids.long().argsort(dim=-1)
    return ids.long().gather(1, order), weights.float().gather(1, order)


# ---------------------------------------------------------------------------- worked examples
def test_softmax_top_k_renormalised_and_scaled():
    rule = RoutingRule("softmax", 4, 2, norm_topk_prob=True, routed_scaling_factor=2.0)
    ids, weights = choose(torch.log(torch.tensor([[0.1, 0.4, 0.2, 0.3]])), rule)
    assert ids.tolist() == [[1, 3]]
    assert torch.allclose(weights, torch.tensor([[0.4, 0.3]]) / 0.7 * 2.0)


def test_the_selection_bias_ranks_but_does_not_weigh():
    # sigmoid scores 0.73, 0.5, 0.27, 0.5; a bias of +0.5 on expert 2 lifts it into the top-2
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.0]])
    rule = RoutingRule("sigmoid", 4, 2, norm_topk_prob=False, bias=torch.tensor([0.0, 0.0, 0.5, 0.0]))
    ids, weights = choose(logits, rule)
    assert as_sets(ids) == [{0, 2}]
    assert torch.allclose(by_id(ids, weights)[1], torch.sigmoid(torch.tensor([[1.0, -1.0]])))


def test_deepseek_v3_groups_rank_by_the_sum_of_their_best_two():
    # group 0 = experts 0-3 holds the single best expert, group 1 = experts 4-7 the better pair
    scores = torch.tensor([[0.95, 0.10, 0.10, 0.10, 0.60, 0.60, 0.10, 0.10]])
    rule = RoutingRule("sigmoid", 8, 2, norm_topk_prob=True, n_group=2, topk_group=1)
    logits = torch.logit(scores)
    assert group_allowed(torch.sigmoid(logits), rule).tolist() == [[False] * 4 + [True] * 4]
    assert as_sets(choose(logits, rule)[0]) == [{4, 5}]
    # DeepSeek-V2 (softmax) ranks groups by their best expert instead: group 0 wins
    v2 = RoutingRule("softmax", 8, 2, norm_topk_prob=False, n_group=2, topk_group=1)
    assert as_sets(choose(torch.log(scores), v2)[0]) == [{0, 1}]


def test_softmax_over_the_chosen_and_top_k_sigmoid():
    logits = torch.tensor([[3.0, 1.0, 2.0, -1.0]])
    ids, weights = choose(logits, RoutingRule("softmax", 4, 2, False, softmax_after_topk=True))
    assert ids.tolist() == [[0, 2]] and torch.allclose(weights, torch.softmax(torch.tensor([[3.0, 2.0]]), -1))
    ids, weights = choose(logits, RoutingRule("topk_sigmoid", 4, 2, False))
    assert ids.tolist() == [[0, 2]] and torch.allclose(weights, torch.sigmoid(torch.tensor([[3.0, 2.0]])))


def test_dbrx_p_norm_and_dropped_slots():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    rule = RoutingRule("softmax", 3, 2, norm_topk_prob=True, norm_p=2.0)
    ids, weights = choose(logits, rule)
    assert torch.allclose(weights, torch.tensor([[0.5, 0.3]]) / math.hypot(0.5, 0.3))
    gate = rule_scores(logits, rule)[1]
    dropped = finish_weights(logits, gate, torch.tensor([[0, DROPPED]]), rule)
    assert dropped.tolist() == [[1.0, 0.0]]  # the kept expert alone carries the whole norm


def test_sparsemixer_is_refused_by_the_shared_scores_but_chosen_by_its_own_rule():
    rule = RoutingRule("sparsemixer", 4, 2, False, jitter_eps=0.01)
    ids, weights = choose(torch.tensor([[2.0, 0.0, 1.0, -1.0]]), rule)
    assert ids.tolist() == [[0, 2]] and torch.allclose(weights, torch.ones(1, 2))
    with pytest.raises(InputError, match="SparseMixer"):
        rule_scores(torch.zeros(1, 4), rule)


# ---------------------------------------------------------------------------- properties
@st.composite
def rules_and_logits(draw):
    num_experts = draw(st.sampled_from([4, 8, 16]))
    top_k = draw(st.integers(1, num_experts // 2))
    scoring = draw(st.sampled_from(["softmax", "sigmoid", "topk_sigmoid", "softmax_after_topk"]))
    n_group = topk_group = None
    bias = None
    if scoring in ("softmax", "sigmoid"):
        n_group = draw(st.sampled_from([None, 2, 4]))
        if n_group is not None:
            per_group = num_experts // n_group
            # enough experts in the kept groups for k (every released config), and >= 2 per group (sum of best two)
            topk_group = draw(st.integers(max(1, -(-top_k // per_group)), n_group))
            if per_group < 2:
                n_group = topk_group = None
        if draw(st.booleans()):
            bias = torch.tensor(draw(st.lists(st.floats(-0.3, 0.3), min_size=num_experts, max_size=num_experts)))
    rule = RoutingRule("softmax" if scoring == "softmax_after_topk" else scoring, num_experts, top_k,
                       norm_topk_prob=draw(st.booleans()) and scoring in ("softmax", "sigmoid"),
                       routed_scaling_factor=draw(st.sampled_from([1.0, 2.5])), n_group=n_group,
                       topk_group=topk_group, bias=bias, softmax_after_topk=scoring == "softmax_after_topk")
    seed = draw(st.integers(0, 2**16))
    logits = 2 * torch.randn(draw(st.integers(1, 12)), num_experts, generator=torch.Generator().manual_seed(seed))
    return rule, logits


@settings(max_examples=60, deadline=None)
@given(rules_and_logits())
def test_the_choice_is_the_top_k_of_the_selection_scores_weighted_by_the_gate(case):
    rule, logits = case
    ids, weights = choose(logits, rule)
    select, gate = rule_scores(logits, rule)
    assert ids.shape == weights.shape == (logits.shape[0], rule.top_k) and (ids >= 0).all()
    assert all(len(row) == rule.top_k for row in as_sets(ids))
    # no expert outside the choice ranks above one inside it
    chosen = select.gather(1, ids)
    outside = select.masked_fill(torch.zeros_like(select, dtype=torch.bool).scatter_(1, ids, True), float("-inf"))
    assert (chosen.min(dim=-1).values >= outside.max(dim=-1).values).all()
    if rule.has_group_limit:
        groups = {tuple(sorted({int(e) // (rule.num_experts // rule.n_group) for e in row})) for row in ids}
        assert all(len(g) <= rule.topk_group for g in groups)
    assert (weights >= 0).all()
    if rule.norm_topk_prob or rule.softmax_after_topk:
        assert torch.allclose(weights.sum(-1), torch.full((logits.shape[0],), rule.routed_scaling_factor), atol=1e-5)
    else:  # the gate scores themselves, scaled: the bias never reaches them
        assert torch.allclose(weights, gate.gather(1, ids) * rule.routed_scaling_factor)


@settings(max_examples=40, deadline=None)
@given(rules_and_logits())
def test_weights_depend_on_the_chosen_set_not_on_its_order(case):
    rule, logits = case
    ids, weights = choose(logits, rule)
    flipped = ids.flip(-1)
    select, gate = rule_scores(logits, rule)
    assert torch.allclose(finish_weights(logits, gate, flipped, rule), weights.flip(-1), atol=1e-6)
    assert torch.equal(topk_choice(select, rule.top_k), ids)


# ---------------------------------------------------------------------------- every family's own choice
FAMILIES = sorted(tiny_models.FAMILIES) + sorted(tiny_models.SHRUNK)
REROUTABLE = [family for family in FAMILIES if family != "phimoe"]  # SparseMixer has no score a policy can re-rank


def non_binding(name: str, num_experts: int, top_k: int, num_gpus: int):
    """A setting of each registered policy under which it must keep the model's own choice."""
    return {
        "none": NoSettings(),
        "c2r": C2RSettings(top_t=num_experts - 1),  # every other expert is a collaborator
        "gpu-limited": GpuLimitedSettings(max_gpus=num_gpus),  # every GPU may be visited
        "gpu-adaptive": GpuAdaptiveSettings(min_gpu_share=0.0),  # every GPU holding any weight is kept
        "capacity-drop": CapacitySettings(capacity_factor=num_experts / top_k),  # capacity = all slots
        "capacity-reroute": CapacitySettings(capacity_factor=num_experts / top_k),
    }[name]


def recorded_choices(family: str):
    """The tiny model's sites and, per site, ``(logits, ids, weights)`` of every router call on one batch."""
    model = tiny_models.build_tiny(family)
    sites = find_router_sites(model).sites
    calls: list[list] = [[] for _ in sites]
    handles = [site.module.register_forward_hook(
        lambda module, args, kwargs, output, j=j, site=site: calls[j].append(site.unpack(args, kwargs, output)),
        with_kwargs=True) for j, site in enumerate(sites)]
    ids = torch.randperm(tiny_models.VOCAB, generator=torch.Generator().manual_seed(1))[:14].view(2, 7)
    try:
        with torch.no_grad():
            model(**tiny_models.forward_inputs(family, ids))
    finally:
        for handle in handles:
            handle.remove()
    return sites, calls


@pytest.mark.parametrize("family", FAMILIES)
def test_the_rule_and_every_non_binding_policy_reproduce_the_family_choice(family):
    sites, calls = recorded_choices(family)
    names = policy_names(include_baseline=True)
    checked = 0
    for site, site_calls in zip(sites, calls):
        num_gpus = 2
        plan = Plan({site.name: np.arange(site.num_experts).reshape(num_gpus, -1)}, site.num_experts)
        for rec in site_calls:
            if rec.logits is None:
                continue
            full = rec.topk_ids.min(dim=-1).values >= 0  # tokens a capacity limit (Switch, NLLB) cut are not in the rule
            model_ids, model_weights = by_id(rec.topk_ids[full], rec.topk_weights[full])
            ids, weights = by_id(*choose(rec.logits, site.rule))
            assert torch.equal(ids[full], model_ids), f"{site.name}: the rule chose other experts"
            torch.testing.assert_close(weights[full], model_weights, atol=1e-5, rtol=0)
            if family not in REROUTABLE:
                continue
            data = FitData(plan=plan, calibration={site.name: rec.topk_ids.numpy()}, num_experts=site.num_experts)
            for name in names:
                policy = fit_policy(name, non_binding(name, site.num_experts, site.top_k, num_gpus), data)
                ids, weights = by_id(*policy.choose(site.name, rec.logits, site.rule))
                assert torch.equal(ids[full], model_ids), f"{site.name}: {policy.label()} changed the choice"
                torch.testing.assert_close(weights[full], model_weights, atol=1e-5, rtol=0,
                                           msg=f"{site.name}: {policy.label()}")
            checked += 1
    assert checked or family not in REROUTABLE


def test_docstring_examples():
    import doctest

    import routelens.routing_rule

    assert doctest.testmod(routelens.routing_rule).failed == 0
