"""The counting kernels equal a direct token-by-token computation, and reject bad ids."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import routelens.graphs.counts as K
from routelens.errors import InputError
from routelens.graphs import coactivation_counts, load_counts, load_mass, transition_counts
from routelens.graphs.layer import count_chunk

_spec = importlib.util.spec_from_file_location("graphs_reference", Path(__file__).with_name("reference.py"))
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)
coactivation_direct, load_mass_direct, transitions_direct = ref.coactivation_direct, ref.load_mass_direct, ref.transitions_direct


def random_topk(num_tokens: int, num_experts: int, k: int, seed: int = 0, drop: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ids = np.argsort(rng.random((num_tokens, num_experts)), axis=1)[:, :k].astype(np.int16)
    if drop:
        ids[rng.random(ids.shape) < drop] = -1
    return ids


def test_hand_made_counts_have_known_values():
    ids = np.array([[0, 1, 2], [0, 1, 3], [2, 3, 0]])
    counts = coactivation_counts(ids, 4)
    assert counts.tolist() == [[3, 2, 2, 2], [2, 2, 1, 1], [2, 1, 2, 1], [2, 1, 1, 2]]
    assert counts.dtype == np.int64
    assert load_counts(ids, 4).tolist() == [3, 2, 2, 2]


def test_coactivation_equals_direct_count_across_sub_chunks(monkeypatch):
    monkeypatch.setattr(K, "SUB_CHUNK_TOKENS", 97)  # many sub-chunks, an uneven last one
    ids = random_topk(1000, 16, 4, seed=1)
    assert np.array_equal(coactivation_counts(ids, 16), coactivation_direct(ids, 16))
    nxt = random_topk(1000, 16, 3, seed=2)
    assert np.array_equal(transition_counts(ids, nxt, 16), transitions_direct(ids, nxt, 16, 16))


def test_dropped_slots_count_for_nothing():
    ids = random_topk(500, 12, 3, seed=2, drop=0.2)
    assert (ids == -1).any()
    counts = coactivation_counts(ids, 12)
    assert np.array_equal(counts, coactivation_direct(ids, 12))
    assert np.array_equal(load_counts(ids, 12), np.bincount(ids[ids >= 0], minlength=12))


def test_wide_layers_stay_exact():
    ids = random_topk(300, 200, 3, seed=3)
    assert np.array_equal(coactivation_counts(ids, 200), coactivation_direct(ids, 200))


def test_transitions_equal_direct_count_with_different_widths():
    a, b = random_topk(700, 10, 3, seed=4, drop=0.1), random_topk(700, 6, 2, seed=5)
    assert np.array_equal(transition_counts(a, b, 10, 6), transitions_direct(a, b, 10, 6))
    # every token adds k * k' pairs
    assert transition_counts(random_topk(50, 8, 2), random_topk(50, 8, 2, seed=9), 8).sum() == 50 * 4


def test_weight_mass_matches_direct_sum():
    ids = random_topk(400, 8, 2, seed=6, drop=0.1)
    w = np.random.default_rng(6).random(ids.shape).astype(np.float16)
    assert np.allclose(load_mass(ids, w, 8), load_mass_direct(ids, w, 8))


def test_router_entropy_sum_of_uniform_logits_is_log_e():
    total, n = K.router_entropy_sum(np.zeros((10, 16), np.float16))
    assert n == 10 and total == pytest.approx(10 * np.log(16), rel=1e-6)
    with pytest.raises(InputError, match="NaN or inf"):
        K.router_entropy_sum(np.full((2, 4), np.nan))


@pytest.mark.parametrize("bad", [8, -2])
def test_ids_out_of_range_are_one_line_errors(bad):
    ids = np.array([[0, 1], [2, bad]])
    with pytest.raises(InputError, match=f"expert id {bad}, outside"):
        coactivation_counts(ids, 8)


def test_not_a_matrix_is_refused():
    with pytest.raises(InputError, match=r"\[tokens, k\]"):
        coactivation_counts(np.arange(5), 8)


def test_threaded_counting_equals_single_thread():
    n, e = 40000, 16
    ids, nxt = random_topk(n, e, 4, seed=7, drop=0.05), random_topk(n, e, 4, seed=8)
    rng = np.random.default_rng(7)
    kwargs = dict(topk_weights=rng.random(ids.shape), next_ids=nxt, router_logits=rng.normal(size=(n, e)),
                  token_classes=rng.integers(0, 6, n), token_cols=rng.integers(0, 50, n), num_token_cols=50,
                  start=1000, half=21000)
    one, three = count_chunk(ids, e, workers=1, **kwargs), count_chunk(ids, e, workers=3, **kwargs)
    for name in ("coactivation_halves", "load", "transitions", "class_counts", "token_counts", "pair_hist"):
        assert np.array_equal(getattr(one, name), getattr(three, name)), name
    assert np.allclose(one.load_weight, three.load_weight) and one.entropy_sum == pytest.approx(three.entropy_sum)
    assert one.num_tokens == three.num_tokens == n
    first_half = coactivation_direct(ids[:20000], e)
    np.fill_diagonal(first_half, 0)
    assert np.array_equal(one.coactivation_halves[0], first_half)
