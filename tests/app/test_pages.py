"""Every dashboard page on the demo run, through Streamlit's AppTest (no browser, no server).

Each test checks what a page shows against the library result it draws (the analysis, the
re-routing rows, the bench report), so a page that shows the wrong layer or the wrong numbers fails.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest

APP_MAIN = Path(__file__).resolve().parents[2] / "app" / "main.py"

PAGES = {
    "views/overview.py": "Overview",
    "views/layers.py": "Layer explorer",
    "views/expert.py": "Expert",
    "views/flow.py": "Cross-layer flow",
    "views/reroute.py": "Re-routing",
    "views/placement.py": "Placement",
    "views/schedule.py": "Placement over time",
    "views/compare.py": "Runs compared",
    "views/runner.py": "Runner results",
}


def _titles(at) -> list[str]:
    return [t.value for t in at.title]


def _charts(at) -> list[dict]:
    """The plotly figures a page drew, as JSON specs (typed arrays decoded to lists)."""
    return [_decode(json.loads(chart.proto.spec)) for chart in at.get("plotly_chart")]


def _decode(node):
    """Plotly ships numpy arrays as ``{"dtype", "bdata"(base64), "shape"}``; turn them back into lists."""
    if isinstance(node, dict):
        if "bdata" in node and "dtype" in node:
            array = np.frombuffer(base64.b64decode(node["bdata"]), dtype=np.dtype(node["dtype"]))
            if node.get("shape"):
                array = array.reshape([int(n) for n in str(node["shape"]).split(",")])
            return array.tolist()
        return {key: _decode(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_decode(value) for value in node]
    return node


def _metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _open(app, page: str):
    at = app.run()
    if page != "views/overview.py":
        at.switch_page(page).run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    assert _titles(at) == [PAGES[page]]
    return at


@pytest.fixture(scope="module")
def demo_analysis(runs_dir):
    from routelens.graphs import load_analysis

    return load_analysis(runs_dir / "demo")


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_renders_on_the_demo_run_without_an_exception(app, page):
    at = _open(app, page)
    assert not at.error, [e.value for e in at.error]


def test_overview_shows_the_capture_and_per_layer_load_from_the_analysis(app, runs_dir, demo_analysis):
    at = _open(app, "views/overview.py")
    assert at.selectbox(key="run").value == "demo"  # the first readable run, not "broken"
    metrics = _metrics(at)
    assert (metrics["MoE layers"], metrics["Experts / layer"], metrics["Top-k"]) == ("4", "64", "8")
    assert metrics["Tokens"] == "2,048"
    assert metrics["Capture speed"].endswith("tok/s")
    imbalance, specialized, heatmap = _charts(at)
    expected = [s["load_max_over_mean"] for s in demo_analysis.layer_summaries]
    assert np.allclose(imbalance["data"][0]["y"], expected)
    assert np.allclose(specialized["data"][0]["y"], [100 * s["share_specialized"] for s in demo_analysis.layer_summaries])
    assert np.asarray(heatmap["data"][0]["customdata"]).shape == (4, 64)


def test_layer_explorer_follows_the_layer_slider_and_matrix_choice(app, demo_analysis):
    at = _open(app, "views/layers.py")
    at.select_slider(key="layer").set_value(2).run()
    assert not at.exception
    assert _metrics(at)["Load max/mean"] == f"{demo_analysis.summary(2)['load_max_over_mean']:.2f}"
    load_bars, heatmap, network, scatter = _charts(at)
    assert load_bars["data"][0]["y"] == demo_analysis.load(2).tolist()
    assert heatmap["data"][0]["colorbar"]["title"]["text"] == "log2 lift"
    assert len(network["data"][1]["x"]) == 64  # one node per expert
    drawn = [trace for trace in scatter["data"] if trace.get("showlegend") is False]  # legend-only traces aside
    assert sum(len(trace["x"]) for trace in drawn) == int((demo_analysis.load(2) > 0).sum())
    at.button_group(key="matrix_kind").set_value("counts").run()
    heatmap = _charts(at)[1]
    assert heatmap["data"][0]["colorbar"]["title"]["text"] == "tokens"
    # reordered by community, the diagonal blanked: every off-diagonal count is a real co-activation count
    z = np.asarray(heatmap["data"][0]["z"], dtype=float)
    counts = demo_analysis.counts(2).astype(float)
    order = [int(x) for x in heatmap["data"][0]["x"]]
    np.fill_diagonal(counts, np.nan)
    assert np.allclose(z, counts[np.ix_(order, order)], equal_nan=True)


def test_expert_page_shows_the_chosen_experts_partners_and_tokens(app, demo_analysis):
    at = _open(app, "views/expert.py")
    at.select_slider(key="layer").set_value(1).run()
    at.number_input(key="expert").set_value(5).run()
    assert not at.exception
    assert _metrics(at)["Tokens"] == f"{int(demo_analysis.load(1)[5]):,}"
    partners = _charts(at)[0]
    conditional = demo_analysis.conditional(1)[5]
    best = int(np.argsort(-np.where(np.arange(64) == 5, -1, conditional))[0])
    assert partners["data"][0]["y"][0] == f"expert {best}"
    assert at.dataframe, "the top-tokens table is missing (the demo model has a tokenizer)"


def test_cross_layer_flow_draws_a_sankey_by_community_and_by_expert(app, demo_analysis):
    at = _open(app, "views/flow.py")
    sankey = _charts(at)[0]["data"][0]
    assert sankey["type"] == "sankey"
    assert len(sankey["node"]["label"]) == sum(len(demo_analysis.communities(j)) for j in demo_analysis.layers[:4])
    at.button_group(key="flow_by").set_value("expert").run()
    sankey = _charts(at)[0]["data"][0]
    assert len(sankey["link"]["value"]) == 40 * 3  # the 40 strongest links of each of the 3 layer pairs


def test_rerouting_page_plots_every_setting_and_names_the_best_within_one_percent(app, runs_dir):
    from routelens.reroute.evaluate import best_within

    rows = json.loads((runs_dir / "demo" / "reroute" / "tradeoff.json").read_text())["rows"]
    at = _open(app, "views/reroute.py")
    (curves,) = _charts(at)
    plotted = sum(len(trace["x"]) for trace in curves["data"])
    assert plotted == len(rows)
    # a curve follows one knob: renorm and keep weights (swept both ways by default) are separate curves
    by_label = {row["label"]: row for row in rows}
    lines = [trace for trace in curves["data"] if trace["name"] != "unmodified model"]
    assert {row["weights"] for row in rows if row["policy"] != "none"} == {"renorm", "keep"}
    for trace in lines:
        members = [by_label[label] for label in trace["customdata"]]
        assert len({(r["policy"], r["weights"], r.get("fill")) for r in members}) == 1, trace["name"]
    # the table lists every row, with the paired interval of each policy's perplexity change
    (table,) = at.dataframe
    frame = table.value
    assert len(frame) == len(rows)
    low, high = rows[1]["perplexity_change_ci95"]
    assert frame["Δ perplexity 95% CI"].iloc[1] == f"{100 * low:+.2f} … {100 * high:+.2f}"
    assert frame["Δ perplexity 95% CI"].iloc[0] == ""
    best = best_within(rows, 0.01)
    message = " ".join(s.value for s in at.success) + " ".join(w.value for w in at.warning)
    assert (best["label"] in message) if best else ("No setting stays within 1%" in message)


def test_runner_page_shows_measured_against_predicted_for_every_plan(app, runs_dir):
    report_path = next((runs_dir / "demo" / "bench").glob("bench-*.json"))
    report = json.loads(report_path.read_text())
    at = _open(app, "views/runner.py")
    times, per_rank = _charts(at)
    assert len(times["data"][0]["x"]) == len(report["plans"])
    assert times["data"][1]["y"] == pytest.approx([p["ratio_vs_baseline"]["predicted_all_to_all"] for p in report["plans"]])
    assert any("exactly the bytes" in s.value for s in at.success)


def test_placement_page_compares_the_plan_with_baselines_and_offers_every_export(app, runs_dir):
    from routelens.plan import Plan

    at = _open(app, "views/placement.py")
    assert at.selectbox(key="plan_file").value.endswith("routelens-g2.json")
    plan = Plan.load(at.selectbox(key="plan_file").value)
    grid, ratios = _charts(at)
    assert np.asarray(grid["data"][0]["customdata"])[..., 0].tolist() == plan.gpu_experts[plan.layers[0]].tolist()
    from routelens.placement.hypergraph import mtkahypar_available

    strongest = {"kahypar", "kahypar-load"} if mtkahypar_available() else set()
    assert {trace["name"] for trace in ratios["data"]} == {"random", "greedy", "eplb", "this plan (routelens)"} | strongest
    # traffic and the layer, each against the best baseline on it
    labels = {m.label for m in at.metric}
    assert {"est. All-to-All (µs/layer)", "est. layer time (µs/layer)", "busiest-GPU receive (T/G)"} <= labels
    assert all(" vs " in m.proto.delta for m in at.metric if m.label.startswith(("est.", "busiest")))
    downloads = {button.proto.label for button in at.get("download_button")}
    assert len(downloads) == 3 and any("SGLang" in d for d in downloads) and any("vllm-ascend" in d for d in downloads)


def test_placement_what_if_places_the_experts_on_another_cluster(app):
    at = _open(app, "views/placement.py")
    next(n for n in at.number_input if n.label == "GPUs").set_value(4)
    next(s for s in at.selectbox if s.label == "Method").set_value("greedy")
    at.form_submit_button[0].click().run()
    assert not at.exception, at.exception
    charts = _charts(at)
    assert len(charts[-1]["data"][0]["y"]) == 4  # the what-if grid, last: one row per GPU
    assert any(trace.get("name") == "what-if (greedy)" for chart in charts for trace in chart["data"])
    assert len(at.get("download_button")) == 6  # the plan file's three exports and the what-if plan's three


def test_schedule_page_draws_each_methods_windows_and_the_best_schedules_from_the_file(app, runs_dir):
    from routelens.formats import SCHEDULE

    report = SCHEDULE.read(next((runs_dir / "demo" / "schedules").glob("schedule-*.json")))
    at = _open(app, "views/schedule.py")
    best = at.dataframe[0].value
    assert set(best["method"]) == {"greedy", "eplb"}
    for method, choice in report["best"].items():
        row = best[best["method"] == method].iloc[0]
        assert row["layer µs with moves"] == pytest.approx(choice["layer_us_with_moves"], abs=1e-3)
    for method in ("greedy", "eplb"):
        at.button_group(key="schedule_method").set_value(method).run()
        assert not at.exception
        layer, recv, moves = _charts(at)
        entries = [s for s in report["schedules"] if s["method"] == method]
        assert [t["name"] for t in layer["data"]] == ["static plan", "every 256 tokens", "every 512 tokens"]
        for trace, entry in zip(layer["data"], entries):
            windows = entry["windows"]
            assert trace["y"][:-1] == pytest.approx([w["layer_us_with_moves"] for w in windows])
            assert trace["x"] == [w["start"] for w in windows] + [windows[-1]["end"]]
        assert recv["data"][1]["y"][:-1] == pytest.approx([w["busiest_gpu_recv"] for w in entries[1]["windows"]])
        moved = [w for w in entries[1]["windows"] if w["move"]["copies"]]
        assert moves["data"][0]["y"] == pytest.approx([w["move"]["bytes"] / 1e9 for w in moved])
    assert len(at.dataframe[1].value) == len(report["schedules"])


def test_placement_page_scores_every_plan_on_every_run_of_the_model(app, runs_dir):
    from routelens.placement import CostModel, baseline_names
    from routelens.placement.workloads import plan_matrix
    from routelens.plan import Plan
    from routelens.placement.topology import Topology
    from routelens.trace import Trace

    at = _open(app, "views/placement.py")
    runs = [str(runs_dir / "demo"), str(runs_dir / "demo-c2r")]
    plan_path = at.selectbox(key="plan_file").value
    at.multiselect(key="matrix_plans").set_value([plan_path])
    at.multiselect(key="matrix_runs").set_value(runs)
    next(b for b in at.form_submit_button if b.label == "Score").click().run()
    assert not at.exception, at.exception
    layer, recv = _charts(at)[-2:]
    plan = Plan.load(plan_path)
    cost = CostModel(Topology.from_json(plan.meta["topology"]), plan.meta["cost_model"]["token_bytes"],
                     plan.meta["cost_model"]["expert_flops_per_token"])
    traces = [Trace.open(r) for r in runs]
    expected = plan_matrix({"p": plan}, traces, cost, baseline_names(core_only=True), Trace.open, progress=False)
    assert layer["data"][0]["x"] == ["demo", "demo-c2r"]
    assert len(layer["data"][0]["y"]) == 1 + len(baseline_names(core_only=True))
    assert recv["data"][0]["text"][0] == [f"{expected['rows'][0]['results'][r]['mean']['busiest_gpu_recv']:.3f}"
                                          for r in runs]


def test_runs_compared_lists_every_run_and_compares_demo_with_its_rerouted_trace(app):
    at = _open(app, "views/compare.py")
    runs = at.dataframe[0].value
    assert sorted(runs["run"]) == ["broken", "demo", "demo-c2r"]
    assert at.selectbox(key="compare_with").value == "demo-c2r"
    distances, nmi = _charts(at)
    assert all(0 <= v <= 1 for v in distances["data"][0]["y"])


def test_half_written_run_shows_a_clear_message_not_a_traceback(app):
    at = app.run()
    at.selectbox(key="run").set_value("broken").run()
    assert not at.exception
    assert any("cannot be read" in e.value and "not valid JSON" in e.value for e in at.error), [e.value for e in at.error]


def test_pages_without_their_data_say_which_command_makes_it(tmp_path, monkeypatch):
    """A run with only a trace: every page that needs more names the command, none fails."""
    from streamlit.testing.v1 import AppTest

    from routelens.synthetic import synthetic_trace_arrays
    from routelens.trace import write_trace

    arrays = synthetic_trace_arrays(num_tokens=512, num_layers=2, num_experts=8, top_k=2)
    write_trace(tmp_path / "bare", arrays["header"], arrays["token_ids"], arrays["seq_ids"], arrays["positions"],
                arrays["topk_ids"], arrays["topk_weights"])
    monkeypatch.setenv("ROUTELENS_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(str(APP_MAIN), default_timeout=60).run()
    assert not at.exception
    assert len(_charts(at)) >= 2, "the Overview draws load from the trace alone"
    commands = {"views/layers.py": "routelens analyze", "views/expert.py": "routelens analyze",
                "views/flow.py": "routelens analyze", "views/reroute.py": "routelens reroute-eval",
                "views/placement.py": "routelens place", "views/runner.py": "routelens bench",
                "views/schedule.py": "routelens schedule-eval",
                "views/compare.py": "routelens analyze"}
    for page, command in commands.items():
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        assert any(command in c.value for c in at.code), (page, [c.value for c in at.code])


def test_empty_runs_folder_says_which_command_makes_a_run(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ROUTELENS_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(str(APP_MAIN), default_timeout=60).run()
    assert not at.exception
    assert any("No runs found" in i.value for i in at.info)
    assert any("routelens capture --out" in c.value for c in at.code)
