"""Fixtures of the dashboard tests: a small but real set of runs, built once per session with the library.

``runs_dir`` holds what a user's ``runs/`` would after ``make demo``, only smaller:

  demo/            capture of the bundled demo model (data/demo-moe) on 2,048 tokens of the bundled
                   corpus, with router logits
    analysis/      routelens analyze
    reroute/       routelens reroute-eval (trade-off curve + the plan it fitted)
    plans/         routelens place --gpus 2 (the optimizer's plan)
    schedules/     routelens schedule-eval --gpus 2 (greedy and eplb, re-placed every 256 and 512 tokens)
    bench/         routelens bench over gloo, 2 ranks (contiguous vs the reroute-eval plan)
  demo-c2r/        routelens reroute demo --policy c2r (a re-routed trace, for Runs compared), analysed
  broken/          a half-written run: manifest.json cut mid-write

Every file is produced by the real commands or library functions; nothing is written by hand
except the broken manifest.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APP_MAIN = REPO / "app" / "main.py"
DEMO_MODEL = REPO / "data" / "demo-moe"


def _build_runs(root: Path) -> None:
    from routelens.capture.engine import capture_from_path
    from routelens.cli import main
    from routelens.graphs import ensure_analysis

    demo = root / "demo"
    capture_from_path(None, demo, max_tokens=2048, seq_len=128, batch_size=8, save_logits=True, progress=False)
    code = main(["reroute", str(demo), "--policy", "c2r", "--group-size", "16", "--gpus", "2",
                 "--out", str(root / "demo-c2r"), "--no-progress"])
    assert code == 0, "routelens reroute failed while building the dashboard fixture"
    for run in (demo, root / "demo-c2r"):
        ensure_analysis(run, progress=False)
    code = main(["reroute-eval", "--policy", "c2r,capacity-drop", "--group-size", "8,16", "--capacity-factor", "1,1.5",
                 "--max-tokens", "256", "--seq-len", "64", "--gpus", "2", "--out", str(demo / "reroute"), "--no-progress"])
    assert code == 0, "routelens reroute-eval failed while building the dashboard fixture"
    code = main(["place", str(demo), "--gpus", "2", "--out", str(demo / "plans" / "routelens-g2.json"),
                 "--time-budget", "2", "--no-progress"])
    assert code == 0, "routelens place failed while building the dashboard fixture"
    code = main(["schedule-eval", str(demo), "--gpus", "2", "--method", "greedy,eplb", "--every", "256,512",
                 "--fit-tokens", "512", "--batch-tokens", "256", "--hidden-size", "1024", "--no-progress"])
    assert code == 0, "routelens schedule-eval failed while building the dashboard fixture"
    code = main(["bench", str(demo), "contiguous", str(demo / "reroute" / "plan.json"), "--gpus", "2",
                 "--backend", "gloo", "--repeats", "1", "--warmup", "0", "--hidden-size", "32"])
    assert code == 0, "routelens bench failed while building the dashboard fixture"
    broken = root / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"format": "routelens-trace", "version": 1, "layers": [')


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory) -> Path:
    if not (DEMO_MODEL / "config.json").is_file():
        pytest.fail(f"the bundled demo model is missing at {DEMO_MODEL}: the dashboard tests capture it")
    root = tmp_path_factory.mktemp("runs")
    _build_runs(root)
    return root


@pytest.fixture
def app(runs_dir, monkeypatch):
    """An AppTest of the dashboard over ``runs_dir`` (not yet run)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ROUTELENS_RUNS_DIR", str(runs_dir))
    return AppTest.from_file(str(APP_MAIN), default_timeout=60)
