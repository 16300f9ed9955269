"""The registered optimizer objectives: what each leaves in the cost model, and how an unknown one is refused."""

from __future__ import annotations

import numpy as np
import pytest

from routelens.errors import InputError
from routelens.placement.cost import CostModel, estimate_time, layer_traffic
from routelens.placement.objectives import DEFAULT_OBJECTIVE, get_objective, objective_names
from routelens.placement.optimizer import optimize_layer
from routelens.placement.place import PlaceSettings
from routelens.placement.topology import Topology
from routelens.placement.traffic import assign_replicas, token_source_gpu


def test_the_layer_is_the_default_and_the_a2a_objective_drops_only_the_compute():
    assert objective_names()[0] == DEFAULT_OBJECTIVE == "layer" == PlaceSettings().objective
    cost = CostModel(Topology(1, 4), token_bytes=4096, expert_flops_per_token=5e9)
    ids = np.random.default_rng(0).integers(0, 8, size=(500, 2))
    source = token_source_gpu(len(ids), 4)
    traffic = layer_traffic(source, assign_replicas(ids, source, np.arange(8).reshape(4, 2)), cost.topology, 4)
    layer = estimate_time(traffic, get_objective("layer").cost_model(cost))
    a2a = estimate_time(traffic, get_objective("a2a").cost_model(cost))
    assert layer["compute_s"] > 0 and a2a["compute_s"] == 0
    assert a2a["layer_s"] == pytest.approx(layer["layer_s"] - layer["compute_s"])


def test_an_unknown_objective_is_refused_everywhere_with_the_known_names(tmp_path, capsys):
    from routelens.cli import main

    for call in (lambda: get_objective("fastest"), lambda: PlaceSettings(objective="fastest").check(),
                 lambda: optimize_layer(np.zeros((4, 1), dtype=np.int64), 4, 2, CostModel(Topology(1, 2), 64),
                                        objective="fastest")):
        with pytest.raises(InputError, match="unknown objective 'fastest' .*layer, a2a"):
            call()
    with pytest.raises(SystemExit) as exit_info:
        main(["place", str(tmp_path), "--gpus", "2", "--out", str(tmp_path / "p.json"), "--objective", "fastest"])
    assert exit_info.value.code == 2 and "invalid choice: 'fastest'" in capsys.readouterr().err
