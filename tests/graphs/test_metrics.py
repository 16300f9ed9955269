"""Metrics on hand-made routing with known answers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from routelens.graphs import (
    coactivation_counts,
    conditional_probability,
    effective_collaborators,
    expert_roles,
    gini,
    jaccard,
    lift,
    load_imbalance,
    pmi,
    top_t_partners,
    top_t_share,
    top_t_stability,
    transition_counts,
    transition_predictability,
)
from routelens.graphs.metrics import COLLABORATIVE, SPECIALIZED, UNUSED

_spec = importlib.util.spec_from_file_location("graphs_reference", Path(__file__).with_name("reference.py"))
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


def fixed_teams(num_tokens: int = 400) -> np.ndarray:
    """8 experts, top-2: tokens use {0,1} or {2,3} only (two specialized teams); 4-7 never used."""
    rows = [[0, 1], [2, 3]] * (num_tokens // 2)
    return np.array(rows)


def all_pairs(num_experts: int = 6) -> np.ndarray:
    """top-2 over every unordered pair equally often: maximally collaborative."""
    return np.array([[i, j] for i in range(num_experts) for j in range(i + 1, num_experts)] * 3)


def test_fixed_teams_are_specialized_with_one_collaborator():
    counts = coactivation_counts(fixed_teams(), 8)
    roles = expert_roles(counts, top_t=1, counts_halves=(counts, counts))
    assert roles["role"].tolist() == [SPECIALIZED] * 4 + [UNUSED] * 4
    assert np.allclose(roles["specialization"][:4], 1.0) and np.isnan(roles["specialization"][4:]).all()
    assert np.allclose(roles["effective_collaborators"][:4], 1.0)
    assert np.allclose(roles["stability"][:4], 1.0)
    assert top_t_partners(counts, 1)[:4, 0].tolist() == [1, 0, 3, 2]


def test_all_pairs_are_collaborative_with_every_other_expert():
    counts = coactivation_counts(all_pairs(6), 6)
    roles = expert_roles(counts, top_t=1)
    assert (roles["role"] == COLLABORATIVE).all()
    assert np.allclose(roles["effective_collaborators"], 5.0)  # E - 1
    assert np.allclose(roles["collaboration"], 1.0)
    assert np.allclose(roles["specialization"], 1 / 5)  # chance level T / (E - 1)


def test_scores_match_the_direct_formulas_on_random_counts():
    rng = np.random.default_rng(0)
    ids = np.argsort(rng.random((800, 10)), axis=1)[:, :3]
    counts = coactivation_counts(ids, 10)
    n_eff, share = effective_collaborators(counts), top_t_share(counts, 2)
    for i in range(10):
        assert n_eff[i] == pytest.approx(ref.effective_collaborators_direct(counts, i))
        assert share[i] == pytest.approx(ref.top_t_share_direct(counts, i, 2))


def test_stability_halves_of_disagreeing_measurements():
    a = coactivation_counts(np.array([[0, 1], [0, 1], [0, 2]]), 3)  # 0's favourite: 1
    b = coactivation_counts(np.array([[0, 2], [0, 2], [0, 1]]), 3)  # 0's favourite: 2
    assert top_t_stability(a, b, 1)[0] == 0.0
    assert top_t_stability(a, a, 1)[0] == 1.0


def test_normalised_forms_on_a_hand_made_table():
    counts = np.array([[4, 2, 0], [2, 2, 1], [0, 1, 2]])  # 8 tokens
    assert conditional_probability(counts)[0].tolist() == [1.0, 0.5, 0.0]
    assert conditional_probability(counts)[1].tolist() == [1.0, 1.0, 0.5]
    assert jaccard(counts)[0, 1] == pytest.approx(2 / (4 + 2 - 2))
    assert lift(counts, 8)[0, 1] == pytest.approx((2 / 8) / ((4 / 8) * (2 / 8)))
    assert pmi(counts, 8)[0, 1] == pytest.approx(np.log(2.0))
    assert pmi(counts, 8)[0, 2] == -np.inf


def test_load_imbalance_known_values():
    assert load_imbalance(np.array([2, 2, 2, 2])) == {"max_over_mean": 1.0, "cv": 0.0, "gini": 0.0}
    skew = load_imbalance(np.array([0, 0, 0, 8]))
    assert skew["max_over_mean"] == 4.0 and skew["gini"] == pytest.approx(0.75) and skew["cv"] == pytest.approx(np.sqrt(3))
    assert gini(np.array([1, 3])) == pytest.approx(0.25)
    assert load_imbalance(np.zeros(4))["max_over_mean"] is None


def test_deterministic_next_layer_is_fully_predictable():
    ids = np.array([[0, 1], [2, 3]] * 50)
    nxt = (ids + 4) % 8  # expert e always leads to e + 4
    summary = transition_predictability(transition_counts(ids, nxt, 8), top_k=2)
    assert summary["topk_coverage"] == 1.0 and summary["chance_coverage"] == 0.25
    assert summary["nmi"] == pytest.approx(0.5)  # one expert of {0,1} tells the pair {4,5}: ln 2 of ln 4


def test_independent_next_layer_has_near_zero_information():
    rng = np.random.default_rng(1)
    a = np.argsort(rng.random((20000, 8)), axis=1)[:, :2]
    b = np.argsort(rng.random((20000, 8)), axis=1)[:, :2]
    summary = transition_predictability(transition_counts(a, b, 8), top_k=2)
    assert summary["nmi"] < 0.01
    assert summary["topk_coverage"] == pytest.approx(0.25, abs=0.03)
