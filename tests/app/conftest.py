"""Fixtures of the dashboard tests: a small real "demo run" built with the library, once per session.

``runs_dir`` holds:
  demo/        the demo run (a capture of data/demo-moe when present, else a synthetic trace)
  broken/      a half-written run (manifest.json cut mid-write), to check the app's message
"""

from __future__ import annotations

from pathlib import Path

import pytest

APP_MAIN = Path(__file__).resolve().parents[2] / "app" / "main.py"


def _synthetic_demo(run: Path) -> None:
    from routelens.synthetic import synthetic_trace_arrays
    from routelens.trace import write_trace

    arrays = synthetic_trace_arrays(num_tokens=4096, num_layers=4, num_experts=16, top_k=2, seed=3)
    write_trace(run, arrays["header"], arrays["token_ids"], arrays["seq_ids"], arrays["positions"],
                arrays["topk_ids"], arrays["topk_weights"], shard_tokens=2048)


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    _synthetic_demo(root / "demo")
    broken = root / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"format": "routelens-trace", "version": 1, "layers": [')
    return root


@pytest.fixture
def app(runs_dir, monkeypatch):
    """An AppTest of the dashboard over ``runs_dir`` (not yet run)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ROUTELENS_RUNS_DIR", str(runs_dir))
    return AppTest.from_file(str(APP_MAIN), default_timeout=30)
