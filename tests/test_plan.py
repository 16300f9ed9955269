"""The Plan format: round trip, replica views, and one-line errors for every malformed plan."""

from __future__ import annotations

import json

import numpy as np
import pytest

from routelens.errors import PlanError
from routelens.plan import Plan


def _plan(**kw):
    return Plan({"l0": np.array([[0, 1, 3], [2, 0, 1]]), "l1": np.array([[3, 2, 1], [1, 0, 2]])}, num_experts=4, **kw)


def test_round_trip_keeps_tables_and_metadata(tmp_path):
    plan = _plan(method="routelens", meta={"topology": {"num_nodes": 1, "gpus_per_node": 2}, "seed": 7})
    path = plan.save(tmp_path / "p.json")
    obj = json.loads(path.read_text())
    assert obj["num_gpus"] == 2 and obj["slots_per_gpu"] == 3 and obj["num_redundant"] == 2
    assert obj["layers"]["l0"]["gpu_experts"] == [[0, 1, 3], [2, 0, 1]]
    back = Plan.load(path)
    assert back.method == "routelens" and back.meta["seed"] == 7 and back.topology["gpus_per_node"] == 2
    assert all(np.array_equal(back.gpu_experts[k], plan.gpu_experts[k]) for k in plan.layers)


def test_replica_views():
    plan = _plan()
    assert plan.replica_counts("l0").tolist() == [2, 2, 1, 1]
    assert plan.physical_to_logical("l0").tolist() == [0, 1, 3, 2, 0, 1]
    assert plan.logical_to_physical("l0").tolist() == [[0, 4], [1, 5], [3, -1], [2, -1]]
    assert [r.tolist() for r in plan.expert_replicas("l0")] == [[0, 1], [0, 1], [1], [0]]
    with pytest.raises(PlanError, match="replicas"):
        plan.expert_to_gpu("l0")
    single = Plan({"l": np.array([[1, 0], [3, 2]])}, num_experts=4)
    assert single.expert_to_gpu("l").tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("edit, message", [
    (lambda o: o["layers"]["l0"].update(gpu_experts=[[0, 1, 1], [2, 0, 3]]), "layer l0: gpu_experts GPU 0 holds the same expert twice \\(expert 1\\)"),
    (lambda o: o["layers"]["l0"].update(gpu_experts=[[0, 1, 1], [2, 0]]), "layer l0: gpu_experts is ragged"),
    (lambda o: o["layers"]["l0"].update(gpu_experts=[[0, 1, 9], [2, 0, 1]]), r"layer l0: .*expert id 9, outside \[0, 4\)"),
    (lambda o: o["layers"]["l0"].update(gpu_experts=[[0, 1, -1], [2, 0, 3]]), r"expert id -1, outside"),
    (lambda o: o["layers"]["l0"].update(gpu_experts=[[0, 1, 1.5], [2, 0, 2]]), "layer l0: gpu_experts must hold integer"),
    (lambda o: o["layers"]["l0"].update(gpu_experts=[[0, 1, 3.0], [2, 0, 1]]), "integer expert ids, found 3.0"),
    (lambda o: o["layers"]["l0"].update(gpu_experts=[[0, 1, True], [2, 0, 3]]), "integer expert ids, found True"),
    (lambda o: o["layers"]["l0"].update(gpu_experts=[[0, 1, "3"], [2, 0, 1]]), "integer expert ids, found '3'"),
    (lambda o: o["layers"]["l0"].update(gpu_experts=[[0, 1, [3]], [2, 0, 1]]), "integer expert ids, found \\[3\\]"),
    (lambda o: o["layers"]["l0"].update(gpu_experts=[[0, 1, 2**70], [2, 0, 1]]), "far out of range"),
    (lambda o: o["layers"]["l0"].update(gpu_experts=[[0, 1, 2], [2, 0, 1]]), r"layer l0: gpu_experts: 1 expert\(s\) are placed on no GPU, e.g. \[3\]"),
    (lambda o: o["layers"]["l1"].update(gpu_experts=[[3, 2], [1, 0]]), "layer l1: gpu_experts is 2×2 but layer l0 is 2×3"),
    (lambda o: o["layers"].update(l1={"experts": [[0]]}), "layer l1: gpu_experts must be a non-empty list"),
    (lambda o: o["layers"].update(l1=[[0]]), "layer l1: gpu_experts must be a non-empty list"),
    (lambda o: o.update(num_gpus=4), "num_gpus 4 does not match"),
    (lambda o: o.update(num_gpus="2"), "num_gpus must be an integer"),
    (lambda o: o.update(slots_per_gpu=2.0), "slots_per_gpu must be an integer"),
    (lambda o: o.update(num_redundant=0), "num_redundant 0 does not match"),
    (lambda o: o.update(num_experts=5, num_redundant=1), "placed on no GPU"),
    (lambda o: o.update(num_experts=7), "num_experts 7 is more than the 6 slots"),
    (lambda o: o.update(num_experts=10**40), "num_experts 1000"),
    (lambda o: o.update(num_experts=True), "num_experts must be an integer"),
    (lambda o: o.pop("num_experts"), "num_experts must be an integer >= 1, got missing"),
    (lambda o: o.update(version=99), "version 99"),
    (lambda o: o.update(version=True), "version True"),
    (lambda o: o.update(format="other"), "not a routelens plan"),
    (lambda o: o.update(num_nodes=2, gpus_per_node=2), "num_nodes 2 × gpus_per_node 2"),
    (lambda o: o.update(num_nodes=0), "num_nodes must be an integer >= 1"),
    (lambda o: o.update(replica_policy="closest"), "unknown replica_policy 'closest'"),
    (lambda o: o.update(replica_policy=["first"]), "unknown replica_policy"),
    (lambda o: o.update(method={"x": 1}), "method must be a string"),
    (lambda o: o.update(layers={}), "no layers"),
    (lambda o: o.update(layers=[1, 2]), "layers must be an object"),
    (lambda o: o.update(topology={"num_nodes": 2, "gpus_per_node": 1}), "topology num_nodes 2 does not match"),
    (lambda o: o.update(topology={"num_nodes": 1, "gpus_per_node": 4}), "topology gpus_per_node 4"),
    (lambda o: o.update(topology={"intra_gbps": "fast"}), "topology intra_gbps must be a number"),
    (lambda o: o.update(topology="nvlink"), "topology must be an object"),
    (lambda o: o.update(cost_model={"token_bytes": -1}), "cost_model token_bytes must be a number"),
    (lambda o: o.update(trace={"fit_tokens": [10, 5]}), "trace fit_tokens"),
    (lambda o: o.update(trace={"fingerprint": 7}), "trace fingerprint must be a string"),
    (lambda o: o.update(model={"num_layers": "many"}), "num_layers must be an integer"),
    (lambda o: o.update(model={"num_experts": 8}), "model num_experts 8 does not match"),
])
def test_malformed_plans_raise_one_line_errors(tmp_path, edit, message):
    obj = _plan().to_json()
    edit(obj)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(PlanError, match=message) as info:
        Plan.load(path)
    assert "\n" not in str(info.value)


def test_missing_or_corrupt_file(tmp_path):
    with pytest.raises(PlanError, match="not found"):
        Plan.load(tmp_path / "none.json")
    (tmp_path / "half.json").write_text('{"format": "routelens-plan", "layers": {')
    with pytest.raises(PlanError, match="not valid JSON"):
        Plan.load(tmp_path / "half.json")


def test_plan_must_fit_the_model():
    plan = _plan()
    plan.check_fits(["l0", "l1"], 4)
    with pytest.raises(PlanError, match="4 experts"):
        plan.check_fits(["l0", "l1"], 8)
    with pytest.raises(PlanError, match="no placement"):
        plan.check_fits(["l0", "l1", "l2"], 4)
    with pytest.raises(PlanError, match="does not have"):
        plan.check_fits(["l0"], 4)
    with pytest.raises(PlanError, match="model has 8"):
        plan.check_model_config({"num_experts": 8})
