"""Replica plans end to end, every placement method at 2-16 GPUs: place → plan-eval → exports → bench (gloo).

Each GPU count places the 32 experts of a small synthetic trace plus ``G`` redundant slots with every
method (the default method and Mt-KaHyPar used to end in an IndexError here), scores the plans on
the held-out tokens, round-trips them through the SGLang and vLLM files, and replays them all in
one gloo bench. 16 gloo ranks take about 45 s on a 2-core machine, so 16 GPUs are placed, scored
and exported but not replayed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from routelens.cli import main
from routelens.engines.plan_files import PlanTarget, load_plan_file
from routelens.placement.export import export_plan
from routelens.trace import Trace
from routelens.placement.hypergraph import mtkahypar_available
from routelens.placement.place import METHODS
from routelens.plan import Plan
from routelens.synthetic import synthetic_trace_arrays
from routelens.trace import write_trace

NUM_EXPERTS, TOP_K, NUM_TOKENS = 32, 4, 2048
GPU_COUNTS = (2, 4, 8, 16)
BENCH_GPU_COUNTS = (2, 4, 8)
PLACE_METHODS = [m for m in METHODS if mtkahypar_available() or not m.startswith("kahypar")]


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory):
    arrays = synthetic_trace_arrays(num_tokens=NUM_TOKENS, num_layers=2, num_experts=NUM_EXPERTS, top_k=TOP_K, seed=3)
    path = tmp_path_factory.mktemp("replicas") / "run"
    write_trace(path, arrays["header"], arrays["token_ids"], arrays["seq_ids"], arrays["positions"],
                arrays["topk_ids"], arrays["topk_weights"])
    return path


def _place(trace_path, out, num_gpus, method, *extra):
    fast = ["--kicks", "0"] if method == "routelens" else []
    return main(["place", str(trace_path), "--gpus", str(num_gpus), "--redundant", str(num_gpus), "--method", method,
                 "--out", str(out), "--no-progress", *fast, *map(str, extra)])


@pytest.mark.parametrize("num_gpus", GPU_COUNTS)
def test_every_method_places_scores_exports_and_replays_replicas(trace_path, tmp_path, capfd, num_gpus):
    plans = {}
    for method in PLACE_METHODS:
        out = tmp_path / f"{method}.json"
        assert _place(trace_path, out, num_gpus, method) == 0, capfd.readouterr().err
        plan = plans[method] = Plan.load(out)
        assert plan.method == method and plan.num_gpus == num_gpus and plan.num_redundant == num_gpus
        for layer in plan.layers:
            counts = plan.replica_counts(layer)
            assert counts.sum() == NUM_EXPERTS + num_gpus and counts.min() >= 1 and counts.max() <= num_gpus
    capfd.readouterr()

    # plan-eval: the replica plan against every baseline (each fitted with the same replicas), then each plan
    report = tmp_path / "eval.json"
    assert main(["plan-eval", str(trace_path), str(tmp_path / "routelens.json"), "--json", str(report),
                 "--no-progress"]) == 0, capfd.readouterr().err
    results = json.loads(report.read_text())["results"]
    assert set(results) == {*[m for m in PLACE_METHODS if m != "routelens"], "plan (routelens)"}
    assert all(np.isfinite(r["mean"]["busiest_gpu_recv"]) for r in results.values())
    for method in PLACE_METHODS:
        assert main(["plan-eval", str(trace_path), str(tmp_path / f"{method}.json"), "--baselines", "contiguous",
                     "--no-progress"]) == 0
    assert "plan (kahypar-load)" in capfd.readouterr().out or not mtkahypar_available()

    # exports: each engine's file reads back into the same tables (SGLang's map needs the EP size)
    target = PlanTarget.for_trace(Trace.open(trace_path), num_gpus=num_gpus)
    for method, plan in plans.items():
        export_plan(plan, tmp_path / f"{method}.sglang.pt", "sglang")
        export_plan(plan, tmp_path / f"{method}.vllm-ascend.json", "vllm-ascend")
        for back in (load_plan_file(tmp_path / f"{method}.sglang.pt", target),
                     load_plan_file(tmp_path / f"{method}.vllm-ascend.json", target)):
            assert all(np.array_equal(back.gpu_experts[l], plan.gpu_experts[l]) for l in plan.layers)
    assert _place(trace_path, tmp_path / "eplb.sglang.json", num_gpus, "eplb", "--format", "sglang") == 0
    assert f"--ep-num-redundant-experts {num_gpus}" in capfd.readouterr().out
    assert Plan.load(tmp_path / "eplb.sglang.plan.json").num_redundant == num_gpus

    if num_gpus not in BENCH_GPU_COUNTS:
        return
    # one gloo bench replays the contiguous layout and every method's replica plan
    bench = tmp_path / "bench.json"
    files = [str(tmp_path / f"{m}.json") for m in PLACE_METHODS]
    assert main(["bench", str(trace_path), "contiguous", *files, "--gpus", str(num_gpus), "--backend", "gloo",
                 "--hidden-size", "32", "--intermediate-size", "16", "--repeats", "1", "--warmup", "0",
                 "--json", str(bench)]) == 0, capfd.readouterr().err[-2000:]
    entries = {p["label"]: p for p in json.loads(bench.read_text())["plans"]}
    assert entries["contiguous"]["replicas"] == 0
    for path in files:
        assert entries[path]["bytes_match_prediction"] is True
        assert entries[path]["replicas"] == num_gpus * 2  # G extra copies in each of the 2 layers
    table = capfd.readouterr().out
    assert all(f"\n{m}.json " in table for m in PLACE_METHODS) and "…" not in table  # readable plan names
