"""The dashboard's result-file loaders read through routelens.formats: which files they list, and the
one-line problem they show for a bad one instead of failing the page."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from routelens.formats import BENCH, CALIBRATION, TRADEOFF

APP_DIR = Path(__file__).resolve().parents[2] / "app"
FIELDS = {"backend": "gloo", "num_gpus": 2, "hidden_size": 32, "tokens_per_rank": 1024}


def _data():
    """``app/rlapp/data.py`` imported the way the app does (``app/`` on sys.path)."""
    if str(APP_DIR) not in sys.path:
        sys.path.insert(0, str(APP_DIR))
    return importlib.import_module("rlapp.data")


def test_bench_reports_are_the_bench_files_and_a_bad_one_names_its_problem(tmp_path):
    run = tmp_path / "demo"
    good = BENCH.write(BENCH.path_in(run, FIELDS), {**FIELDS, "plans": [], "baseline": "contiguous"})
    CALIBRATION.write(CALIBRATION.path_in(run, FIELDS), {**FIELDS, "latency_us": 10.0, "bandwidth_GBps": 5.0})
    old = BENCH.path_in(run, {**FIELDS, "tokens_per_rank": 2048})
    old.write_text(good.read_text().replace('"version": 1', '"version": 0'))
    data = _data()
    reports = {Path(r["path"]).name: r for r in data.bench_reports(str(run), data.bench_stamp(str(run)))}
    assert set(reports) == {good.name, old.name}  # the calibration beside them is not a report
    assert reports[good.name]["baseline"] == "contiguous" and "problem" not in reports[good.name]
    assert "format version 0" in reports[old.name]["problem"] and "\n" not in reports[old.name]["problem"]


def test_tradeoff_files_below_the_runs_folder_are_read_and_a_half_written_one_is_named(tmp_path):
    TRADEOFF.write(tmp_path / "a" / TRADEOFF.file, {"rows": [{"policy": "none"}]})
    TRADEOFF.write(tmp_path / "empty" / TRADEOFF.file, {"rows": []})
    cut = tmp_path / "cut" / TRADEOFF.file
    cut.parent.mkdir()
    cut.write_text('{"format": "routelens-reroute-eval", "version": 1, "rows": [')
    found = {Path(item["path"]).parent.name: item for item in _data().reroute_tradeoffs(str(tmp_path))}
    assert set(found) == {"a", "cut"}  # a curve without rows has nothing to draw
    assert found["a"]["rows"] == [{"policy": "none"}]
    assert "not valid JSON" in found["cut"]["problem"]
