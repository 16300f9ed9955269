"""The plan against its strongest rival: a different best baseline per number, and no baseline at all."""

from __future__ import annotations

import math

from routelens.placement.evaluate import format_versus_best, versus_best


def _results():
    return {"contiguous": {"mean": {"busiest_gpu_recv": 5.0, "a2a_us": 7.0, "layer_us": 7.5}},
            "kahypar": {"mean": {"busiest_gpu_recv": 4.0, "a2a_us": 6.5, "layer_us": 7.9}},
            "eplb": {"mean": {"busiest_gpu_recv": 4.8, "a2a_us": 6.8, "layer_us": 7.2}},
            "plan (routelens)": {"mean": {"busiest_gpu_recv": 3.6, "a2a_us": 6.6, "layer_us": 7.2}}}


def test_each_number_is_judged_against_the_baseline_best_on_it():
    rows = versus_best(_results(), "plan (routelens)")
    assert rows["busiest_gpu_recv"]["best_baseline"] == "kahypar"
    assert math.isclose(rows["busiest_gpu_recv"]["change"], 3.6 / 4.0 - 1)
    assert rows["a2a_us"]["best_baseline"] == "kahypar" and rows["a2a_us"]["change"] > 0  # the plan loses here
    assert rows["layer_us"]["best_baseline"] == "eplb" and rows["layer_us"]["change"] == 0.0
    text = format_versus_best(_results(), "plan (routelens)").splitlines()
    assert text[0].startswith("busiest-GPU receive") and "kahypar 4.000 T/G (-10.0%)" in text[0]
    assert text[2].startswith("est. layer time") and "eplb 7.20 µs/layer (+0.0%)" in text[2]


def test_without_a_baseline_there_is_nothing_to_judge():
    alone = {"plan": _results()["plan (routelens)"]}
    assert versus_best(alone, "plan") == {} and format_versus_best(alone, "plan") == ""
