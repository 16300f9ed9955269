"""``routelens place`` and ``routelens plan-eval`` end to end on a synthetic trace, and their one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from routelens.cli import main
from routelens.plan import Plan


def test_place_then_plan_eval(synthetic_trace, tmp_path, capsys):
    out = tmp_path / "plans" / "p.json"
    assert main(["place", str(synthetic_trace.path), "--gpus", "4", "--out", str(out), "--no-progress"]) == 0
    plan = Plan.load(out)
    assert plan.method == "routelens" and plan.num_gpus == 4 and plan.num_experts == 16
    assert plan.meta["trace"]["fit_tokens"][0] == 0 and 0 < plan.meta["trace"]["fit_tokens"][1] < 4096
    assert plan.meta["metrics"]["mean"]["busiest_gpu_recv"] > 0
    capsys.readouterr()
    report = tmp_path / "eval.json"
    assert main(["plan-eval", str(synthetic_trace.path), str(out), "--baselines", "contiguous,greedy,eplb",
                 "--json", str(report), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "held-out tokens" in text and "plan (routelens)" in text and "contiguous" in text
    written = json.loads(report.read_text())
    results = written["results"]
    assert set(results) == {"contiguous", "greedy", "eplb", "plan (routelens)"}
    # traffic and the layer, each against the baseline best on it, in the text and the JSON
    versus = written["vs_best_baseline"]
    assert set(versus) == {"busiest_gpu_recv", "a2a_us", "layer_us"}
    for key, title in (("busiest_gpu_recv", "busiest-GPU receive"), ("a2a_us", "est. All-to-All"),
                       ("layer_us", "est. layer time")):
        row = versus[key]
        assert row["best"] == min(results[n]["mean"][key] for n in ("contiguous", "greedy", "eplb"))
        assert row["plan"] == results["plan (routelens)"]["mean"][key]
        line = next(line for line in text.splitlines() if line.startswith(title))
        assert f"vs best baseline {row['best_baseline']}" in line
    # the synthetic trace has planted co-activation groups: the plan sends fewer copies than contiguous
    assert results["plan (routelens)"]["mean"]["gpus_per_token"] < results["contiguous"]["mean"]["gpus_per_token"]


def test_place_prints_both_times_and_compares_every_baseline_when_asked(synthetic_trace, tmp_path, capsys):
    from routelens.placement.methods import baseline_names

    out = tmp_path / "p.json"
    assert main(["place", str(synthetic_trace.path), "--gpus", "4", "--out", str(out), "--no-progress",
                 "--kicks", "1"]) == 0
    text = capsys.readouterr().out
    assert "All-to-All +" in text and "µs per layer" in text and "vs best baseline" not in text
    assert main(["place", str(synthetic_trace.path), "--gpus", "4", "--out", str(out), "--no-progress",
                 "--kicks", "1", "--compare"]) == 0
    text = capsys.readouterr().out
    table = text[text.index("every method fitted"):]
    for name in baseline_names(available_only=True):  # the Mt-KaHyPar ones too, when installed
        assert any(line.startswith(name + " ") for line in table.splitlines()), name
    assert "est. layer time" in table and "est. All-to-All" in table


def test_plan_eval_on_another_trace_fits_baselines_on_the_plans_own_tokens(synthetic_trace, tmp_path, capsys):
    """A plan fitted on trace A and scored on trace B: the baselines fit on A too (same tokens as the plan), not
    in-sample on B; once A is gone the fallback is in-sample on B, and the output says which."""
    import shutil

    from routelens.synthetic import synthetic_trace_arrays
    from routelens.trace import write_trace

    arrays = synthetic_trace_arrays(num_tokens=4096, num_layers=4, num_experts=16, top_k=2, seed=7)
    other = write_trace(tmp_path / "other", arrays["header"], arrays["token_ids"], arrays["seq_ids"],
                        arrays["positions"], arrays["topk_ids"], arrays["topk_weights"])
    plan_path = tmp_path / "p.json"
    assert main(["place", str(synthetic_trace.path), "--gpus", "4", "--fit-fraction", "1", "--out", str(plan_path),
                 "--no-progress"]) == 0
    capsys.readouterr()

    def evaluate(report):
        assert main(["plan-eval", str(other.path), str(plan_path), "--baselines", "contiguous,greedy",
                     "--json", str(report), "--no-progress"]) == 0
        return capsys.readouterr().out, json.loads(report.read_text())["results"]

    text, fair = evaluate(tmp_path / "fair.json")
    assert "scored  all tokens" in text and f"plan's own fit tokens [0, 4096) of {synthetic_trace.path}" in text
    shutil.rmtree(synthetic_trace.path)
    text, in_sample = evaluate(tmp_path / "in_sample.json")
    assert "in-sample for them" in text
    # greedy packs by load: fitted on A's loads it differs from greedy fitted on B's own (scored) loads
    assert fair["greedy"]["mean"] != in_sample["greedy"]["mean"]
    assert fair["plan (routelens)"]["mean"] == in_sample["plan (routelens)"]["mean"]


def test_place_writes_sglang_and_vllm_ascend_files_and_refuses_vllm(synthetic_trace, tmp_path, capsys):
    out = tmp_path / "loc.pt"
    assert main(["place", str(synthetic_trace.path), "--nodes", "2", "--gpus-per-node", "2", "--redundant", "4",
                 "--format", "sglang", "--method", "eplb", "--out", str(out), "--no-progress"]) == 0
    assert "--ep-num-redundant-experts 4" in capsys.readouterr().out
    mapping = torch.load(out, weights_only=True)["physical_to_logical_map"]
    assert tuple(mapping.shape) == (4, 20)  # 4 decoder layers, 16 experts + 4 redundant
    plan = Plan.load(tmp_path / "loc.plan.json")
    assert plan.num_nodes == 2 and plan.num_redundant == 4
    assert np.array_equal(mapping[0].numpy(), plan.physical_to_logical(plan.layers[0]))
    ascend = tmp_path / "map.json"
    assert main(["place", str(synthetic_trace.path), "--gpus", "4", "--format", "vllm-ascend", "--method", "greedy",
                 "--out", str(ascend), "--no-progress"]) == 0
    written = json.loads(ascend.read_text())
    assert written["moe_layer_count"] == 4 and len(written["layer_list"][0]["device_list"]) == 4
    assert main(["place", str(synthetic_trace.path), "--gpus", "4", "--format", "vllm", "--method", "greedy",
                 "--out", str(tmp_path / "eplb.pt"), "--no-progress"]) == 2
    assert "loads no placement file" in capsys.readouterr().err and not (tmp_path / "eplb.pt").exists()


@pytest.mark.parametrize("argv, message", [
    (["--gpus", "3"], "cannot fill 3 GPUs evenly"),
    (["--gpus", "4", "--method", "magic"], "unknown placement method 'magic'"),
    (["--gpus", "4", "--fit-fraction", "1.5"], "--fit-fraction must be in"),
    (["--gpus", "4", "--format", "sglang"], "writes a .pt or .json file"),
    (["--nodes", "2"], "give the cluster size"),
    (["--gpus", "4", "--nodes", "3"], "cannot be split evenly over 3 nodes"),
    (["--gpus", "4", "--kicks", "-1"], "--kicks must be 0 or more"),
])
def test_place_errors_are_one_line(synthetic_trace, tmp_path, capsys, argv, message):
    out = tmp_path / "p.txt"
    out.write_text("earlier result")
    assert main(["place", str(synthetic_trace.path), "--out", str(out), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("routelens: error:") and message in err and "\n" not in err
    assert out.read_text() == "earlier result"


def test_plan_eval_refuses_a_plan_for_another_model(synthetic_trace, tmp_path, capsys):
    plan = Plan({"model.layers.0.mlp.gate": np.arange(8).reshape(4, 2)}, num_experts=8)
    plan.save(tmp_path / "other.json")
    assert main(["plan-eval", str(synthetic_trace.path), str(tmp_path / "other.json")]) == 2
    assert "plan is for 8 experts per layer, the trace has 16" in capsys.readouterr().err
    assert main(["plan-eval", str(tmp_path / "nothing"), str(tmp_path / "other.json")]) == 2
    assert "no trace folder" in capsys.readouterr().err


def test_schedule_eval_writes_a_schedule_file_into_the_run_and_prints_the_best_period(synthetic_trace, capsys):
    from routelens.formats import SCHEDULE

    assert main(["schedule-eval", str(synthetic_trace.path), "--gpus", "4", "--method", "greedy,eplb",
                 "--every", "512,1024", "--fit-tokens", "1024", "--batch-tokens", "512", "--no-progress"]) == 0
    text = capsys.readouterr().out
    written = SCHEDULE.path_in(synthetic_trace.path, {"label": "g4-r0"})
    result = SCHEDULE.read(written)
    assert [(s["method"], s["every_tokens"]) for s in result["schedules"]] == [
        ("greedy", None), ("greedy", 512), ("greedy", 1024), ("eplb", None), ("eplb", 512), ("eplb", 1024)]
    assert result["scored_tokens"] == [1024, 4096] and result["num_gpus"] == 4
    for method, best in result["best"].items():
        every = "never re-place (static)" if best["every_tokens"] is None else f"every {best['every_tokens']:,} tokens"
        assert f"best    {method}: {every}" in text
    assert f"wrote   {written}" in text
    assert main(["schedule-eval", str(synthetic_trace.path), "--gpus", "4", "--method", "greedy", "--every", "512",
                 "--fit-tokens", "1024", "--batch-tokens", "512", "--json", "-", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "routelens-schedule"


@pytest.mark.parametrize("argv, message", [
    (["--gpus", "4", "--every", "1000"], "not a whole number of forward passes"),
    (["--gpus", "4", "--method", "magic"], "unknown placement method 'magic'"),
    (["--gpus", "3"], "cannot fill 3 GPUs evenly"),
    (["--gpus", "4", "--fit-tokens", "8192"], "need --fit-tokens 8,192"),
    (["--gpus", "4", "--phase", "decode"], "records no phases"),
    (["--gpus", "4", "--every", "0"], "must be >= 1"),
    (["--gpus", "4", "--every", "a,b"], "is not a whole number"),
    (["--nodes", "2"], "give the cluster size"),
])
def test_schedule_eval_errors_are_one_line_and_leave_the_earlier_file(synthetic_trace, tmp_path, capsys, argv, message):
    out = tmp_path / "schedule.json"
    out.write_text("earlier result")
    code = None
    try:
        code = main(["schedule-eval", str(synthetic_trace.path), "--out", str(out), "--fit-tokens", "1024",
                     "--batch-tokens", "512", "--every", "512", "--no-progress", *argv])
    except SystemExit as exc:  # argparse's own errors (bad numbers)
        code = exc.code
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # argparse prints its usage above its one line
    assert last.startswith(("routelens: error:", "routelens schedule-eval: error:")) and message in last
    assert out.read_text() == "earlier result"
