"""The policies' command-line options: one value or a comma-separated sweep, parsed or refused in one line."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from routelens.errors import InputError
from routelens.reroute.options import OPTIONS

OPTION = {option.flag: option for option in OPTIONS}


@given(st.lists(st.integers(1, 512), min_size=1, max_size=6))
def test_whole_number_sweeps_round_trip(values):
    assert OPTION["--group-size"].parse_list(",".join(map(str, values))) == tuple(values)


@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=6))
def test_share_sweeps_round_trip(values):
    assert OPTION["--min-gpu-share"].parse_list(" , ".join(map(repr, values))) == tuple(values)


@given(st.text(alphabet="0123456789.,-xe", min_size=1, max_size=12))
def test_option_values_parse_or_name_the_option(text):
    for option in OPTIONS:
        try:
            values = option.parse_list(text)
        except InputError as exc:
            assert str(exc).count("\n") == 0 and option.flag in str(exc)
            continue
        for value in values:  # what parses lies in the option's range
            if option.choices:
                assert value in option.choices
            else:
                assert (option.lowest is None or value >= option.lowest) and (not option.positive or value > 0)
