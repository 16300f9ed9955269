"""``routelens reroute`` and ``routelens reroute-eval`` end to end, and their one-line errors."""

from __future__ import annotations

import json

import pytest

from routelens.cli import main
from routelens.synthetic import synthetic_trace_arrays
from routelens.trace import Trace, write_trace

TEXT = "".join(
    f"def route_{i}(tokens, experts, top_k={i % 4 + 1}):\n"
    f"    scores = [score(t, e) * {i} for e in experts]\n"
    f"    return sorted(range(len(scores)), key=scores.__getitem__)[-top_k:]\n\n"
    for i in range(60)
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from routelens.capture.tiny import build_tiny_moe, tiny_qwen3_moe_config

    return build_tiny_moe(tmp_path_factory.mktemp("model") / "tiny", tiny_qwen3_moe_config(num_experts=8, top_k=2))


def test_reroute_writes_a_trace_and_a_json_comparison(synthetic_trace, tmp_path, capsys):
    out, report = tmp_path / "limited", tmp_path / "report.json"
    code = main(["reroute", str(synthetic_trace.path), "--policy", "gpu-limited", "--max-gpus", "1", "--gpus", "4",
                 "--out", str(out), "--json", str(report), "--no-progress"])
    assert code == 0
    assert Trace.open(out).num_tokens == synthetic_trace.num_tokens
    data = json.loads(report.read_text())
    assert data["policy"] == "gpu-limited" and data["max_gpus"] == 1
    assert data["overall"]["rerouted"]["gpus_per_token"] == pytest.approx(1.0)
    assert "GPUs/token" in capsys.readouterr().out


def test_reroute_default_output_sits_next_to_the_run(synthetic_trace, capsys):
    assert main(["reroute", str(synthetic_trace.path), "--policy", "c2r", "--group-size", "4", "--gpus", "4",
                 "--no-progress"]) == 0
    assert Trace.open(synthetic_trace.path.with_name("run-c2r-t4")).manifest["reroute"]["top_t"] == 4


def test_reroute_errors_are_one_line(tmp_path, capsys):
    arrays = synthetic_trace_arrays(num_tokens=128, num_layers=1, num_experts=8, top_k=2, with_logits=False)
    plain = write_trace(tmp_path / "plain", arrays["header"], arrays["token_ids"], arrays["seq_ids"],
                        arrays["positions"], arrays["topk_ids"], arrays["topk_weights"])
    assert main(["reroute", str(plain.path), "--policy", "capacity-drop", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("routelens: error:") and "--save-logits" in err and err.count("\n") == 1
    assert main(["reroute", str(tmp_path / "missing"), "--policy", "c2r"]) == 2
    assert "no trace folder" in capsys.readouterr().err


def test_reroute_eval_sweeps_policies_and_writes_rows_and_the_curve(tiny_model, tmp_path, capsys):
    text = tmp_path / "heldout.txt"
    text.write_text(TEXT)
    rows_file, out = tmp_path / "rows.json", tmp_path / "curve"
    code = main(["reroute-eval", str(tiny_model), "--policy", "gpu-limited,capacity-reroute", "--max-gpus", "1,2",
                 "--gpu-score", "mass", "--gpu-fill", "drop", "--capacity-factor", "1.25", "--routing-weights", "keep", "--gpus", "4", "--text", str(text),
                 "--seq-len", "32", "--max-tokens", "384", "--batch-size", "3", "--json", str(rows_file),
                 "--out", str(out), "--no-progress"])
    assert code == 0
    rows = json.loads(rows_file.read_text())
    assert [(r["policy"], r.get("max_gpus"), r.get("capacity_factor")) for r in rows] == [
        ("none", None, None), ("gpu-limited", 1, None), ("gpu-limited", 2, None), ("capacity-reroute", None, 1.25)]
    for row in rows:
        assert row["perplexity"] > 1 and row["gpus_per_token"] >= 1
        assert row.get("weights", "keep") == "keep"
    assert rows[1]["gpus_per_token"] == pytest.approx(1.0) and rows[1]["gpu_score"] == "mass"
    assert rows[1]["fill"] == "drop" and rows[1]["dropped_fraction"] > 0 and rows[1]["label"].endswith("drop keep")
    assert rows[0]["contiguous_gpus_per_token"] >= 1
    assert rows[1]["gpus_per_token_vs_contiguous"] == pytest.approx(1.0 / rows[0]["contiguous_gpus_per_token"] - 1)
    curve = json.loads((out / "tradeoff.json").read_text())
    assert curve["format"] == "routelens-reroute-eval" and curve["rows"] == rows
    assert curve["calibration_windows"] == 3 and curve["evaluation_windows"] == 9
    assert (out / "plan.json").is_file()
    assert "perplexity" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--policy", "bogus"], "unknown --policy"),
    (["--fit-fraction", "1.5"], "--fit-fraction"),
    (["--capacity-factor", "0,1"], "positive"),
    (["--group-size", "x"], "whole numbers"),
])
def test_reroute_eval_rejects_bad_settings_before_loading_the_model(tmp_path, capsys, argv, message):
    assert main(["reroute-eval", str(tmp_path / "no-model"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_reroute_eval_names_a_missing_model(tmp_path, capsys):
    assert main(["reroute-eval", str(tmp_path / "no-model"), "--no-progress"]) == 2
    assert "not found" in capsys.readouterr().err
