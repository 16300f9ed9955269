"""``routelens import`` end to end: record → import → info / analyze → place for the engine → plan-eval on its file."""

from __future__ import annotations

import numpy as np
import pytest
from engine_loaders import sglang_init_expert_location
from engine_records import eplb_map, known_passes, vllm_request, write_jsonl, write_sglang_per_token, write_sglang_stat

from routelens.cli import main
from routelens.engines.imported import PHASES
from routelens.trace import Trace


def _fails_in_one_line(capsys, argv, match):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("routelens: error:") and "\n" not in err and match in err, err
    return err


def test_sglang_per_token_import_round_trips_and_its_plan_loads_back_into_sglang(tmp_path, models, layout, capsys):
    rng = np.random.default_rng(0)
    passes = known_passes(rng, layout, 12, max_window=12)
    files, expected = write_sglang_per_token(tmp_path, rng, layout, passes, eplb_map(rng, 3, 8, 4), ranks=2)
    run = tmp_path / "prod"
    assert main(["import", "sglang", *map(str, files), "--model", str(models["deepseek_v3"]), "--out", str(run),
                 "--engine-version", "0.5.23"]) == 0
    out = capsys.readouterr().out
    assert "source    sglang per_token records, 2 file(s), engine 0.5.23, ranks replicated" in out
    trace = Trace.open(run)
    assert (trace.layers, trace.has_weights, trace.source_label) == (list(layout.layers), False, "sglang per_token records")
    ids = np.concatenate([w[3] for w in expected])
    for j in range(2):
        assert np.array_equal(trace.topk_ids(j), ids[:, j])
    assert trace.phases == list(PHASES)
    assert trace.phase.tolist() == np.concatenate([np.full(len(w[0]), w[2]) for w in expected]).tolist()
    assert [f["name"] for f in trace.manifest["source"]["files"]] == [f.name for f in files]
    assert not (run / "tokenizer.json").exists()  # the model folder has no tokenizer: tokens stay ids

    assert main(["analyze", str(run), "--no-progress"]) == 0
    _fails_in_one_line(capsys, ["reroute", str(run), "--policy", "c2r"], "holds expert ids only")

    plan_file = tmp_path / "prod.pt"
    assert main(["place", str(run), "--gpus", "2", "--redundant", "2", "--method", "greedy", "--format", "sglang",
                 "--out", str(plan_file), "--no-progress"]) == 0
    loaded = sglang_init_expert_location(str(plan_file), num_hidden_layers=3, num_logical_experts=8,
                                         ep_num_redundant_experts=2, ep_size=2)
    assert loaded["physical_to_logical_map"].shape == (3, 10)
    # the engine's own file is accepted as a plan: the EP size comes from prod.plan.json next to it
    assert main(["plan-eval", str(run), str(plan_file), "--baselines", "contiguous", "--no-progress"]) == 0
    assert "plan (greedy)" in capsys.readouterr().out


def test_counts_only_import_feeds_load_views_and_eplb_and_co_activation_commands_refuse_it(tmp_path, models, layout,
                                                                                          capsys):
    counts = np.random.default_rng(1).integers(0, 50, (6, 2, 8))
    stat = write_sglang_stat(tmp_path / "expert_distribution_recorder_1.0.pt", layout, counts)
    run = tmp_path / "stat-run"
    assert main(["import", "sglang", str(stat), "--model", str(models["deepseek_v3"]), "--out", str(run)]) == 0
    trace = Trace.open(run)
    assert trace.counts_only and trace.expert_counts(1).tolist() == counts[:, 1].sum(0).tolist()
    assert main(["info", str(run)]) == 0
    assert "expert counts only" in capsys.readouterr().out
    assert main(["place", str(run), "--method", "eplb", "--gpus", "2", "--redundant", "2", "--format", "sglang",
                 "--out", str(tmp_path / "eplb.pt"), "--no-progress"]) == 0
    sglang_init_expert_location(str(tmp_path / "eplb.pt"), 3, 8, 2, 2)
    assert main(["place", str(run), "--format", "sglang-counts", "--out", str(tmp_path / "counts.pt")]) == 0
    assert sglang_init_expert_location(str(tmp_path / "counts.pt"), 3, 8, 0, 2)["logical_count"].sum() == counts.sum()
    for argv in (["analyze", str(run)], ["place", str(run), "--gpus", "2", "--out", str(tmp_path / "x.json")],
                 ["plan-eval", str(run), str(tmp_path / "eplb.pt")], ["compare", str(run), str(run)],
                 ["reroute", str(run), "--policy", "c2r"]):
        _fails_in_one_line(capsys, argv, "counts only")


