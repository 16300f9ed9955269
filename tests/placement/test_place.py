"""place / fit_baselines / compare_plans: one job per layer, the same plan on any number of processes."""

from __future__ import annotations

import numpy as np
import pytest

from routelens.placement.cost import CostModel, score_table
from routelens.placement.evaluate import compare_plans, eval_token_index, read_rows, score_plan, token_selection
from routelens.placement.hypergraph import mtkahypar_available
from routelens.placement.place import PlaceSettings, fit_baselines, fit_token_range, place
from routelens.placement.topology import make_topology


@pytest.fixture
def cost(synthetic_trace):
    return CostModel.for_model(synthetic_trace.config, make_topology(num_gpus=4))


def test_two_workers_place_exactly_the_plan_one_process_places(synthetic_trace, cost):
    fit = fit_token_range(synthetic_trace, 0.5)
    settings = PlaceSettings(seed=3, kicks=2)  # default seeds: Mt-KaHyPar first when it is installed
    serial = place(synthetic_trace, cost, settings, fit=fit, progress=False, workers=1)
    pooled = place(synthetic_trace, cost, settings, fit=fit, progress=False, workers=2)
    assert pooled.layers == serial.layers == synthetic_trace.layers
    for layer in serial.layers:
        assert np.array_equal(pooled.gpu_experts[layer], serial.gpu_experts[layer]), layer
    assert pooled.meta["metrics"] == serial.meta["metrics"]
    assert pooled.meta["optimizer"]["seeds"][0] == ("kahypar" if mtkahypar_available() else "coact")
    held = eval_token_index(synthetic_trace, serial)[0]
    assert held[0] == fit[1] and held.size == synthetic_trace.num_tokens - fit[1]


def test_a_time_budget_holds_across_workers(synthetic_trace, cost):
    settings = PlaceSettings(time_budget_s=1e-4, kicks=4, seeds=("coact", "lpt"))
    plan = place(synthetic_trace, cost, settings, progress=False, workers=2)
    layers = plan.meta["optimizer"]["layers"]
    assert set(layers) == set(synthetic_trace.layers)
    assert not any(info["converged"] for info in layers.values())  # every layer stopped at its deadline
    free = place(synthetic_trace, cost, PlaceSettings(kicks=4, seeds=("coact", "lpt")), progress=False)
    assert all(info["converged"] for info in free.meta["optimizer"]["layers"].values())


def test_baselines_fitted_together_equal_each_placed_alone_and_score_the_same_on_any_worker_count(synthetic_trace,
                                                                                                  cost):
    methods = ["contiguous", "random", "greedy", "eplb"] + (["kahypar", "kahypar-load"] if mtkahypar_available() else [])
    fit = fit_token_range(synthetic_trace, 0.5)
    settings = PlaceSettings(seed=5)
    together = fit_baselines(synthetic_trace, cost, methods, settings, fit=fit, workers=2)
    assert list(together) == methods
    for method in methods:
        alone = place(synthetic_trace, cost, PlaceSettings(method=method, seed=5), fit=fit, progress=False)
        for layer in alone.layers:
            assert np.array_equal(together[method].gpu_experts[layer], alone.gpu_experts[layer]), (method, layer)
        assert together[method].meta["trace"]["fit_tokens"] == list(fit)
    held = np.arange(fit[1], synthetic_trace.num_tokens)
    pooled = compare_plans(together, synthetic_trace, held, cost, progress=False, workers=2)
    serial = compare_plans(together, synthetic_trace, held, cost, progress=False, workers=1)
    assert pooled == serial
    for method in methods:
        assert serial[method] == score_plan(together[method], synthetic_trace, held, cost)
    ids = synthetic_trace.topk_ids(0)[held].astype(np.int64)
    assert serial["greedy"]["layers"][synthetic_trace.layers[0]] == score_table(
        ids, together["greedy"].gpu_experts[synthetic_trace.layers[0]], cost)


def test_token_selections_read_the_rows_they_name_across_shards(synthetic_trace):
    trace = synthetic_trace  # shards of 1000 tokens
    index = np.r_[np.arange(0, 1500), np.arange(2999, 3001)]
    selection = token_selection(index)
    assert selection == [(0, 1500), (2999, 3001)]
    assert np.array_equal(read_rows(trace, trace.layers[1], selection), trace.topk_ids(1)[index])
    scattered = np.arange(0, 4096, 7)  # many runs: read whole, then indexed
    assert isinstance(token_selection(scattered), np.ndarray)
    assert np.array_equal(read_rows(trace, trace.layers[1], token_selection(scattered)), trace.topk_ids(1)[scattered])


def test_a_counts_only_run_is_placed_per_layer_from_its_counts_on_any_worker_count(synthetic_trace, tmp_path, cost):
    from routelens.errors import TraceError
    from routelens.placement.methods import LayerFit, get_method
    from routelens.placement.place import load_metrics
    from routelens.trace import write_counts_run

    header = {key: synthetic_trace.manifest[key] for key in ("model", "layers", "num_experts", "top_k")}
    counts = np.random.default_rng(7).integers(0, 400, (5, len(synthetic_trace.layers), 16))
    run = write_counts_run(tmp_path / "counts", {**header, "source": {"engine": "sglang", "mode": "stat"}}, counts)
    settings = PlaceSettings(method="eplb", redundant=4)
    serial = place(run, cost, settings, progress=False, workers=1)
    pooled = place(run, cost, settings, progress=False, workers=2)  # each worker opens the run by its path
    assert serial.meta["metrics"]["on"] == "recorded expert counts"
    for j, layer in enumerate(run.layers):
        load = counts[:, j].sum(axis=0)
        alone, _ = get_method("eplb").build(LayerFit(16, load=load), cost, settings, None)
        assert np.array_equal(serial.gpu_experts[layer], alone) and np.array_equal(pooled.gpu_experts[layer], alone)
        assert serial.meta["metrics"]["layers"][layer] == load_metrics(alone, load)
    together = fit_baselines(run, cost, ["contiguous", "greedy", "eplb"], settings, workers=2)
    assert all(np.array_equal(together["eplb"].gpu_experts[layer], serial.gpu_experts[layer]) for layer in run.layers)
    with pytest.raises(TraceError, match="expert counts only"):  # co-activation methods: refused before any job
        place(run, cost, PlaceSettings(), progress=False, workers=2)
    with pytest.raises(TraceError, match="expert counts only"):
        fit_baselines(run, cost, ["greedy", "random", "kahypar"], settings)
