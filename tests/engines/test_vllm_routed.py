"""vLLM routed-experts collections → routing: every layout vLLM returns gives back the same experts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_records import b64_npy, vllm_request, vllm_rows, write_jsonl, write_npz, write_pt
from hypothesis import given, settings
from hypothesis import strategies as st

from routelens.engines.vllm_routed import read_vllm_collections
from routelens.errors import InputError

WRITERS = {"jsonl-base64": lambda p, r: write_jsonl(p.with_suffix(".jsonl"), r),
           "jsonl-lists": lambda p, r: write_jsonl(p.with_suffix(".jsonl"), r, encode="lists"),
           "npz": lambda p, r: write_npz(p.with_suffix(".npz"), r),
           "pt": lambda p, r: write_pt(p.with_suffix(".pt"), r)}


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), layout_kind=st.sampled_from(sorted(WRITERS)),
       lengths=st.lists(st.tuples(st.integers(1, 6), st.integers(0, 4), st.integers(0, 3)), min_size=1, max_size=4))
def test_collections_give_back_every_tokens_experts_and_phase(tmp_path_factory, layout, seed, layout_kind, lengths):
    rng = np.random.default_rng(seed)
    requests, expected = [], []
    for prompt, output, start in lengths:
        request, window = vllm_request(rng, layout, prompt, output, start=min(start, prompt - 1))
        requests.append(request)
        expected.append(window)
    path = WRITERS[layout_kind](tmp_path_factory.mktemp("vl") / "routed", requests)
    routing = read_vllm_collections([path], layout).routing
    tokens, seq, positions, phase, ids = routing.arrays()
    kept = [w for w in expected if len(w[0])]
    assert tokens.tolist() == np.concatenate([w[0] for w in kept]).tolist()
    assert positions.tolist() == np.concatenate([w[1] for w in kept]).tolist()
    assert phase.tolist() == np.concatenate([w[2] for w in kept]).tolist()
    assert np.array_equal(ids, np.concatenate([w[3] for w in kept]))
    assert np.unique(seq).size == len(kept)


def test_a_whole_completions_response_and_the_older_split_layout_are_read(tmp_path, layout):
    rng = np.random.default_rng(0)
    request, (tokens, positions, phase, ids) = vllm_request(rng, layout, 4, 3)
    rows = np.asarray(request["routed_experts"])
    response = {"id": "cmpl-1", "choices": [{"index": 0, "prompt_token_ids": request["prompt_token_ids"],
                                             "token_ids": request["token_ids"], "routed_experts": b64_npy(rows)}]}
    (tmp_path / "resp.jsonl").write_text(json.dumps(response) + "\n")
    assert np.array_equal(read_vllm_collections([tmp_path / "resp.jsonl"], layout).routing.arrays()[4], ids)
    split = {"prompt_token_ids": request["prompt_token_ids"], "token_ids": request["token_ids"],
             "prompt_routed_experts": rows[:4].tolist(), "routed_experts": rows[4:].tolist()}
    (tmp_path / "split.jsonl").write_text(json.dumps(split) + "\n")
    back = read_vllm_collections([tmp_path / "split.jsonl"], layout).routing.arrays()
    assert np.array_equal(back[4], ids) and back[3].tolist() == [0, 0, 0, 0, 1, 1]


def test_requests_that_do_not_match_their_tokens_or_model_are_refused(tmp_path, layout, qwen_layout):
    rng = np.random.default_rng(1)
    request, _ = vllm_request(rng, layout, 5, 3)
    short = dict(request, routed_experts=np.asarray(request["routed_experts"])[:-2])
    with pytest.raises(InputError, match="5 prompt \\+ 3 output"):
        read_vllm_collections([write_jsonl(tmp_path / "short.jsonl", [short])], layout)
    with pytest.raises(InputError, match="no MoE router"):  # qwen3: decoder layer 1 is dense there
        read_vllm_collections([write_jsonl(tmp_path / "ok.jsonl", [request])], qwen_layout)
    rows = np.asarray(request["routed_experts"]).astype(np.int64)
    rows[0, 1, 0] = 9
    with pytest.raises(InputError, match="outside \\[0, 8\\)"):
        read_vllm_collections([write_jsonl(tmp_path / "e.jsonl", [dict(request, routed_experts=rows)])], layout)
    wide = vllm_rows(layout, np.zeros((7, 2, 2), np.int64))[:, :, :1]
    with pytest.raises(InputError, match="chooses 2"):
        read_vllm_collections([write_jsonl(tmp_path / "k.jsonl", [dict(request, routed_experts=wide)])], layout)
    no_ids = {k: v for k, v in request.items() if k != "prompt_token_ids"}
    with pytest.raises(InputError, match="return_token_ids"):
        read_vllm_collections([write_jsonl(tmp_path / "n.jsonl", [no_ids])], layout)


def test_truncated_hostile_and_foreign_files_get_one_line_errors(tmp_path, layout):
    rng = np.random.default_rng(2)
    request, _ = vllm_request(rng, layout, 3, 2)
    text = write_jsonl(tmp_path / "a.jsonl", [request, request]).read_text()
    (tmp_path / "cut.jsonl").write_text(text[: len(text) - 40])
    with pytest.raises(InputError, match="line 2 is not JSON"):
        read_vllm_collections([tmp_path / "cut.jsonl"], layout)
    (tmp_path / "b64.jsonl").write_text(json.dumps(dict(request, routed_experts="!!notbase64")) + "\n")
    with pytest.raises(InputError, match="base64"):
        read_vllm_collections([tmp_path / "b64.jsonl"], layout)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save([Evil()], tmp_path / "evil.pt")
    with pytest.raises(InputError, match="weights_only refused"):
        read_vllm_collections([tmp_path / "evil.pt"], layout)
    raw = write_npz(tmp_path / "r.npz", [request]).read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="npz"):
        read_vllm_collections([tmp_path / "cut.npz"], layout)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(InputError, match=".jsonl, .npz or .pt"):
        read_vllm_collections([tmp_path / "x.csv"], layout)


def test_the_docs_client_saves_what_routelens_imports(tmp_path, layout):
    """docs/vllm_routed_experts_client.py against a loopback stand-in answering as vLLM 0.34's server does."""
    import subprocess
    import sys
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    rng = np.random.default_rng(3)
    made = [vllm_request(rng, layout, 5, 3) for _ in range(2)]
    bodies = []

    class Server(BaseHTTPRequestHandler):
        def _send(self, obj):
            data = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 (http.server's name)
            self._send({"data": [{"id": "tiny"}]})

        def do_POST(self):  # noqa: N802
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            request = made[len(bodies) - 1][0]
            self._send({"choices": [{"index": 0, "text": "", "prompt_token_ids": request["prompt_token_ids"],
                                     "token_ids": request["token_ids"],
                                     "routed_experts": b64_npy(np.asarray(request["routed_experts"]))}]})

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        (tmp_path / "prompts.txt").write_text("first prompt\nsecond prompt\n")
        client = Path(__file__).resolve().parents[2] / "docs" / "vllm_routed_experts_client.py"
        subprocess.run([sys.executable, str(client), str(tmp_path / "prompts.txt"), str(tmp_path / "out.jsonl"),
                        f"http://127.0.0.1:{server.server_address[1]}"], check=True, timeout=60)
    finally:
        server.shutdown()
    assert [b["return_token_ids"] for b in bodies] == [True, True] and bodies[0]["model"] == "tiny"
    ids = read_vllm_collections([tmp_path / "out.jsonl"], layout).routing.arrays()[4]
    assert np.array_equal(ids, np.concatenate([w[3] for _, w in made]))


@settings(max_examples=40, deadline=None)
@given(text=st.text(max_size=200), blob=st.binary(max_size=200))
def test_any_text_or_bytes_is_read_or_refused_in_one_line(tmp_path_factory, layout, text, blob):
    folder = tmp_path_factory.mktemp("junk")
    (folder / "x.jsonl").write_text(text, encoding="utf-8")
    (folder / "x.npz").write_bytes(blob)
    (folder / "x.pt").write_bytes(blob)
    for name in ("x.jsonl", "x.npz", "x.pt"):
        try:
            read_vllm_collections([folder / name], layout)
        except InputError as error:
            assert "\n" not in str(error)
