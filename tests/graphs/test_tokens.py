"""Token classes, top tokens by lift, and decoding with a local tokenizer (never a download)."""

from __future__ import annotations

import numpy as np
import pytest

from routelens.graphs.tokens import class_lift, load_token_texts, token_class, tokenizer_file, top_tokens


@pytest.mark.parametrize("text,cls", [
    (" my_var", "identifier"), ("getValue", "identifier"), ("x2", "identifier"), (" self", "identifier"),
    (" return", "identifier"), ("):", "punctuation"), (" ==", "punctuation"), ("\n        ", "whitespace"),
    (" ", "whitespace"), ("2024", "digits"), (" the", "word"), ("ing", "word"), ("Über", "word"),
    ("a.b", "other"), ("\ufffd", "other"), ("", "other"),
])
def test_token_classes(text, cls):
    assert token_class(text) == cls


def test_top_tokens_rank_by_lift_then_count_and_skip_rare_columns():
    # 2 experts, 3 frequent columns + 1 rare column
    counts = np.array([[10, 5, 0, 50], [0, 5, 20, 10]])
    out = top_tokens(counts, counts.sum(axis=0), vocab_ids=np.array([7, 8, 9]), texts={7: "a", 8: "b", 9: "c"},
                     limit=5, min_count=5)
    # expert 0 serves all of token 7 (lift = 100/65) and half of token 8
    assert [t["id"] for t in out[0]] == [7, 8]
    assert out[0][0]["lift"] == pytest.approx((10 / 65) / (10 / 100), abs=1e-4)
    assert out[0][0]["text"] == "a" and out[0][0]["share"] == pytest.approx(10 / 65, abs=1e-6)
    assert [t["id"] for t in out[1]] == [9, 8]
    # equal lifts (expert 0 serves every occurrence of both tokens): the more frequent token first
    tie = np.array([[3, 9, 0], [0, 0, 12]])
    ranked = top_tokens(tie, tie.sum(axis=0), np.array([1, 2, 3]), None, min_count=1)
    assert [t["id"] for t in ranked[0]] == [2, 1] and ranked[0][0]["lift"] == ranked[0][1]["lift"] == 2.0


def test_class_lift_of_an_expert_that_only_serves_digits():
    counts = np.array([[0, 0, 0, 10, 0, 0], [5, 5, 5, 5, 5, 5]])
    share, lift = class_lift(counts)
    assert share[0, 3] == 1.0 and lift[0, 3] == pytest.approx(1.0 / (15 / 40))


def test_token_texts_come_from_the_run_or_a_named_tokenizer_never_the_model_folder(tmp_path):
    from routelens.capture.tiny import build_byte_tokenizer

    tok = build_byte_tokenizer(vocab_size=280)
    tok.save_pretrained(tmp_path / "model")
    ids = tok("def route(x):", add_special_tokens=False)["input_ids"]
    run = tmp_path / "run"
    run.mkdir()
    # a run next to its model folder, whose manifest would name "../model": not opened
    assert load_token_texts(ids, run) is None
    named = load_token_texts(ids, run, tokenizer_path=tmp_path / "model")  # the user names it: used
    assert "".join(named[i] for i in ids) == "def route(x):"
    tok.backend_tokenizer.save(str(run / "tokenizer.json"))  # what the capture writes
    texts = load_token_texts(ids, run)
    assert texts == named and tokenizer_file(run) == run / "tokenizer.json"
    assert load_token_texts(ids, None) is None  # no run, no tokenizer: ids only, nothing downloaded
