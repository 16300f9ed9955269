"""The dashboard on runs imported from serving engines: shown like any other run, with their source named;
a counts-only run shows its load views and says why the co-activation views are absent."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

APP_MAIN = Path(__file__).resolve().parents[2] / "app" / "main.py"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "capture"))  # tiny_models


@pytest.fixture(scope="module")
def imported_runs(tmp_path_factory) -> Path:
    """``prod/`` (per-token, as imported from SGLang) and ``stat/`` (counts only), built by the library."""
    from tiny_models import tiny_config

    from routelens.engines.imported import TokenRouting, write_counts_trace, write_routing_trace
    from routelens.engines.layout import model_layout

    root = tmp_path_factory.mktemp("imported")
    tiny_config("deepseek_v3").save_pretrained(root / "model")
    layout = model_layout(root / "model")
    rng = np.random.default_rng(0)
    routing = TokenRouting(2, 2)
    for _ in range(20):
        ids = np.stack([np.stack([rng.choice(8, 2, replace=False) for _ in range(2)]) for _ in range(6)])
        routing.add(rng.integers(0, 90, 6), np.arange(6), 0, ids)
    source = {"kind": "engine", "engine": "sglang", "mode": "per_token", "version": "0.5.23", "files": [],
              "rank_layout": "replicated", "caveats": ["routing weights are not recorded"]}
    runs = root / "runs"
    write_routing_trace(runs / "prod", layout, routing, {"engine": "sglang"}, source)
    counts = rng.integers(0, 40, (5, 2, 8))
    write_counts_trace(runs / "stat", layout, counts, {"engine": "sglang"}, dict(source, mode="stat", rank_layout=None))
    return runs


@pytest.fixture
def app(imported_runs, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ROUTELENS_RUNS_DIR", str(imported_runs))
    return AppTest.from_file(str(APP_MAIN), default_timeout=60)


def _markdown(at) -> str:
    return "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)


def test_an_imported_run_shows_its_source_on_the_overview(app):
    at = app.run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    assert at.selectbox(key="run").value == "prod"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Source"] == "sglang" and metrics["Tokens"] == "120"
    text = _markdown(at)
    assert "Imported from sglang 0.5.23" in text and "routing weights not recorded" in text


def test_a_counts_only_run_shows_its_loads_and_says_why_co_activation_is_absent(app, imported_runs):
    from routelens.trace import Trace

    at = app.run()
    at.selectbox(key="run").set_value("stat").run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    assert not at.error, [e.value for e in at.error]
    assert any("expert counts only" in info.value for info in at.info)
    charts = at.get("plotly_chart")
    assert len(charts) == 2  # imbalance bars and the load heatmap
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_pages import _decode

    heatmap = _decode(json.loads(charts[-1].proto.spec))["data"][0]
    trace = Trace.open(imported_runs / "stat")
    assert np.asarray(heatmap["customdata"]).tolist() == [trace.expert_counts(j).tolist() for j in range(2)]
    at.switch_page("views/layers.py").run()
    assert not at.exception and any("expert counts only" in info.value for info in at.info)
