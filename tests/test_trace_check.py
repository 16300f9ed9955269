"""``routelens check``: a sound trace passes; each kind of damage is found and named in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from routelens.cli import main
from routelens.io import file_sha256
from routelens.synthetic import synthetic_trace_arrays
from routelens.trace import write_trace
from routelens.trace_check import check_trace


@pytest.fixture
def run(tmp_path):
    """2 layers, E=8, k=2, 512 tokens in windows of 64, 4 shards of 128 tokens, with logits."""
    a = synthetic_trace_arrays(num_tokens=512, num_layers=2, num_experts=8, top_k=2, seq_len=64, with_logits=True)
    return write_trace(tmp_path / "run", a["header"], a["token_ids"], a["seq_ids"], a["positions"], a["topk_ids"],
                       a["topk_weights"], a["router_logits"], shard_tokens=128).path


def rewrite_shard(run, index: int, edit, keep_hash: bool = True) -> None:
    """Apply ``edit(tensors)`` to shard ``index``; record the new file's hash (or none), as a writer would."""
    manifest = json.loads((run / "manifest.json").read_text())
    entry = manifest["shards"][index]
    path = run / entry["file"]
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))
    if keep_hash:
        entry["sha256"], entry["size"] = file_sha256(path)
    else:
        del entry["sha256"], entry["size"]
    (run / "manifest.json").write_text(json.dumps(manifest))


def first_problem(capsys, run) -> str:
    assert main(["check", str(run)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("routelens: error: ") and not captured.out, captured
    return lines[0]


def test_a_sound_trace_passes_with_a_short_report(run, capsys, tmp_path):
    assert main(["check", str(run)]) == 0
    out = capsys.readouterr().out
    assert "4 of 4 shard hashes match" in out and "512 tokens in 8 windows" in out and out.strip().endswith("sound")
    assert main(["check", str(run), "--json", str(tmp_path / "check.json")]) == 0
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["ok"] and report["problems"] == [] and report["facts"]["hashes_verified"] == 4
    capsys.readouterr()
    assert main(["check", str(run), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["facts"]["num_windows"] == 8


def test_a_changed_byte_is_found_by_the_recorded_hash(run, capsys):
    shard = run / "shards" / "r0-000002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01  # a logit's last byte: every array still reads fine
    shard.write_bytes(bytes(data))
    line = first_problem(capsys, run)
    assert "shard shards/r0-000002.safetensors does not match its recorded sha256" in line


def test_ids_out_of_range_in_one_layer_are_named_with_layer_and_shard(run, capsys, tmp_path):
    def edit(t):
        t["topk_ids.1"][5, 0] = 8

    rewrite_shard(run, 3, edit, keep_hash=False)
    line = first_problem(capsys, run)
    assert "shard shards/r0-000003.safetensors, layer 1 (model.layers.1.mlp.gate): expert id 8 outside [-1, 8)" in line
    assert main(["check", str(run), "--json", str(tmp_path / "c.json")]) == 2
    report = json.loads((tmp_path / "c.json").read_text())
    assert not report["ok"] and report["facts"]["hashes_missing"] == 1


@pytest.mark.parametrize("damage, message", [
    (lambda t: t["topk_ids.0"].__setitem__((7, 1), t["topk_ids.0"][7, 0]), "token 7 of the shard chooses one expert twice"),
    (lambda t: t["positions"].__setitem__(10, 3), "positions do not increase inside window"),
    (lambda t: t["seq_ids"].__setitem__(slice(100, 128), 0), "holds tokens of 3 windows, the manifest says num_seqs 2"),
    (lambda t: t.__setitem__("topk_weights.1", t["topk_weights.1"].astype(np.float32)), "has dtype float32"),
    (lambda t: t.__setitem__("router_logits.0", t["router_logits.0"][:, :4].copy()), "expected [128, 8]"),
    (lambda t: t.pop("topk_ids.1"), "corrupt or unreadable 'topk_ids.1'"),
])
def test_each_kind_of_damage_is_the_first_problem_named(run, capsys, damage, message):
    rewrite_shard(run, 1, damage)
    assert message in first_problem(capsys, run)


def test_window_bookkeeping_sees_across_shard_boundaries(run):
    def edit(t):  # shard 2 starts again with window 0, which shard 0 finished
        t["seq_ids"][:] = 0

    rewrite_shard(run, 2, edit)
    report = check_trace(run)
    assert report.problems[0].endswith("holds tokens of 1 windows, the manifest says num_seqs 2")
    assert any("window 0 continues after other windows' tokens" in p for p in report.problems), report.problems


def test_an_unreadable_manifest_is_the_only_problem(run, capsys):
    (run / "manifest.json").write_text('{"format": "routelens-trace", "version": 1, "layers": [')
    assert "not valid JSON" in first_problem(capsys, run)
