"""Real captures through the Python API, analysed and checked against a direct computation.

A tiny random-init Qwen3-MoE (always) and the bundled trained demo checkpoint ``data/demo-moe``
(when present): token strings come from the checkpoint's own tokenizer.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from routelens.capture.engine import capture_from_path
from routelens.capture.tiny import build_tiny_moe, tiny_qwen3_moe_config
from routelens.graphs import TOKEN_CLASSES, ensure_analysis

_spec = importlib.util.spec_from_file_location("graphs_reference", Path(__file__).with_name("reference.py"))
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

DEMO = Path(__file__).resolve().parents[2] / "data" / "demo-moe"
CORPUS = Path(__file__).resolve().parents[2] / "data" / "corpus" / "heldout.txt"
CODE = "def route(tokens, experts, top_k):\n    scores = [score(t, e) for e in experts]  # 42\n    return scores\n"


def check_against_direct(trace, analysis) -> None:
    e = trace.num_experts
    for j in range(len(trace.layers)):
        ids = trace.topk_ids(j)
        assert np.array_equal(analysis.counts(j), ref.coactivation_direct(ids, e))
        if j + 1 < len(trace.layers):
            assert np.array_equal(analysis.transition(j), ref.transitions_direct(ids, trace.topk_ids(j + 1), e, e))
    classes = analysis.token_class_counts
    assert classes is not None and classes.shape == (len(trace.layers), e, len(TOKEN_CLASSES))
    assert classes[0].sum() == trace.num_tokens * trace.top_k  # every slot has a class


def test_tiny_random_model_capture_is_analysed_exactly(tmp_path):
    model = build_tiny_moe(tmp_path / "tiny", tiny_qwen3_moe_config(num_experts=8, top_k=2, num_layers=2))
    text = tmp_path / "code.txt"
    text.write_text(CODE * 20)
    trace = capture_from_path(model, tmp_path / "run", text=text, seq_len=64, max_tokens=768, progress=False)
    analysis, computed = ensure_analysis(trace.path, progress=False)
    assert computed and analysis.meta["tokenizer"] is True
    check_against_direct(trace, analysis)
    texts = {t["text"] for rows in analysis.top_tokens(0) for t in rows}
    assert texts and all(isinstance(t, str) for t in texts)


@pytest.mark.skipif(not (DEMO / "config.json").is_file() or not CORPUS.is_file(), reason="data/demo-moe not trained yet")
def test_demo_checkpoint_capture_is_analysed_exactly(tmp_path):
    trace = capture_from_path(DEMO, tmp_path / "run", text=CORPUS, seq_len=128, max_tokens=1024, save_logits=True,
                              progress=False)
    analysis, _ = ensure_analysis(trace.path, progress=False)
    check_against_direct(trace, analysis)
    for j in range(len(trace.layers)):
        row = analysis.summary(j)
        assert row["router_entropy"] == pytest.approx(ref.router_entropy_direct(trace.router_logits(j)), rel=1e-3)
        assert row["experts_used"] > 0 and 0 <= row["share_specialized"] <= 1
    share, lift = analysis.class_lift(0)
    assert np.allclose(share[analysis.load(0) > 0].sum(axis=1), 1.0)


def test_a_run_analysed_without_its_tokenizer_is_analysed_again_once_it_has_one(tmp_path):
    model = build_tiny_moe(tmp_path / "tiny", tiny_qwen3_moe_config(num_experts=8, top_k=2, num_layers=2))
    text = tmp_path / "code.txt"
    text.write_text(CODE * 10)
    trace = capture_from_path(model, tmp_path / "run", text=text, seq_len=64, max_tokens=256, progress=False)
    copy = (trace.path / "tokenizer.json").read_bytes()
    (trace.path / "tokenizer.json").unlink()  # as a run captured before the copy existed
    analysis, computed = ensure_analysis(trace.path, progress=False)
    assert computed and analysis.meta["tokenizer"] is False
    assert ensure_analysis(trace.path, progress=False)[1] is False  # nothing changed: reused
    (trace.path / "tokenizer.json").write_bytes(copy)  # what capture --resume of a finished run adds
    analysis, computed = ensure_analysis(trace.path, progress=False)
    assert computed and analysis.meta["tokenizer"] is True
