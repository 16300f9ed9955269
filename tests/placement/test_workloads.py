"""One plan fitted on several runs (routelens.placement.workloads) and plans × runs scored as a matrix."""

from __future__ import annotations

import json

import numpy as np
import pytest

from routelens.cli import main
from routelens.errors import InputError, PlanError
from routelens.placement.cost import CostModel
from routelens.placement.evaluate import eval_token_index, score_plan
from routelens.placement.place import PlaceSettings, place
from routelens.placement.topology import make_topology
from routelens.placement.workloads import make_workloads, mixed_fit_ids, place_workloads, plan_matrix
from routelens.plan import Plan
from routelens.synthetic import synthetic_trace_arrays
from routelens.trace import Trace, write_trace


def _trace(folder, seed, tokens=2048):
    arrays = synthetic_trace_arrays(num_tokens=tokens, num_layers=2, num_experts=16, top_k=2, seed=seed)
    return write_trace(folder, arrays["header"], arrays["token_ids"], arrays["seq_ids"], arrays["positions"],
                       arrays["topk_ids"], arrays["topk_weights"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs of the same model shape whose routing differs (other planted groups and popular experts)."""
    root = tmp_path_factory.mktemp("workloads")
    return _trace(root / "code", seed=1), _trace(root / "prose", seed=2, tokens=1024)


def cost_for(trace, gpus=4) -> CostModel:
    return CostModel.for_model(trace.config, make_topology(num_gpus=gpus))


def test_default_weights_follow_the_fit_tokens_and_the_mix_holds_every_fit_token_once(runs):
    code, prose = runs
    workloads = make_workloads(runs, [(0, 1024), (0, 512)])
    assert [w.weight for w in workloads] == pytest.approx([2 / 3, 1 / 3])
    layer = code.layers[0]
    mixed = mixed_fit_ids(workloads, layer)
    both = np.concatenate([np.asarray(code.topk_ids(layer))[:1024], np.asarray(prose.topk_ids(layer))[:512]])
    assert sorted(map(tuple, mixed.tolist())) == sorted(map(tuple, both.tolist()))



def test_the_runs_are_interleaved_evenly_through_the_mix(tmp_path):
    # run A routes to experts 0-7 only, run B to 8-15 only: every row of the mix says where it came from
    arrays = synthetic_trace_arrays(num_tokens=600, num_layers=1, num_experts=16, top_k=2, seed=4)
    low = arrays["topk_ids"][0] % 8
    traces = []
    for name, ids, n in (("a", low, 600), ("b", low + 8, 300)):
        traces.append(write_trace(tmp_path / name, arrays["header"], arrays["token_ids"][:n], arrays["seq_ids"][:n],
                                  arrays["positions"][:n], [ids[:n]], [arrays["topk_weights"][0][:n]]))
    mixed = mixed_fit_ids(make_workloads(traces, [(0, 600), (0, 300)]), traces[0].layers[0])
    from_b = (mixed[:, 0] >= 8).astype(int)
    assert from_b.sum() == 300
    for start in range(0, 900, 90):  # every stretch of 90 holds a third of run B, give or take one
        assert abs(from_b[start:start + 90].sum() - 30) <= 1


def test_explicit_weights_set_each_runs_share_of_the_mix(runs):
    workloads = make_workloads(runs, [(0, 1024), (0, 1024)], weights=[0.3, 0.7])
    mixed = mixed_fit_ids(workloads, runs[0].layers[0], seed=3)
    # the prose run (1024 tokens at 0.7) limits the mix: 1024 / 0.7 tokens in all, 30% of them code
    assert mixed.shape[0] == round(0.3 * 1024 / 0.7) + 1024
    with pytest.raises(InputError, match="2 runs"):
        make_workloads(runs, [(0, 1024), (0, 1024)], weights=[1.0])
    with pytest.raises(InputError, match="positive"):
        make_workloads(runs, [(0, 1024), (0, 1024)], weights=[1.0, float("nan")])


def test_one_workload_is_place_itself(runs):
    code = runs[0]
    cost = cost_for(code)
    settings = PlaceSettings(method="greedy")
    alone = place_workloads(make_workloads([code], [(0, 1024)]), cost, settings, progress=False)
    direct = place(code, cost, settings, fit=(0, 1024), progress=False)
    assert all(np.array_equal(alone.gpu_experts[l], direct.gpu_experts[l]) for l in code.layers)
    assert alone.meta["trace"] == direct.meta["trace"]


def test_a_plan_fitted_on_two_runs_names_both_and_holds_out_each_ones_rest(runs, tmp_path):
    code, prose = runs
    plan = place_workloads(make_workloads(runs, [(0, 1024), (0, 512)], [0.5, 0.5]), cost_for(code),
                           PlaceSettings(method="greedy"), progress=False)
    saved = Plan.load(plan.save(tmp_path / "both.json"))
    assert [o["weight"] for o in saved.meta["traces"]] == [0.5, 0.5]
    assert set(saved.meta["metrics"]["runs"]) == {str(code.path), str(prose.path)}
    for trace, fit_end in ((code, 1024), (prose, 512)):
        index, note = eval_token_index(trace, saved)
        assert index.tolist() == list(range(fit_end, trace.num_tokens)) and "held-out" in note
    bad = {**saved.to_json(), "traces": [{**saved.meta["traces"][0], "weight": -1}]}
    with pytest.raises(PlanError, match=r"traces\[0\] weight"):
        Plan.from_json(bad)


def test_two_workers_fit_one_plan_on_two_runs_exactly_as_one_process(runs):
    code, prose = runs
    cost = cost_for(code)
    workloads = make_workloads(runs, [(0, 1024), (0, 512)], [0.5, 0.5])
    serial = place_workloads(workloads, cost, PlaceSettings(method="greedy"), progress=False, workers=1)
    pooled = place_workloads(workloads, cost, PlaceSettings(method="greedy"), progress=False, workers=2)
    assert all(np.array_equal(serial.gpu_experts[l], pooled.gpu_experts[l]) for l in code.layers)
    assert pooled.meta["metrics"]["runs"] == serial.meta["metrics"]["runs"]


def test_the_matrix_scores_each_plan_as_plan_eval_would_and_its_baselines_on_the_same_tokens(runs):
    code, prose = runs
    cost = cost_for(code)
    on_code = place(code, cost, PlaceSettings(method="greedy"), fit=(0, 1024), progress=False)
    on_prose = place(prose, cost, PlaceSettings(method="greedy"), fit=(0, 512), progress=False)
    matrix = plan_matrix({"code": on_code, "prose": on_prose}, runs, cost, ["contiguous", "eplb"], Trace.open,
                         progress=False)
    assert matrix["runs"] == [str(code.path), str(prose.path)]
    assert [(r["label"], r["kind"]) for r in matrix["rows"]] == [
        ("code", "plan"), ("contiguous (fit as code)", "baseline"), ("eplb (fit as code)", "baseline"),
        ("prose", "plan"), ("contiguous (fit as prose)", "baseline"), ("eplb (fit as prose)", "baseline")]
    rows = {r["label"]: r for r in matrix["rows"]}
    # every row of a column on the same tokens: those neither plan was fitted on
    assert matrix["scored_on"][str(code.path)] == "1,024 tokens no plan was fitted on"
    for trace, held in ((code, range(1024, 2048)), (prose, range(512, 1024))):
        for row in matrix["rows"]:
            assert row["results"][str(trace.path)]["eval_tokens"] == len(held)
        for label, plan in (("code", on_code), ("prose", on_prose)):
            expected = score_plan(plan, trace, np.asarray(held), cost)["mean"]
            assert rows[label]["results"][str(trace.path)]["mean"] == pytest.approx(expected)
    # a plan fitted on a run does better there than the plan fitted on the other run (routing differs)
    for label, other, trace in (("code", "prose", code), ("prose", "code", prose)):
        assert rows[label]["results"][str(trace.path)]["mean"]["compute_imbalance"] < \
            rows[other]["results"][str(trace.path)]["mean"]["compute_imbalance"]


def test_place_on_two_runs_then_plan_eval_the_matrix(runs, tmp_path, capsys):
    code, prose = runs
    both = tmp_path / "both.json"
    assert main(["place", str(code.path), str(prose.path), "--run-weights", "0.7,0.3", "--gpus", "4", "--method",
                 "greedy", "--out", str(both), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "(weight 0.70)" in text and "(weight 0.30)" in text
    assert f"next    routelens plan-eval {both} {code.path} {prose.path}" in text
    assert [o["weight"] for o in Plan.load(both).meta["traces"]] == pytest.approx([0.7, 0.3])
    alone = tmp_path / "code.json"
    assert main(["place", str(code.path), "--gpus", "4", "--method", "eplb", "--out", str(alone), "--no-progress"]) == 0
    capsys.readouterr()
    report = tmp_path / "matrix.json"
    assert main(["plan-eval", str(both), str(alone), str(code.path), str(prose.path), "--baselines", "greedy",
                 "--json", str(report), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "both.json (greedy)" in text and "greedy (fit as code.json (eplb))" in text and "layer µs" in text
    written = json.loads(report.read_text())
    assert len(written["rows"]) == 4 and set(written["plans"]) == {"both.json (greedy)", "code.json (eplb)"}
    both_row = next(r for r in written["rows"] if r["label"] == "both.json (greedy)")
    assert "mixed as the plan's" in both_row["fit"]
    # the old form still works: one run, one plan
    assert main(["plan-eval", str(code.path), str(alone), "--baselines", "greedy", "--no-progress"]) == 0
    assert "held-out tokens" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--run-weights", "0.7"], "gives 1 weight(s) for 2 runs"),
    (["--run-weights", "0.7,-1"], "must be a positive number"),
])
def test_place_on_several_runs_refuses_bad_weights_in_one_line(runs, tmp_path, capsys, argv, message):
    try:
        code = main(["place", str(runs[0].path), str(runs[1].path), "--gpus", "4", "--method", "greedy",
                     "--out", str(tmp_path / "p.json"), "--no-progress", *argv])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "p.json").exists()


def test_plan_eval_needs_a_run_and_a_plan(runs, tmp_path, capsys):
    plan = place(runs[0], cost_for(runs[0]), PlaceSettings(method="greedy"), fit=(0, 1024), progress=False)
    path = plan.save(tmp_path / "p.json")
    assert main(["plan-eval", str(path), str(path)]) == 2
    assert "give at least one run" in capsys.readouterr().err
