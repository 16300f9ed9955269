"""The placement-method registry: names, what each method needs, and that the registered builders place as the
baseline functions do."""

from __future__ import annotations

import numpy as np
import pytest

from routelens.errors import InputError
from routelens.placement.baselines import contiguous_table, eplb_table, greedy_table, random_table
from routelens.placement.cost import CostModel
from routelens.graphs import load_counts as expert_load
from routelens.placement.methods import (REFERENCE, LayerFit, baseline_names, get_method, load_only_names,
                                         method_names)
from routelens.placement.place import PlaceSettings, layer_table
from routelens.placement.topology import Topology
from routelens.synthetic import synthetic_topk_ids

COST = CostModel(Topology(num_nodes=2, gpus_per_node=4), token_bytes=8192.0, expert_flops_per_token=0.0)


def test_the_registered_methods_and_what_they_need():
    assert method_names() == ("routelens", "contiguous", "random", "greedy", "eplb", "kahypar", "kahypar-load")
    assert baseline_names() == method_names()[1:]
    assert baseline_names(core_only=True) == ("contiguous", "random", "greedy", "eplb")
    assert load_only_names() == ("contiguous", "random", "greedy", "eplb")  # what a counts-only run may use
    assert all(get_method(name).supports_replicas for name in method_names())
    assert REFERENCE in baseline_names()
    with pytest.raises(InputError, match="unknown placement method 'bogus'"):
        get_method("bogus")
    with pytest.raises(InputError, match="unknown placement method 'bogus'"):
        PlaceSettings(method="bogus").check()


@pytest.mark.parametrize("redundant", [0, 8])
def test_registered_baselines_place_as_the_baseline_functions(redundant):
    ids = synthetic_topk_ids(2048, 32, 4, seed=1).astype(np.int64)
    load = expert_load(ids, 32)
    settings = PlaceSettings(redundant=redundant, seed=3, num_groups=4)
    expected = {
        "contiguous": contiguous_table(32, 8, redundant),
        "random": random_table(32, 8, redundant, seed=3),
        "greedy": greedy_table(load, 8, redundant),
        "eplb": eplb_table(load, 8, redundant, num_nodes=2, num_groups=4),
    }
    for name, table in expected.items():
        from_ids, info = layer_table(name, ids, 32, COST, settings)
        from_load, _ = get_method(name).build(LayerFit(32, load=load), COST, settings, None)
        assert np.array_equal(from_ids, table) and info == {}, name
        assert np.array_equal(from_load, table), f"{name} from the loads alone"


def test_a_coactivation_method_refuses_a_layer_with_only_loads():
    with pytest.raises(InputError, match="needs each token's experts.*eplb"):
        get_method("routelens").build(LayerFit(32, load=np.ones(32)), COST, PlaceSettings(), None)