def test_vllm_import_and_the_vllm_export_that_no_engine_loads(tmp_path, models, layout, capsys):
    rng = np.random.default_rng(2)
    requests = [vllm_request(rng, layout, 6, 4)[0] for _ in range(3)]
    path = write_jsonl(tmp_path / "routed_experts.jsonl", requests)
    run = tmp_path / "prod-vllm"
    assert main(["import", "vllm", str(path), "--model", str(models["deepseek_v3"]), "--out", str(run)]) == 0
    trace = Trace.open(run)
    assert trace.num_tokens == 3 * 9 and trace.manifest["num_sequences"] == 3
    assert np.bincount(trace.phase).tolist() == [18, 9]
    _fails_in_one_line(capsys, ["place", str(run), "--gpus", "2", "--format", "vllm", "--out", str(tmp_path / "v.pt")],
                       "loads no placement file")
    assert main(["place", str(run), "--gpus", "2", "--method", "greedy", "--format", "vllm-ascend",
                 "--out", str(tmp_path / "map.json"), "--no-progress"]) == 0
    assert main(["plan-eval", str(run), str(tmp_path / "map.json"), "--baselines", "contiguous", "--no-progress"]) == 0


def test_records_of_another_model_leave_nothing_behind(tmp_path, models, layout, capsys):
    rng = np.random.default_rng(3)
    files, _ = write_sglang_per_token(tmp_path, rng, layout, known_passes(rng, layout, 2), eplb_map(rng, 3, 8, 0), 1)
    run = tmp_path / "wrong"
    _fails_in_one_line(capsys, ["import", "sglang", str(files[0]), "--model", str(models["mixtral"]), "--out", str(run)],
                       "decoder layers")
    assert not run.exists()
    _fails_in_one_line(capsys, ["import", "sglang", str(tmp_path / "missing.pt"), "--model", str(models["mixtral"]),
                                "--out", str(run)], "not found")
    (run / "x").mkdir(parents=True)
    _fails_in_one_line(capsys, ["import", "sglang", str(files[0]), "--model", str(models["deepseek_v3"]),
                                "--out", str(run)], "not empty")


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
def test_import_help_names_what_each_engine_records(engine, capsys):
    with pytest.raises(SystemExit):
        main(["import", "--help"])
    text = capsys.readouterr().out
    assert engine in text and "config.json" in text


def test_an_import_copies_the_models_local_tokenizer_into_the_run(tmp_path, models, layout, capsys):
    import shutil

    from routelens.capture.tiny import build_byte_tokenizer
    from routelens.graphs.tokens import load_token_texts

    model = tmp_path / "model"
    shutil.copytree(models["deepseek_v3"], model)
    tokenizer = build_byte_tokenizer(vocab_size=280)
    tokenizer.save_pretrained(model)
    rng = np.random.default_rng(3)
    files, _ = write_sglang_per_token(tmp_path, rng, layout, known_passes(rng, layout, 4, max_window=6),
                                      eplb_map(rng, 3, 8, 4), ranks=1)
    run = tmp_path / "prod"
    assert main(["import", "sglang", *map(str, files), "--model", str(model), "--out", str(run)]) == 0
    ids = np.unique(Trace.open(run).token_ids)
    ids = ids[ids < 280][:20]
    assert load_token_texts(ids, run) == {int(i): tokenizer.decode([int(i)]) for i in ids}
