"""``routelens capture`` and ``routelens info`` end to end on a tiny checkpoint (and the bundled demo)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from routelens.capture.summary import expert_load
from routelens.capture.tiny import build_tiny_moe
from routelens.cli import main
from routelens.trace import Trace

REPO_DATA = __import__("routelens.capture.load", fromlist=["bundled_data_dir"]).bundled_data_dir()


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models gain nothing from more threads, and a busy CI machine loses a lot to oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    text = root / "corpus.jsonl"
    rng = np.random.default_rng(1)
    words = ["expert", "token", "route", "layer", "gate", "def", "(", ")", ":", "\n"]
    text.write_text("\n".join(json.dumps({"text": " ".join(rng.choice(words, 300))}) for _ in range(12)) + "\n")
    return build_tiny_moe(root / "tiny-moe"), text


def test_capture_then_info_reports_the_trace(checkpoint, tmp_path, capsys):
    model, text = checkpoint
    out = tmp_path / "run"
    rc = main(["capture", str(model), "--text", str(text), "--out", str(out), "--seq-len", "64",
               "--max-tokens", "1000", "--batch-size", "3", "--save-logits", "--no-progress"])
    assert rc == 0
    trace = Trace.open(out)
    assert trace.num_tokens == 15 * 64 and trace.has_logits and trace.top_k == 2 and trace.num_experts == 8
    assert f"captured {trace.num_tokens:,} tokens" in capsys.readouterr().out
    stats = trace.manifest["stats"]
    assert stats["load_s"] > 0 and stats["text_wait_s"] >= 0  # the text was packed while the weights loaded

    assert main(["info", str(out)]) == 0
    text_out = capsys.readouterr().out
    assert "2 MoE layers, 8 experts, top-2" in text_out
    assert "960 in 15 sequences of 64; router logits: yes" in text_out
    assert "tokens/s" in text_out and "model.layers.1.mlp.gate" in text_out

    assert main(["info", str(out), "--json", "-"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_tokens"] == 960 and summary["family"] == "qwen3_moe" and summary["num_sequences"] == 15
    load = expert_load(trace, 0)
    assert load.sum() == 960 * 2
    assert summary["per_layer"][0]["load_max_over_mean"] == pytest.approx(load.max() / load.mean(), abs=1e-4)
    assert summary["per_layer"][0]["busiest_expert"] == int(load.argmax())


def test_resume_flag_on_a_finished_run_adds_nothing(checkpoint, tmp_path, capsys):
    model, text = checkpoint
    args = ["capture", str(model), "--text", str(text), "--out", str(tmp_path / "run"), "--seq-len", "64",
            "--max-tokens", "512", "--no-progress", "--resume"]  # --resume on a new folder starts it
    assert main(args) == 0
    first = Trace.open(tmp_path / "run")
    manifest = (tmp_path / "run" / "manifest.json").read_bytes()
    assert main(args) == 0
    again = Trace.open(tmp_path / "run")
    assert (tmp_path / "run" / "manifest.json").read_bytes() == manifest  # untouched: caches keyed on it stay valid
    assert again.num_tokens == first.num_tokens == 512
    assert np.array_equal(again.topk_ids(0), first.topk_ids(0))


def test_capture_without_a_model_uses_the_bundled_demo(tmp_path, capsys):
    demo = REPO_DATA / "demo-moe"
    args = ["capture", "--out", str(tmp_path / "demo"), "--max-tokens", "512", "--seq-len", "128", "--no-progress"]
    if not (demo / "config.json").is_file():
        assert main(args) == 2
        assert "bundled demo checkpoint is missing" in capsys.readouterr().err
        return
    assert main(args) == 0
    trace = Trace.open(tmp_path / "demo")
    assert trace.family == "qwen3_moe" and trace.num_tokens == 512
    assert trace.manifest["settings"]["text"] == "bundled:train.txt"
    assert trace.num_experts == trace.config["num_experts"] and trace.top_k == trace.config["top_k"]


@pytest.mark.parametrize("extra, message", [
    (["--max-memory", "0=plenty"], "is not a number with a unit"),
    (["--max-memory", "cpu=1GiB"], "--max-memory limits a --device-map"),
])
def test_bad_max_memory_is_a_one_line_error_and_writes_nothing(checkpoint, tmp_path, capsys, extra, message):
    model, text = checkpoint
    out = tmp_path / "run"
    assert main(["capture", str(model), "--text", str(text), "--out", str(out), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (out / "manifest.json").exists()
