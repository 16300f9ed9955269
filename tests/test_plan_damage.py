"""Damaged plan files, generated at random: ``Plan.load`` reads them or refuses with one line, and the
commands that take a plan exit 2 with one line on stderr, no traceback, the file untouched."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from routelens.cli import main
from routelens.errors import PlanError
from routelens.placement.baselines import random_table
from routelens.plan import REPLICA_POLICIES, Plan
from routelens.synthetic import synthetic_trace_arrays
from routelens.trace import write_trace

LAYERS = ["model.layers.0.mlp.gate", "model.layers.1.mlp.gate"]
NUM_EXPERTS, NUM_GPUS, SLOTS = 8, 2, 5  # 2 redundant slots
COUNTS = ("num_gpus", "slots_per_gpu", "num_redundant", "num_experts", "num_nodes", "gpus_per_node")

# JSON values of every kind a hostile or broken file may hold where an integer belongs
junk = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=6), st.lists(st.integers(-2, 9), max_size=3),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@st.composite
def valid_plans(draw):
    """A plan's JSON object: 1-4 GPUs, replicas or not, 1-3 layers."""
    num_gpus = draw(st.integers(1, 4))
    num_experts = draw(st.integers(2, 8))
    slots = draw(st.integers(-(-num_experts // num_gpus), num_experts))
    seed = draw(st.integers(0, 1000))
    tables = {f"model.layers.{i}.mlp.gate": random_table(num_experts, num_gpus, num_gpus * slots - num_experts, seed + i)
              for i in range(draw(st.integers(1, 3)))}
    nodes = draw(st.sampled_from([n for n in (1, 2) if num_gpus % n == 0]))
    plan = Plan(tables, num_experts, num_nodes=nodes, replica_policy=draw(st.sampled_from(REPLICA_POLICIES)),
                method="random", meta={"topology": {"num_nodes": nodes, "gpus_per_node": num_gpus // nodes}})
    return plan.to_json()


def _table(draw, obj):
    """A random layer's ``gpu_experts`` (a list of non-empty lists), or None when earlier damage left none."""
    layers = obj.get("layers")
    names = sorted(n for n, spec in layers.items() if isinstance(spec, dict)) if isinstance(layers, dict) else []
    tables = [layers[n].get("gpu_experts") for n in names]
    tables = [t for t in tables if isinstance(t, list) and t and all(isinstance(r, list) and r for r in t)]
    return draw(st.sampled_from(tables)) if tables else None


@st.composite
def damaged_plans(draw):
    """A valid plan with 1-3 random damages; returns ``(obj, must_refuse)``.

    ``must_refuse`` is set when the last damage put an expert twice on one GPU.
    """
    obj = draw(valid_plans())
    must_refuse = False
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["cell", "duplicate", "row", "field", "drop", "layer", "shape"]))
        table = _table(draw, obj)
        must_refuse = False
        if kind in ("cell", "duplicate", "row", "shape") and table is None:
            continue
        if kind in ("cell", "duplicate", "row"):
            g = draw(st.integers(0, len(table) - 1))
            s = draw(st.integers(0, len(table[g]) - 1))
        if kind == "cell":  # an entry becomes anything: an id in or out of range, or junk
            table[g][s] = draw(st.one_of(st.integers(-3, 12), junk))
        elif kind == "duplicate":  # an expert twice on one GPU
            if len(table[g]) > 1:
                table[g][s] = table[g][(s + 1) % len(table[g])]
                must_refuse = True
        elif kind == "row":  # a GPU loses or gains a slot, or a GPU is added or removed
            action = draw(st.sampled_from(["pop", "append", "drop_gpu", "add_gpu"]))
            if action == "pop":
                table[g].pop()
            elif action == "append":
                table[g].append(draw(st.integers(0, 8)))
            elif action == "drop_gpu":
                table.pop(g)
            else:
                table.append(list(table[g]))
        elif kind == "field":  # a declared count, policy, version or metadata becomes anything
            key = draw(st.sampled_from([*COUNTS, "replica_policy", "version", "method", "topology", "cost_model",
                                        "trace", "model", "layers"]))
            obj[key] = draw(st.one_of(junk, st.integers(0, 20)))
        elif kind == "drop":
            obj.pop(draw(st.sampled_from(sorted(obj))))
        elif kind == "layer" and isinstance(obj.get("layers"), dict) and obj["layers"]:
            name = draw(st.sampled_from(sorted(obj["layers"])))  # a layer spec that is not {"gpu_experts": [[...]]}
            obj["layers"][name] = draw(st.one_of(junk, st.just({"gpu_experts": []}), st.just({"gpu_experts": [[]]})))
        elif kind == "shape":  # one layer of another shape
            table[:] = [list(col) for col in zip(*table)] or [[0]]
    return obj, must_refuse


def _declared_counts_agree(obj, plan):
    for key, value in (("num_gpus", plan.num_gpus), ("slots_per_gpu", plan.slots_per_gpu),
                       ("num_redundant", plan.num_redundant), ("num_experts", plan.num_experts),
                       ("num_nodes", plan.num_nodes), ("gpus_per_node", plan.gpus_per_node)):
        if key in obj:
            assert obj[key] == value and type(obj[key]) is int, key


def _load_or_refuse(path):
    """Plan.load either works (and the plan is sound) or raises a one-line PlanError; nothing else."""
    try:
        plan = Plan.load(path)
    except PlanError as exc:
        message = str(exc)
        assert message and "\n" not in message and len(message) < 400, message
        return None
    for table in plan.gpu_experts.values():
        assert table.shape == (plan.num_gpus, plan.slots_per_gpu)
        assert all(len(set(row.tolist())) == len(row) for row in table)
        assert set(table.ravel().tolist()) == set(range(plan.num_experts))
    return plan


@settings(max_examples=200, deadline=None)
@given(damaged_plans())
def test_a_damaged_plan_loads_soundly_or_is_refused_with_one_line(tmp_path_factory, case):
    obj, must_refuse = case
    path = tmp_path_factory.getbasetemp() / "damaged.json"
    path.write_text(json.dumps(obj))
    plan = _load_or_refuse(path)
    if plan is not None:
        assert not must_refuse
        _declared_counts_agree(obj, plan)


@settings(max_examples=100, deadline=None)
@given(valid_plans(), st.data())
def test_a_truncated_plan_file_is_refused_with_one_line(tmp_path_factory, obj, data):
    text = json.dumps(obj, indent=data.draw(st.sampled_from([None, 1])))
    cut = data.draw(st.integers(0, len(text) - 1))
    path = tmp_path_factory.getbasetemp() / "truncated.json"
    path.write_text(text[:cut])
    with pytest.raises(PlanError) as info:
        Plan.load(path)
    assert "\n" not in str(info.value)


@settings(max_examples=100, deadline=None)
@given(valid_plans(), st.sampled_from(COUNTS), st.one_of(junk, st.integers(0, 64)))
def test_every_declared_count_must_match_the_tables(obj, key, value):
    true_value = obj[key]
    assume(not (type(value) is int and value == true_value))
    obj[key] = value
    with pytest.raises(PlanError, match=key) as info:
        Plan.from_json(obj)
    assert "\n" not in str(info.value)


def test_an_expert_on_two_gpus_with_no_redundant_slots_declared_is_refused():
    """The reported bug: such a file used to load as a replica plan (num_redundant 0 became 4)."""
    obj = Plan({l: np.array([[0, 1, 2], [3, 0, 1]]) for l in LAYERS}, num_experts=4).to_json()
    obj["num_redundant"] = 0
    with pytest.raises(PlanError, match="num_redundant 0 does not match the tables: num_gpus 2 × slots_per_gpu 3 - num_experts 4 = 2"):
        Plan.from_json(obj, source="p.json")


# ---------------------------------------------------------------------------------------- commands
@pytest.fixture(scope="module")
def run_path(tmp_path_factory):
    arrays = synthetic_trace_arrays(num_tokens=512, num_layers=2, num_experts=NUM_EXPERTS, top_k=2, with_logits=True)
    path = tmp_path_factory.mktemp("damage") / "run"
    write_trace(path, arrays["header"], arrays["token_ids"], arrays["seq_ids"], arrays["positions"],
                arrays["topk_ids"], arrays["topk_weights"], arrays["router_logits"])
    return path


@st.composite
def refused_plans(draw):
    """Plans for the trace above (2 GPUs × 5 slots, 8 experts) with one damage that must be refused."""
    tables = {l: random_table(NUM_EXPERTS, NUM_GPUS, NUM_GPUS * SLOTS - NUM_EXPERTS, seed=i) for i, l in enumerate(LAYERS)}
    obj = Plan(tables, NUM_EXPERTS, method="routelens").to_json()
    table = obj["layers"][draw(st.sampled_from(LAYERS))]["gpu_experts"]
    g, s = draw(st.integers(0, NUM_GPUS - 1)), draw(st.integers(0, SLOTS - 1))
    kind = draw(st.sampled_from(["duplicate", "out_of_range", "junk", "count", "ragged"]))
    if kind == "duplicate":
        table[g][s] = table[g][(s + 1) % SLOTS]
    elif kind == "out_of_range":
        table[g][s] = draw(st.one_of(st.integers(max_value=-1), st.integers(min_value=NUM_EXPERTS)))
    elif kind == "junk":
        table[g][s] = draw(junk.filter(lambda v: type(v) is not int))
    elif kind == "count":
        key = draw(st.sampled_from(COUNTS))
        obj[key] = draw(junk.filter(lambda v: not (type(v) is int and v == obj[key])))
    else:
        table[g].pop()
    text = json.dumps(obj)
    return text[: draw(st.integers(0, len(text) - 1))] if draw(st.booleans()) else text


def _assert_one_line_refusal(code, err):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("routelens: error: ") and "Traceback" not in err, err


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=refused_plans(), command=st.sampled_from(["plan-eval", "bench", "reroute", "reroute-eval"]))
def test_commands_refuse_a_bad_plan_with_one_line_and_leave_it_untouched(run_path, tmp_path, capsys, text, command):
    path = tmp_path / "bad plan.json"
    path.write_text(text)
    argv = {
        "plan-eval": ["plan-eval", str(run_path), str(path), "--no-progress"],
        "bench": ["bench", str(run_path), str(path), "--backend", "gloo", "--gpus", "2"],
        "reroute": ["reroute", str(run_path), "--policy", "gpu-limited", "--plan", str(path),
                    "--out", str(tmp_path / "rerouted"), "--no-progress"],
        "reroute-eval": ["reroute-eval", "--plan", str(path), "--out", str(tmp_path / "tradeoff"), "--no-progress"],
    }[command]
    capsys.readouterr()
    _assert_one_line_refusal(main(argv), capsys.readouterr().err)
    assert path.read_text() == text
    assert not (tmp_path / "rerouted").exists() and not (tmp_path / "tradeoff").exists()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=refused_plans())
def test_plan_eval_process_prints_one_line_and_exits_2(run_path, tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "routelens.cli", "plan-eval", str(run_path), str(path)],
                          capture_output=True, text=True, timeout=60)
    _assert_one_line_refusal(proc.returncode, proc.stderr)
    assert path.read_text() == text
