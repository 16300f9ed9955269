"""Text sources: files, JSONL and datasets tokenized and packed into whole windows of real tokens."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from routelens.capture.text import dataset_source, file_source, pack_windows, resolve_source
from routelens.capture.tiny import build_byte_tokenizer
from routelens.errors import InputError

TEXT = "def route(tokens, experts):\n    return sorted(experts)[:2]\n\n" * 40


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


def test_plain_text_is_packed_into_consecutive_windows_dropping_the_partial_last(tokenizer, tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    ids = np.asarray(tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    windows = pack_windows(file_source(path), tokenizer, seq_len=16)
    assert windows.token_ids.shape == (ids.size // 16, 16)
    assert np.array_equal(windows.token_ids.reshape(-1), ids[: windows.num_tokens])
    assert windows.source.describe() == "file:corpus.txt" and len(windows.source.sha256) == 64


def test_max_tokens_keeps_whole_windows_only(tokenizer, tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    windows = pack_windows(file_source(path), tokenizer, seq_len=16, max_tokens=50)
    assert windows.token_ids.shape == (3, 16) and windows.max_tokens == 50
    with pytest.raises(InputError, match="less than one window"):
        pack_windows(file_source(path), tokenizer, seq_len=16, max_tokens=10)


def test_jsonl_documents_are_joined_with_eos(tokenizer, tmp_path):
    path = tmp_path / "docs.jsonl"
    docs = ["first document " * 5, "second one " * 5, "third " * 5]
    path.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs)) + "\n", encoding="utf-8")
    expected: list[int] = []
    for i, doc in enumerate(docs):
        if i:
            expected.append(tokenizer.eos_token_id)
        expected += tokenizer(doc, add_special_tokens=False)["input_ids"]
    windows = pack_windows(file_source(path), tokenizer, seq_len=8)
    assert np.array_equal(windows.token_ids.reshape(-1), np.asarray(expected)[: windows.num_tokens])


@pytest.mark.parametrize(
    "content, message",
    [('{"text": "ok"}\n{"body": "no text"}\n', 'line 2 has no string "text" field'),
     ('{"text": "ok"}\nnot json\n', "line 2 is not valid JSON")],
)
def test_bad_jsonl_names_the_line(tokenizer, tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        pack_windows(file_source(path), tokenizer, seq_len=4)


def test_missing_empty_short_and_non_utf8_text_are_one_line_errors(tokenizer, tmp_path):
    with pytest.raises(InputError, match="text file not found"):
        file_source(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(InputError, match="is empty"):
        file_source(tmp_path / "empty.txt")
    (tmp_path / "short.txt").write_text("def f(): pass")
    with pytest.raises(InputError, match="fewer than one window"):
        pack_windows(file_source(tmp_path / "short.txt"), tokenizer, seq_len=256)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 100)
    with pytest.raises(InputError, match="not UTF-8"):
        pack_windows(file_source(tmp_path / "latin1.txt"), tokenizer, seq_len=8)


def test_text_and_dataset_together_or_bad_dataset_spec_are_refused():
    with pytest.raises(InputError, match="either --text or --dataset"):
        resolve_source(text="a.txt", dataset="wikitext")
    with pytest.raises(InputError, match="NAME\\[:CONFIG\\[:SPLIT\\]\\]"):
        dataset_source("a:b:c:d")


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets is installed here")
def test_dataset_without_the_datasets_package_says_how_to_install_it():
    with pytest.raises(InputError, match=r"pip install 'routelens\[data\]'"):
        dataset_source("wikitext:wikitext-2-raw-v1:test")


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="needs the optional 'datasets' package")
def test_dataset_from_a_local_folder_joins_rows_with_eos(tokenizer, tmp_path):
    folder = tmp_path / "mydata"
    folder.mkdir()
    rows = [f"row {i} routes tokens to experts. " * 3 for i in range(20)]
    (folder / "train.jsonl").write_text("".join(json.dumps({"id": i, "text": r}) + "\n" for i, r in enumerate(rows)))
    source = dataset_source(str(folder))
    windows = pack_windows(source, tokenizer, seq_len=16, max_tokens=160)
    expected = tokenizer(rows[0], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert windows.token_ids.shape == (10, 16)
    assert windows.token_ids.reshape(-1)[: len(expected)].tolist() == expected
    assert source.describe() == f"dataset:{folder}" and len(source.sha256) == 64
    with pytest.raises(InputError, match="cannot read dataset"):
        dataset_source(str(folder) + "::nosuchsplit")


@pytest.mark.parametrize("batch_chars, batch_documents", [(50, 4096), (1 << 22, 2)])
def test_batched_tokenization_gives_the_ids_of_one_call_per_document(tokenizer, tmp_path, monkeypatch,
                                                                    batch_chars, batch_documents):
    import routelens.capture.text as text_module

    path = tmp_path / "docs.jsonl"
    docs = [f"document {i}: " + "route tokens to experts " * (i % 5 + 1) for i in range(23)]
    path.write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n", encoding="utf-8")
    expected: list[int] = []
    for i, doc in enumerate(docs):
        expected += ([tokenizer.eos_token_id] if i else []) + tokenizer(doc, add_special_tokens=False)["input_ids"]
    whole = pack_windows(file_source(path), tokenizer, seq_len=8)
    monkeypatch.setattr(text_module, "BATCH_CHARS", batch_chars)
    monkeypatch.setattr(text_module, "BATCH_DOCUMENTS", batch_documents)
    batched = pack_windows(file_source(path), tokenizer, seq_len=8)
    assert np.array_equal(batched.token_ids.reshape(-1), np.asarray(expected)[: batched.num_tokens])
    assert batched.tokens_sha256 == whole.tokens_sha256
    short = pack_windows(file_source(path), tokenizer, seq_len=8, max_tokens=40)
    assert np.array_equal(short.token_ids.reshape(-1), np.asarray(expected)[:40])


def test_packing_stops_when_asked(tokenizer, tmp_path):
    import threading

    from routelens.capture.text import PackingStopped

    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    stop = threading.Event()
    stop.set()
    with pytest.raises(PackingStopped):
        pack_windows(file_source(path), tokenizer, seq_len=16, stop=stop)
