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
    (lambda o: o["layers"]["l0"].update(gpu_experts=[[0, 1, 1], [2, 0, 3]]), "same expert twice"),
    (lambda o: o["layers"]["l0"].update(gpu_experts=[[0, 1, 1], [2, 0]]), "ragged|malformed"),
    (lambda o: o["layers"]["l0"].update(gpu_experts=[[0, 1, 9], [2, 0, 1]]), r"\[0, 4\)"),
    (lambda o: o["layers"]["l0"].update(gpu_experts=[[0, 1, 1.5], [2, 0, 2]]), "integer"),
    (lambda o: o["layers"]["l0"].update(gpu_experts=[[0, 1, 0], [2, 0, 1]]), "placed on no GPU"),
    (lambda o: o.update(num_gpus=4), "num_gpus 4"),
    (lambda o: o.update(version=99), "version 99"),
    (lambda o: o.update(format="other"), "not a routelens plan"),
    (lambda o: o.update(num_nodes=2, gpus_per_node=2), "GPUs per node"),
    (lambda o: o.update(replica_policy="closest"), "unknown replica policy"),
    (lambda o: o.update(layers={}), "no layers"),
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
