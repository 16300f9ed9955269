"""Trace → Analysis → RUN/analysis/ → load_analysis: exact against direct computation, cached, atomic."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from routelens.errors import InputError, RoutelensError
from routelens.graphs import (
    analyze_trace,
    effective_collaborators,
    ensure_analysis,
    load_analysis,
    load_imbalance,
    parse_layers,
    save_analysis,
    top_t_stability,
)
from routelens.graphs import store
from routelens.synthetic import synthetic_trace_arrays
from routelens.trace import Trace, write_trace

_spec = importlib.util.spec_from_file_location("graphs_reference", Path(__file__).with_name("reference.py"))
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


def write_synthetic(path: Path, seed: int = 0, num_experts: int = 16, tokens: int = 4096) -> Trace:
    arrays = synthetic_trace_arrays(num_tokens=tokens, num_layers=4, num_experts=num_experts, top_k=2, seed=seed)
    return write_trace(path, arrays["header"], arrays["token_ids"], arrays["seq_ids"], arrays["positions"],
                       arrays["topk_ids"], arrays["topk_weights"], None, shard_tokens=1000, overwrite=True)


def recapture(run: Path, scratch: Path, seed: int) -> None:
    """Replace the trace in ``run`` (not its analysis) by another one, as a new capture would."""
    write_synthetic(scratch, seed=seed)
    shutil.rmtree(run / "shards")
    shutil.move(scratch / "shards", run / "shards")
    shutil.move(scratch / "manifest.json", run / "manifest.json")


def test_analysis_equals_direct_computation(synthetic_trace):
    trace = synthetic_trace
    a = analyze_trace(trace, progress=False)
    e, n = trace.num_experts, trace.num_tokens
    assert a.layers == [0, 1, 2, 3] and a.num_tokens == n and a.coactivation.shape == (4, e, e)
    for j in range(4):
        ids = trace.topk_ids(j)
        direct = ref.coactivation_direct(ids, e)
        assert np.array_equal(a.counts(j), direct)
        assert np.allclose(a.load(j, weighted=True), ref.load_mass_direct(ids, trace.topk_weights(j), e))
        row = a.summary(j)
        assert row["load_max_over_mean"] == pytest.approx(load_imbalance(np.diag(direct))["max_over_mean"])
        assert row["router_entropy"] == pytest.approx(ref.router_entropy_direct(trace.router_logits(j)), rel=1e-4)
        assert np.allclose(a.score(j, "effective_collaborators"), effective_collaborators(direct), equal_nan=True)
        half = n // 2
        stab = top_t_stability(ref.coactivation_direct(ids[:half], e), ref.coactivation_direct(ids[half:], e), 1)
        assert np.allclose(a.score(j, "stability"), stab, equal_nan=True)
        if j < 3:
            assert np.array_equal(a.transition(j), ref.transitions_direct(ids, trace.topk_ids(j + 1), e, e))
        else:
            assert a.transition(j) is None and row["next_layer"] is None
    assert a.token_class_counts is None  # the synthetic model has no tokenizer: ids only
    top = a.top_tokens(0)
    assert len(top) == e and all(t["text"] is None and t["count"] >= 5 for rows in top for t in rows)


def test_save_and_load_round_trip(synthetic_trace):
    a = analyze_trace(synthetic_trace, "1-2", progress=False)
    folder = save_analysis(a, synthetic_trace.path, exports=["json"])
    assert folder == synthetic_trace.path / "analysis"
    assert sorted(p.name for p in (folder / "graphs").iterdir()) == ["layer001.json", "layer002.json"]
    b = load_analysis(synthetic_trace.path)
    assert b.layers == [1, 2] and b.fingerprint == synthetic_trace.fingerprint()
    for name in ("load_tokens", "load_weight", "coactivation", "transitions"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    for name, values in a.scores.items():
        assert np.array_equal(values, b.scores[name], equal_nan=True)
    assert b.summary(2)["modularity"] == pytest.approx(a.summary(2)["modularity"])
    assert b.communities(1) == a.communities(1) and b.roles(1) == a.roles(1)
    assert b.graph(1).number_of_edges() == int((np.triu(b.counts(1), 1) > 0).sum())
    assert np.allclose(b.conditional(1).sum(axis=1)[b.load(1) > 0], 2.0)  # top-2: P(.|i) sums to k
    with pytest.raises(InputError, match="layer 0 was not analysed"):
        b.counts(0)
    summary = json.loads((folder / "analysis.json").read_text())
    assert summary["format"] == "routelens-analysis" and len(summary["per_layer"]) == 2


def test_ensure_reuses_until_the_trace_changes(tmp_path):
    run = tmp_path / "run"
    write_synthetic(run, seed=0)
    first, computed = ensure_analysis(run, progress=False)
    assert computed
    again, computed = ensure_analysis(run, progress=False)
    assert not computed and np.array_equal(again.coactivation, first.coactivation)
    subset, computed = ensure_analysis(run, "2-3", progress=False)  # served by the stored full analysis
    assert not computed and subset.layers == [2, 3]
    _, computed = ensure_analysis(run, top_t=1, threshold=0.3, progress=False)  # other parameters
    assert computed
    recapture(run, tmp_path / "other", seed=1)  # the trace changes: the analysis is stale
    with pytest.raises(RoutelensError, match="stale"):
        load_analysis(run)
    assert load_analysis(run, allow_stale=True).layers == [0, 1, 2, 3]
    fresh, computed = ensure_analysis(run, progress=False)
    assert computed and not np.array_equal(fresh.coactivation, first.coactivation)


def test_a_failed_save_leaves_the_previous_analysis(tmp_path, monkeypatch):
    run = tmp_path / "run"
    trace = write_synthetic(run)
    old, _ = ensure_analysis(run, progress=False)
    new = analyze_trace(trace, "0", progress=False)

    def disk_full(*args, **kwargs):
        raise RoutelensError("could not write graphs: No space left on device")

    monkeypatch.setattr(store, "write_exports", disk_full)
    with pytest.raises(RoutelensError, match="No space left"):
        save_analysis(new, run, exports=["graphml"])
    kept = load_analysis(run)
    assert kept.layers == old.layers and np.array_equal(kept.coactivation, old.coactivation)
    assert sorted(p.name for p in run.iterdir()) == ["analysis", "manifest.json", "shards"]  # no staging left


def test_load_errors_are_one_line(tmp_path):
    run = tmp_path / "run"
    write_synthetic(run)
    with pytest.raises(RoutelensError, match="no analysis in .*: run routelens analyze"):
        load_analysis(run)
    ensure_analysis(run, progress=False)
    (run / "analysis" / "stability.npy").unlink()
    with pytest.raises(RoutelensError, match="stability.npy is missing"):
        load_analysis(run)
    _, computed = ensure_analysis(run, progress=False)  # an incomplete analysis is recomputed
    assert computed
    meta = json.loads((run / "analysis" / "analysis.json").read_text())
    meta["version"] = 0
    (run / "analysis" / "analysis.json").write_text(json.dumps(meta))
    with pytest.raises(RoutelensError, match="format version 0"):
        load_analysis(run)
    (run / "analysis" / "analysis.json").write_text('{"format": "routelens-analysis", "ver')
    with pytest.raises(RoutelensError, match="not valid JSON"):
        load_analysis(run)


def test_parse_layers():
    assert parse_layers("0-2,5", 8) == [0, 1, 2, 5]
    assert parse_layers("-2--1", 8) == [6, 7]
    assert parse_layers(None, 3) == [0, 1, 2]
    assert parse_layers([2, 1, 2], 3) == [1, 2]
    with pytest.raises(InputError, match=r"layer 8 out of bounds in --layers 0-8: the trace has 8 MoE layers \(0-7\)"):
        parse_layers("0-8", 8)
    with pytest.raises(InputError, match="cannot read layer selection"):
        parse_layers("a-b", 8)
    with pytest.raises(InputError, match="empty"):
        parse_layers("5-2", 8)


def test_layers_analysed_on_two_processes_equal_the_one_process_analysis(synthetic_trace):
    from routelens.graphs.pipeline import vocabulary_counts

    serial = analyze_trace(synthetic_trace, progress=False, workers=1)
    pooled = analyze_trace(synthetic_trace, "1-3", progress=False, workers=2)
    assert pooled.layers == [1, 2, 3]
    part = serial.select([1, 2, 3])
    for name in ("coactivation", "transitions", "load_tokens", "load_weight"):
        assert np.array_equal(getattr(pooled, name), getattr(part, name)), name
    for name, values in part.scores.items():
        assert np.array_equal(pooled.scores[name], values, equal_nan=values.dtype.kind == "f"), name
    assert pooled.layer_summaries == part.layer_summaries
    vocab, counts = vocabulary_counts(synthetic_trace)
    expected = np.unique(synthetic_trace.token_ids, return_counts=True)
    assert np.array_equal(vocab, expected[0]) and np.array_equal(counts, expected[1])
