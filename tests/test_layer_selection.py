"""The one ``--layers`` syntax: indices, ranges (negative from the end) and router paths, for every command."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routelens.errors import InputError
from routelens.layer_selection import parse_layer_spec, select_layers

NAMES = [f"model.layers.{i}.mlp.gate" for i in range(8)]


def test_indices_ranges_negatives_and_paths_resolve_to_sorted_distinct_indices():
    assert select_layers("0-2,5", 8) == [0, 1, 2, 5]
    assert select_layers("-2--1", 8) == [6, 7]
    assert select_layers("5,1,5", 8) == [1, 5]
    assert select_layers("model.layers.3.mlp.gate,0", NAMES) == [0, 3]
    assert select_layers(None, 3) == select_layers("all", 3) == select_layers("", 3) == [0, 1, 2]
    assert select_layers([2, 1, 2], 3) == [1, 2]
    assert parse_layer_spec(" 0 , 2-3 ,model.x ") == (0, (2, 3), "model.x")


@pytest.mark.parametrize("spec, layers, message", [
    ("0-8", 8, r"layer 8 out of bounds in --layers 0-8: the trace has 8 MoE layers \(0-7\)"),
    ("-9", 8, "out of bounds"),
    ("5-2", 8, "empty"),
    ("a-b", 8, "cannot read layer selection"),
    ("1,,2", 8, "cannot read layer selection"),
    ("0.5", 8, "cannot read layer selection"),
    ("model.layers.9.mlp.gate", NAMES, "is not in the trace"),
    ("model.layers.0.mlp.gate", 8, "is not in the trace"),  # paths need the trace's layer names
])
def test_bad_selections_are_one_line_errors(spec, layers, message):
    with pytest.raises(InputError, match=message) as info:
        select_layers(spec, layers)
    assert "\n" not in str(info.value)


@given(st.integers(1, 64).flatmap(lambda n: st.tuples(st.just(n), st.lists(st.integers(-n, n - 1), min_size=1))))
def test_a_list_written_as_text_selects_the_same_layers(case):
    count, picked = case
    spec = ",".join(str(v) for v in picked)
    assert select_layers(spec, count) == sorted({v % count for v in picked})


@given(st.integers(1, 64).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1), st.integers(0, n - 1))))
def test_a_range_from_the_start_or_the_end_is_the_same_layers(case):
    count, first, last = case
    first, last = min(first, last), max(first, last)
    assert select_layers(f"{first}-{last}", count) == list(range(first, last + 1))
    assert select_layers(f"{first - count}-{last - count}", count) == list(range(first, last + 1))


@given(st.text(max_size=20))
def test_any_text_either_selects_valid_layers_or_is_an_input_error(text):
    try:
        chosen = select_layers(text, NAMES)
    except InputError as exc:
        assert "\n" not in str(exc)
    else:
        assert chosen == sorted(set(chosen)) and all(0 <= j < len(NAMES) for j in chosen)


def test_docstring_examples():
    import doctest

    import routelens.layer_selection as module

    result = doctest.testmod(module)
    assert result.attempted >= 2 and result.failed == 0
