"""Every dashboard page on the demo run, through Streamlit's AppTest (no browser)."""

from __future__ import annotations

from pathlib import Path

import pytest

APP_MAIN = Path(__file__).resolve().parents[2] / "app" / "main.py"

PAGES = {
    "views/overview.py": "Overview",
    "views/layers.py": "Layer explorer",
    "views/expert.py": "Expert",
    "views/flow.py": "Cross-layer flow",
    "views/reroute.py": "Re-routing",
    "views/placement.py": "Placement",
    "views/compare.py": "Runs compared",
    "views/runner.py": "Runner results",
}


def _titles(at) -> list[str]:
    return [t.value for t in at.title]


def test_overview_is_the_default_page_and_shows_the_demo_run(app):
    at = app.run()
    assert not at.exception, at.exception
    assert _titles(at) == ["Overview"]
    assert at.selectbox(key="run").value == "demo"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["MoE layers"] == "4"
    assert metrics["Experts / layer"] == "16"
    assert metrics["Top-k"] == "2"
    assert metrics["Tokens"] == "4,096"


@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_renders_without_an_exception(app, page):
    at = app.run()
    at.switch_page(page).run()
    assert not at.exception, at.exception
    assert _titles(at) == [PAGES[page]]


def test_half_written_run_shows_a_clear_message_not_a_traceback(app):
    at = app.run()
    at.selectbox(key="run").set_value("broken").run()
    assert not at.exception
    assert any("cannot be read" in e.value and "not valid JSON" in e.value for e in at.error), [e.value for e in at.error]


def test_empty_runs_folder_says_which_command_makes_a_run(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ROUTELENS_RUNS_DIR", str(tmp_path))
    at = AppTest.from_file(str(APP_MAIN), default_timeout=30).run()
    assert not at.exception
    assert any("No runs found" in i.value for i in at.info)
    assert any("routelens capture --out" in c.value for c in at.code)
