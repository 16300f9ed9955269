"""Capture engine: the trace holds exactly what the experts received, shard by shard, and survives interruption.

A tiny random-init Qwen3-MoE checkpoint with a byte-level tokenizer (``routelens.capture.tiny``) is
saved to disk and loaded the way ``routelens capture`` loads any checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from routelens.capture.adapters import find_router_sites
from routelens.capture.engine import capture, rank_windows
from routelens.capture.load import load_model
from routelens.capture.text import file_source, pack_windows
from routelens.capture.tiny import build_tiny_moe
from routelens.errors import RoutelensError, TraceError
from routelens.io import read_json
from routelens.trace import Trace

SEQ_LEN = 32
BATCH = 2


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from more threads, and a busy CI machine loses a lot to oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_text(path, num_words: int = 4000, seed: int = 0):
    """Deterministic code-like text (a few thousand tokens with the tiny tokenizer)."""
    words = ["def", "route", "(", "tokens", ",", "experts", ")", ":", "return", "self", "x", "=", "+", "1",
             "\n", "    ", "top_k", "scores", "[", "]", "for", "in", "the", "quick", "brown", "fox"]
    rng = np.random.default_rng(seed)
    path.write_text(" ".join(rng.choice(words, size=num_words)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint folder, model, tokenizer, text file) shared by the tests of this module."""
    root = tmp_path_factory.mktemp("engine")
    path = build_tiny_moe(root / "tiny-moe")
    model, tokenizer = load_model(path)
    return path, model, tokenizer, write_text(root / "corpus.txt")


def windows_of(tiny, num_windows: int):
    _, _, tokenizer, text = tiny
    return pack_windows(file_source(text), tokenizer, seq_len=SEQ_LEN, max_tokens=num_windows * SEQ_LEN)


