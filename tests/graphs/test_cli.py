"""``routelens analyze`` and ``routelens compare`` end to end, and their one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from routelens.cli import main
from routelens.graphs import load_analysis
from routelens.synthetic import synthetic_trace_arrays
from routelens.trace import Trace, write_trace


def make_run(path: Path, seed: int = 0, num_experts: int = 16) -> Trace:
    arrays = synthetic_trace_arrays(num_tokens=3000, num_layers=4, num_experts=num_experts, top_k=2,
                                    seed=seed)
    return write_trace(path, arrays["header"], arrays["token_ids"], arrays["seq_ids"], arrays["positions"],
                       arrays["topk_ids"], arrays["topk_weights"], None, shard_tokens=1000)


def test_analyze_prints_one_row_per_layer_and_reuses_results(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run)
    assert main(["analyze", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["#", "max/mean"])
    rows = [line.split() for line in lines[header + 1: header + 5]]
    analysis = load_analysis(run)
    for j, row in enumerate(rows):
        s = analysis.summary(j)
        assert row[0] == str(j) and row[1] == f"{s['load_max_over_mean']:.2f}" and row[2] == f"{s['load_gini']:.2f}"
        assert row[6] == str(s["num_communities"]) and row[7] == f"{s['modularity']:.2f}"
        assert row[8] == "-"  # no router logits in this trace
    assert "computed in" in out and str(run / "analysis") in out
    assert main(["analyze", str(run), "--layers", "0-1", "--export", "graphml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "up to date" in out
    assert sorted(p.name for p in (run / "analysis" / "graphs").iterdir()) == ["layer000.graphml", "layer001.graphml"]
    assert main(["analyze", str(run), "--json", "-", "--no-progress"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [row["index"] for row in data["per_layer"]] == [0, 1, 2, 3] and data["computed"] is False


def test_compare_two_corpora(tmp_path, capsys):
    make_run(tmp_path / "a", seed=0)
    make_run(tmp_path / "b", seed=3)
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--top", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "experts whose role changes most:" in out and "load TV" in out
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json", "-", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["layers"]) == 4 and all(0 < row["coactivation_tv"] <= 1 for row in result["layers"])
    a, b = load_analysis(tmp_path / "a"), load_analysis(tmp_path / "b")
    la, lb = a.load(0), b.load(0)
    assert result["layers"][0]["load_tv"] == pytest.approx(0.5 * np.abs(la / la.sum() - lb / lb.sum()).sum())
    # identical runs: nothing changed
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "a"), "--json", "-", "--no-progress"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["experts"] == [] and all(row["coactivation_tv"] == 0 for row in same["layers"])


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("routelens: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_gives_one_line_errors(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run)
    assert "out of bounds" in one_line_error(capsys, ["analyze", str(run), "--layers", "0-9", "--no-progress"])
    assert "--threshold" in one_line_error(capsys, ["analyze", str(run), "--threshold", "2"])
    assert "--group-size 20 must lie in [1, 15]" in one_line_error(capsys, ["analyze", str(run), "--group-size", "20",
                                                                         "--no-progress"])
    assert "unknown --export format" in one_line_error(capsys, ["analyze", str(run), "--export", "png"])
    assert "no trace folder" in one_line_error(capsys, ["analyze", str(tmp_path / "nowhere")])

    other = tmp_path / "wide"
    make_run(other, num_experts=32)
    assert "different architectures" in one_line_error(capsys, ["compare", str(run), str(other), "--no-progress"])

    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "version": 0}))
    assert "format version 0" in one_line_error(capsys, ["analyze", str(run)])
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / manifest["shards"][1]["file"]).unlink()
    assert "missing shard" in one_line_error(capsys, ["analyze", str(run)])
    assert not (run / "analysis").exists()  # nothing half-written
