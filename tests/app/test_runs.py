"""Run discovery and the chart helpers that order and colour experts (pure functions, no Streamlit)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

APP_DIR = Path(__file__).resolve().parents[2] / "app"


def _load(name: str):
    """Import an ``app/rlapp`` module the way the app does (``app/`` on sys.path)."""
    if str(APP_DIR) not in sys.path:
        sys.path.insert(0, str(APP_DIR))
    return importlib.import_module(f"rlapp.{name}")


def _manifest(folder: Path, num_tokens: int = 0, **fields) -> None:
    """A valid manifest (the picker judges it by the library's rules; the shard file need not exist)."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"format": "routelens-trace", "version": 1, "complete": True, "layers": ["model.layers.0.mlp.gate"],
                "num_experts": 4, "top_k": 1, "num_tokens": num_tokens, "model": {"id": ""},
                "shards": [{"file": "shards/r0-000000.safetensors", "num_tokens": num_tokens}], **fields}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_find_runs_lists_every_folder_with_a_manifest_and_skips_data_folders(tmp_path):
    runs = _load("runs")
    _manifest(tmp_path / "a", model={"id": "org/model-a"}, num_tokens=10)
    _manifest(tmp_path / "group" / "b", num_tokens=5, complete=False)
    _manifest(tmp_path / "a" / "shards" / "not-a-run")  # inside a run's data folder: not walked
    _manifest(tmp_path / ".hidden")
    (tmp_path / "empty").mkdir()
    found = runs.find_runs(tmp_path)
    assert [r.name for r in found] == ["a", "group/b"]
    assert found[0].model == "org/model-a" and found[0].num_tokens == 10 and found[0].complete
    assert found[0].detail == "model-a · 10 tokens"
    assert found[1].detail.endswith("incomplete")


def test_half_written_and_foreign_manifests_are_listed_with_their_problem(tmp_path):
    runs = _load("runs")
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "manifest.json").write_text('{"format": "routelens-tr')
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text('{"name": "a web app manifest"}')
    found = {r.name: r for r in runs.find_runs(tmp_path)}
    assert "not valid JSON" in found["cut"].problem
    assert "not a routelens trace manifest" in found["other"].problem


def test_runs_folder_that_is_itself_a_run_is_listed_as_dot(tmp_path):
    runs = _load("runs")
    _manifest(tmp_path)
    assert [r.name for r in runs.find_runs(tmp_path)] == ["."]
    assert runs.find_runs(tmp_path / "missing") == []


def test_runs_dir_comes_from_streamlit_argv_else_the_environment(tmp_path, monkeypatch):
    runs = _load("runs")
    main = APP_DIR / "main.py"
    assert runs.runs_dir_from_argv(main, [str(main), "/data/runs"]) == Path("/data/runs")
    monkeypatch.setenv("ROUTELENS_RUNS_DIR", str(tmp_path))
    assert runs.runs_dir_from_argv(main, ["pytest", "-q"]) == tmp_path


def test_result_files_inside_the_run_then_of_its_model_come_first(tmp_path):
    runs = _load("runs")
    inside = tmp_path / "demo" / "reroute" / "tradeoff.json"
    same_model = tmp_path / "a-eval" / "tradeoff.json"
    other = tmp_path / "0-other" / "tradeoff.json"
    ordered = runs.rank_by_closeness([other, same_model, inside], tmp_path / "demo", "m", ["x", "m", "m"])
    assert ordered == [inside, same_model, other]


def test_community_order_groups_experts_largest_community_first_busiest_first():
    charts = _load("routing_charts")
    community = np.array([1, 0, 1, -1, 1, 0])
    load = np.array([5, 9, 7, 0, 6, 3])
    order = charts.community_order(community, load).tolist()
    assert order == [2, 4, 0, 1, 5, 3]  # community 1 (3 experts) by load, then community 0, unused last
    colors = charts.community_colors(community)
    assert colors[3] == charts.MUTED and colors[0] == colors[2] != colors[1]


def test_sankey_pools_transitions_into_groups_and_keeps_the_strongest_links():
    charts = _load("routing_charts")
    transitions = [np.array([[4, 0, 1], [0, 2, 0], [3, 0, 5]])]
    groups = [np.array([0, 1, 0]), np.array([0, 1, 1])]
    fig = charts.flow_sankey([0, 1], transitions, groups, [["a0", "a1"], ["b0", "b1"]],
                             [["#3b5bdb"] * 2, ["#e8590c"] * 2])
    link = fig.data[0].link
    pooled = {(fig.data[0].node.label[s], fig.data[0].node.label[t]): v for s, t, v in zip(link.source, link.target, link.value)}
    assert pooled == {("a0", "b0"): 7.0, ("a0", "b1"): 6.0, ("a1", "b1"): 2.0}
    strongest = charts.flow_sankey([0, 1], transitions, groups, [["a0", "a1"], ["b0", "b1"]],
                                   [["#3b5bdb"] * 2, ["#e8590c"] * 2], max_links=1)
    assert list(strongest.data[0].link.value) == [7.0]