def capture_with_experts_probe(model, tokenizer, windows, out, **kwargs):
    """Capture while a forward pre-hook on every experts module records what it was given.

    Returns ``(trace, received)``: ``received[j]`` = (ids ``[T, k]``, weights ``[T, k]``) on the CPU.
    """
    routing = find_router_sites(model)
    received: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in routing.sites]

    def pre_hook(j):
        def hook(module, args, kwargs):
            values = list(args) + list(kwargs.values())  # experts(hidden, top_k_index, top_k_weights)
            received[j].append((values[1].cpu(), values[2].float().cpu()))
        return hook

    handles = [m.register_forward_pre_hook(pre_hook(j), with_kwargs=True) for j, m in enumerate(routing.experts_modules)]
    try:
        trace = capture(model, tokenizer, windows, out, routing=routing, progress=False, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    assert all(not s.module._forward_hooks for s in routing.sites)  # capture removed its hooks
    return trace, [(torch.cat([r[0] for r in calls]).numpy(), torch.cat([r[1] for r in calls]).numpy())
                   for calls in received]


def test_trace_holds_exactly_what_the_experts_received(tiny, tmp_path):
    _, model, tokenizer, _ = tiny
    windows = windows_of(tiny, 9)
    trace, received = capture_with_experts_probe(model, tokenizer, windows, tmp_path / "run", batch_size=BATCH,
                                                 shard_tokens=2 * BATCH * SEQ_LEN)
    assert trace.num_tokens == 9 * SEQ_LEN
    assert np.array_equal(trace.token_ids, windows.token_ids.reshape(-1))
    assert np.array_equal(trace.seq_ids, np.repeat(np.arange(9), SEQ_LEN))
    assert np.array_equal(trace.positions, np.tile(np.arange(SEQ_LEN), 9))
    for j, (ids, weights) in enumerate(received):
        assert np.array_equal(trace.topk_ids(j), ids)
        np.testing.assert_allclose(trace.topk_weights(j).astype(np.float32), weights, atol=1e-3)
        assert len(np.unique(ids)) > trace.top_k  # the tiny model really spreads tokens over experts
    # 5 batches (2+2+2+2+1 windows), 2 batches per shard -> 3 shards
    assert len(trace.shards) == 3
    assert [s["num_seqs"] for s in trace.shards] == [4, 4, 1]
    assert trace.manifest["complete"] and trace.manifest["stats"]["tokens_per_s"] > 0
    assert trace.family == "qwen3_moe" and len(trace.layers) == 2
    assert trace.config["num_experts"] == 8 and trace.config["top_k"] == 2


def test_a_finished_capture_holds_its_tokenizer_and_the_analysis_reads_it_from_there(tiny, tmp_path):
    from tokenizers import Tokenizer

    from routelens.graphs.tokens import load_token_texts

    _, model, tokenizer, _ = tiny
    trace = capture(model, tokenizer, windows_of(tiny, 2), tmp_path / "run", batch_size=BATCH, progress=False)
    saved = Tokenizer.from_file(str(trace.path / "tokenizer.json"))
    ids = np.unique(trace.token_ids)[:50]
    assert [saved.decode([int(i)]) for i in ids] == [tokenizer.decode([int(i)]) for i in ids]
    texts = load_token_texts(ids, trace.path)  # the run's copy: the model folder is not needed
    assert texts == {int(i): tokenizer.decode([int(i)]) for i in ids}
    # a run captured before the copy existed gets it from --resume, its manifest untouched
    (trace.path / "tokenizer.json").unlink()
    manifest = (trace.path / "manifest.json").read_bytes()
    capture(model, tokenizer, windows_of(tiny, 2), tmp_path / "run", batch_size=BATCH, progress=False, resume=True)
    assert (trace.path / "tokenizer.json").is_file() and (trace.path / "manifest.json").read_bytes() == manifest


@pytest.mark.gpu
def test_cuda_capture_through_pinned_async_copies_holds_what_the_experts_received(tiny, tmp_path):
    path = tiny[0]
    model, tokenizer = load_model(path, device="cuda")
    trace, received = capture_with_experts_probe(model, tokenizer, windows_of(tiny, 9), tmp_path / "run",
                                                 batch_size=BATCH, save_logits=True)
    assert trace.manifest["stats"]["device"].startswith("cuda")
    for j, (ids, weights) in enumerate(received):
        assert np.array_equal(trace.topk_ids(j), ids)
        np.testing.assert_allclose(trace.topk_weights(j).astype(np.float32), weights, atol=1e-3)
        assert trace.router_logits(j).shape == (9 * SEQ_LEN, 8)


@pytest.mark.multigpu
def test_device_map_over_two_gpus_records_what_each_gpu_computed(tiny, tmp_path):
    from routelens.capture.engine import capture_from_path

    path, _, tokenizer, text = tiny
    device_map = {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.layers.0": 0, "model.layers.1": 1,
                  "model.norm": 1, "lm_head": 1}
    mapped = capture_from_path(path, tmp_path / "mapped", text=text, seq_len=SEQ_LEN, max_tokens=9 * SEQ_LEN,
                               batch_size=BATCH, device_map=device_map, progress=False)
    model, _ = load_model(path, device="cuda:0")
    single = capture(model, tokenizer, windows_of(tiny, 9), tmp_path / "single", batch_size=BATCH, progress=False)
    for j in range(len(single.layers)):
        assert (mapped.topk_ids(j) == single.topk_ids(j)).mean() >= 0.999


def test_saved_logits_are_the_logits_the_choice_was_made_from(tiny, tmp_path):
    _, model, tokenizer, _ = tiny
    trace = capture(model, tokenizer, windows_of(tiny, 3), tmp_path / "run", batch_size=BATCH,
                    save_logits=True, progress=False)
    assert trace.has_logits
    for j in range(len(trace.layers)):
        logits = trace.router_logits(j).astype(np.float32)  # [T, E]
        ids = trace.topk_ids(j).astype(np.int64)
        assert logits.shape == (trace.num_tokens, trace.num_experts)
        chosen = np.take_along_axis(logits, ids, axis=1)
        rest = logits.copy()
        np.put_along_axis(rest, ids, -np.inf, axis=1)
        assert (chosen.min(axis=1) >= rest.max(axis=1) - 1e-2).all()  # Qwen3: top-k of softmax(logits)
        probs = np.exp(chosen - logits.max(axis=1, keepdims=True))
        np.testing.assert_allclose(probs / probs.sum(axis=1, keepdims=True),
                                   trace.topk_weights(j).astype(np.float32), atol=5e-3)  # norm_topk_prob


class Interrupted(Exception):
    pass


def test_resume_after_interruption_equals_an_uninterrupted_run(tiny, tmp_path):
    _, model, tokenizer, _ = tiny
    windows = windows_of(tiny, 11)
    settings = dict(batch_size=BATCH, shard_tokens=BATCH * SEQ_LEN, save_logits=True, progress=False)
    reference = capture(model, tokenizer, windows, tmp_path / "whole", **settings)

    def stop_after_two_shards(shards_written: int) -> None:
        if shards_written == 2:
            raise Interrupted

    out = tmp_path / "interrupted"
    with pytest.raises(Interrupted):
        capture(model, tokenizer, windows, out, on_shard=stop_after_two_shards, **settings)
    manifest = read_json(out / "manifest.json")
    assert not manifest["complete"] and len(manifest["shards"]) == 2 and manifest["num_sequences"] == 4
    with pytest.raises(TraceError, match="incomplete"):
        Trace.open(out)

    batches_run = []
    handle = model.register_forward_pre_hook(lambda module, args, kwargs: batches_run.append(1), with_kwargs=True)
    try:
        resumed = capture(model, tokenizer, windows, out, resume=True, **settings)
    finally:
        handle.remove()
    assert len(batches_run) == 4  # windows 4..10 only: 2+2+2+1
    assert resumed.num_tokens == reference.num_tokens == 11 * SEQ_LEN
    for field in ("token_ids", "seq_ids", "positions"):
        assert np.array_equal(getattr(resumed, field), getattr(reference, field)), field
    for j in range(len(reference.layers)):
        assert np.array_equal(resumed.topk_ids(j), reference.topk_ids(j))
        assert np.array_equal(resumed.topk_weights(j), reference.topk_weights(j))
        assert np.array_equal(resumed.router_logits(j), reference.router_logits(j))
    assert resumed.manifest["stats"]["sessions"] == 2


def test_resume_with_other_settings_is_refused_and_leaves_the_run_untouched(tiny, tmp_path):
    _, model, tokenizer, _ = tiny
    out = tmp_path / "run"
    capture(model, tokenizer, windows_of(tiny, 2), out, batch_size=BATCH, progress=False)
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(TraceError, match="save_logits was False, now True"):
        capture(model, tokenizer, windows_of(tiny, 2), out, save_logits=True, resume=True, progress=False)
    with pytest.raises(TraceError, match="already holds a run"):
        capture(model, tokenizer, windows_of(tiny, 2), out, progress=False)
    assert (out / "manifest.json").read_bytes() == before


def test_nan_routing_weights_stop_the_capture_before_anything_is_written(tiny, tmp_path):
    path, _, tokenizer, _ = tiny
    model, _ = load_model(path)
    routing = find_router_sites(model)
    with torch.no_grad():
        routing.sites[1].module.weight.fill_(float("nan"))
    out = tmp_path / "run"
    with pytest.raises(RoutelensError, match=r"model\.layers\.1\.mlp\.gate are NaN"):
        capture(model, tokenizer, windows_of(tiny, 2), out, routing=routing, progress=False)
    assert not (out / "manifest.json").exists()


def test_rank_windows_cover_every_window_once_in_order():
    blocks = [rank_windows(11, rank, 3) for rank in range(3)]
    assert np.array_equal(np.concatenate(blocks), np.arange(11))
    assert [b.size for b in blocks] == [4, 4, 3]


def test_torchrun_two_processes_merge_into_the_one_process_trace(tiny, tmp_path):
    path, model, tokenizer, text = tiny
    args = [str(path), "--text", str(text), "--seq-len", str(SEQ_LEN), "--max-tokens", str(7 * SEQ_LEN),
            "--batch-size", "1", "--shard-tokens", str(2 * SEQ_LEN), "--device", "cpu", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "routelens.cli", "capture", *args, "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    merged = Trace.open(tmp_path / "ddp")
    assert merged.manifest["world_size"] == 2
    assert sorted({s["rank"] for s in merged.shards}) == [0, 1]
    assert np.array_equal(merged.seq_ids, np.repeat(np.arange(7), SEQ_LEN))  # every window exactly once

    single = capture(model, tokenizer, windows_of(tiny, 7), tmp_path / "one", batch_size=1, progress=False)
    assert np.array_equal(merged.token_ids, single.token_ids)
    for j in range(len(single.layers)):
        assert np.array_equal(merged.topk_ids(j), single.topk_ids(j))
        np.testing.assert_allclose(merged.topk_weights(j), single.topk_weights(j), atol=1e-3)


def test_device_map_auto_capture_equals_the_plain_capture(tiny, tmp_path):
    """``--device-map auto`` goes through accelerate (here onto the CPU) and records the same routing."""
    from routelens.capture.engine import capture_from_path

    path, model, tokenizer, text = tiny
    mapped = capture_from_path(path, tmp_path / "mapped", text=text, seq_len=SEQ_LEN, max_tokens=3 * SEQ_LEN,
                               batch_size=BATCH, device_map="auto", progress=False)
    plain = capture(model, tokenizer, windows_of(tiny, 3), tmp_path / "plain", batch_size=BATCH, progress=False)
    assert mapped.manifest["settings"]["tokens_sha256"] == plain.manifest["settings"]["tokens_sha256"]
    for j in range(len(plain.layers)):
        assert np.array_equal(mapped.topk_ids(j), plain.topk_ids(j))


def test_encoder_decoder_moe_records_encoder_and_decoder_routers(tmp_path):
    """Switch Transformers loads as a seq2seq LM; each window feeds the encoder and the (teacher-forced) decoder."""
    from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration

    from routelens.capture.engine import capture_from_path
    from routelens.capture.tiny import build_byte_tokenizer

    config = SwitchTransformersConfig(
        vocab_size=320, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        num_experts=4, expert_capacity=SEQ_LEN, encoder_sparse_step=1, decoder_sparse_step=1,
        decoder_start_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    SwitchTransformersForConditionalGeneration(config).save_pretrained(tmp_path / "switch")
    build_byte_tokenizer().save_pretrained(tmp_path / "switch")
    text = write_text(tmp_path / "corpus.txt", num_words=600)
    trace = capture_from_path(tmp_path / "switch", tmp_path / "run", text=text, seq_len=SEQ_LEN,
                              max_tokens=4 * SEQ_LEN, batch_size=BATCH, progress=False)
    assert trace.top_k == 1 and trace.num_experts == 4 and trace.num_tokens == 4 * SEQ_LEN
    assert [name.split(".")[0] for name in trace.layers] == ["encoder", "encoder", "decoder", "decoder"]
    assert trace.manifest["model"]["architecture"] == "SwitchTransformersForConditionalGeneration"
    for j in range(len(trace.layers)):
        ids = trace.topk_ids(j)
        assert ids.min() >= 0 and ids.max() < 4  # capacity of one window: no token dropped


def test_a_full_disk_mid_capture_is_one_line_and_resume_finishes_it_exactly(tiny, tmp_path):
    """A real write failure (a file-size limit: EFBIG, as ENOSPC would be), no mocks: one line, exit 2, a
    consistent run, and ``--resume`` ends with exactly the trace of an uninterrupted capture."""
    import resource
    import signal

    from routelens.capture.engine import capture_from_path
    from routelens.cli import main

    path, _, _, text = tiny
    common = dict(text=text, seq_len=SEQ_LEN, max_tokens=8 * SEQ_LEN, batch_size=1, save_logits=True, device="cpu",
                  progress=False)
    reference = capture_from_path(path, tmp_path / "whole", shard_tokens=2 * SEQ_LEN, **common)

    def stop_after_two_shards(shards_written: int) -> None:
        if shards_written == 2:
            raise Interrupted

    out = tmp_path / "run"
    with pytest.raises(Interrupted):  # session 0: two small shards (2 windows each) on disk
        capture_from_path(path, out, shard_tokens=2 * SEQ_LEN, on_shard=stop_after_two_shards, **common)
    before = read_json(out / "manifest.json")
    small = before["shards"][0]["size"]
    limit = 3 * small // 2  # session 1 writes the 4 windows left as one shard (about 2x small): too large
    assert (out / "manifest.json").stat().st_size < limit

    def limit_file_size() -> None:  # in the child: writes past `limit` bytes fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    argv = ["capture", str(path), "--out", str(out), "--text", str(text), "--seq-len", str(SEQ_LEN),
            "--max-tokens", str(8 * SEQ_LEN), "--batch-size", "1", "--save-logits", "--device", "cpu",
            "--no-progress", "--resume"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONDONTWRITEBYTECODE="1")
    full = subprocess.run([sys.executable, "-m", "routelens.cli", *argv, "--shard-tokens", str(8 * SEQ_LEN)],
                          capture_output=True, text=True, env=env, timeout=300, preexec_fn=limit_file_size)
    assert full.returncode == 2, full.stderr[-2000:]
    lines = full.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("routelens: error: could not write "), lines
    assert "File too large" in lines[0] and "--resume" in lines[0]
    after = read_json(out / "manifest.json")
    assert after["shards"] == before["shards"] and not after["complete"]  # the run is as it was
    assert sorted(p.name for p in (out / "shards").iterdir()) == [s["file"].split("/")[1] for s in before["shards"]]

    assert main(argv) == 0  # --resume finishes it (shard size is no setting: the default is fine)
    resumed = Trace.open(out)
    for field in ("token_ids", "seq_ids", "positions"):
        assert np.array_equal(getattr(resumed, field), getattr(reference, field)), field
    for j in range(len(reference.layers)):
        assert np.array_equal(resumed.topk_ids(j), reference.topk_ids(j))
        assert np.array_equal(resumed.topk_weights(j), reference.topk_weights(j))
        assert np.array_equal(resumed.router_logits(j), reference.router_logits(j))
    stats = resumed.manifest["stats"]
    assert stats["session_tokens"] == 4 * SEQ_LEN  # tokens/s counts this session's tokens only
    # session_s is recorded to the millisecond: a session of a few ms bounds tokens/s only that well
    tokens, seconds = stats["session_tokens"], stats["session_s"]
    assert tokens / (seconds + 0.0006) <= stats["tokens_per_s"] <= tokens / max(seconds - 0.0006, 1e-9)
